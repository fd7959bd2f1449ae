"""The overload retry every write goes through (tracking.retrying), with a fake server call."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from thesis_mlflow.tracking import runs as tracking


def _flaky(errors: list[str]):
    calls = []

    def fn(*a, **kw):
        calls.append((a, kw))
        if len(calls) <= len(errors):
            raise MlflowException(errors[len(calls) - 1])
        return "stored"

    return fn, calls


def test_an_overloaded_server_is_retried_with_backoff(monkeypatch):
    waits = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    fn, calls = _flaky(["(psycopg.OperationalError) sorry, too many clients already", "QueuePool limit of size 5 overflow 10 reached"])
    assert tracking.retrying(fn, "run", metrics=[1]) == "stored"
    assert len(calls) == 3 and calls[-1] == (("run",), {"metrics": [1]})
    assert waits == [1.0, 2.0]


def test_other_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: pytest.fail("slept on a permanent error"))
    fn, calls = _flaky(["RESOURCE_DOES_NOT_EXIST: run abc not found"])
    with pytest.raises(MlflowException, match="not found"):
        tracking.retrying(fn)
    assert len(calls) == 1


def test_the_retries_end(monkeypatch):
    waits = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    fn, calls = _flaky(["database is locked"] * 20)
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.retrying(fn)
    assert len(calls) == tracking.WRITE_RETRIES and waits == [1, 2, 4, 8, 16, 30, 30]  # capped at 30 s, ~2 min in all


def test_the_grid_modules_client_retries_every_call(monkeypatch):
    """``retried_client()``: what grid/runs writes with; each call goes through ``retrying``
    (plant: hand out the raw client -> the overload error reaches the grid driver)."""
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    fn, calls = _flaky(["database is locked"])

    class Fake:
        set_tag = staticmethod(fn)
        tracking_uri = "http://x"

    monkeypatch.setattr(tracking, "client", lambda: Fake())
    c = tracking.retried_client()
    assert c.set_tag("run", "k", "v") == "stored" and len(calls) == 2
    assert c.tracking_uri == "http://x"
