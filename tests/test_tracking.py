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


def test_run_logs_open_in_threads_leave_the_callers_log_level_as_it_was():
    """Run logs of two threads (cells side by side, upstream runs two at a time) opened A, B and
    closed A, B: the root logger is at INFO while either is open, each file holds its own
    thread's records only, and the caller's level is back once both are closed."""
    import logging
    import threading

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        opened, proceed, closed, texts = [threading.Event(), threading.Event()], threading.Event(), [threading.Event(), threading.Event()], {}

        def step(i: int) -> None:
            runlog = tracking.RunLog(f"step{i}")
            opened[i].set()
            if i == 0:
                opened[1].wait(10)
            logging.getLogger("thesis_mlflow.test").info("from thread %d", i)
            if i == 1:
                proceed.wait(10)  # B closes after A
            texts[i] = runlog.path.read_text()
            runlog.close()
            closed[i].set()

        threads = [threading.Thread(target=step, args=(i,)) for i in (0, 1)]
        threads[0].start()
        opened[0].wait(10)
        threads[1].start()
        closed[0].wait(10)
        assert root.level == logging.INFO  # B still open
        proceed.set()
        for t in threads:
            t.join(10)
        assert root.level == logging.WARNING
        assert "from thread 0" in texts[0] and "from thread 1" not in texts[0] and "from thread 1" in texts[1]
    finally:
        root.setLevel(before)
