"""The overload retry every call to MLflow goes through (tracking.retrying), with a fake server
call, and a step's whole life against a store that refuses every write once."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.runlog import ERROR_CLASS, RunLog


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


def test_the_client_retries_every_call(monkeypatch):
    """``client()``: what every module reads and writes with; each call goes through ``retrying``
    (plant: hand out the raw client -> the overload error reaches the caller)."""
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    fn, calls = _flaky(["database is locked"])

    class Fake:
        set_tag = staticmethod(fn)
        tracking_uri = "http://x"

    monkeypatch.setattr(tracking, "raw_client", lambda uri=None: Fake())
    c = tracking.client()
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
            runlog = RunLog(f"step{i}")
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


# --------------------------------------------------------------------------- a step's whole life under overload

_WRITES = ("create_run", "update_run_info", "set_tag", "log_param", "log_batch", "create_experiment")
_READS = ("get_run", "_search_runs", "get_experiment", "get_experiment_by_name")


@pytest.fixture()
def overloaded(tmp_path, monkeypatch, template_store):
    """A local SQLite store that refuses calls with the pool's overload error, as an overloaded
    server does (its methods, which the client and the fluent API end in): every write once
    before it succeeds (a retried write takes exactly two attempts, so one made without the
    retry always fails), and the first read of each thing (run, experiment). Not every read:
    MLflow's fluent ``start_run`` reads the run twice around its write, and refusing reads and
    writes in turn would refuse one of its three calls on every attempt."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from .conftest import end_active_runs, sqlite_store

    monkeypatch.setenv("THESIS_MLFLOW_LEASE_BEAT_S", "3600")  # no periodic beats (unretried on purpose) mid-test
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    store = mlflow.MlflowClient(sqlite_store(tmp_path, monkeypatch, template_store, "overload"))
    refused = dict.fromkeys(_WRITES + _READS, 0)
    calls = dict.fromkeys(_WRITES, 0)
    read = set()

    def flaky(name, real):
        def call(self, *a, **kw):
            if name in calls:
                calls[name] += 1
                refuse = calls[name] % 2 == 1
            else:
                refuse = (name, repr(a[:1])) not in read
                read.add((name, repr(a[:1])))
            if refuse:
                refused[name] += 1
                raise MlflowException("(psycopg2.errors) QueuePool limit of size 5 overflow 10 reached")
            return real(self, *a, **kw)
        return call

    for name in _WRITES + _READS:
        monkeypatch.setattr(SqlAlchemyStore, name, flaky(name, getattr(SqlAlchemyStore, name)))
    yield store, refused
    end_active_runs()


def test_a_steps_runs_and_leases_ride_out_an_overloaded_server(overloaded):
    """Claiming an upstream step, its run, a train run's lease, a failing step and a new
    experiment, every read and write refused once: all done as without overload, no run twice
    (plant: any of those calls made without ``retrying`` -- the run's end through
    ``mlflow.end_run``, a lease's claim run or first beat on the raw client, a fence's read --
    and the step fails on the refusal)."""
    from thesis_mlflow.tracking import leases

    store, refused = overloaded
    me = leases.Holder("node", 1)
    run, lease = leases.find_or_claim("binning", {"x": "1"}, "binning-x", poll_s=0.01, holder=me)
    assert run is None and lease is not None
    with leases.claimed(lease), tracking.step_run("binning", run_id=lease.run_id, lease=lease, use_env=False):
        tracking.log_params({"x": "1"})
        tracking.log_metrics({"m": 1.0})
    found, again = leases.find_or_claim("binning", {"x": "1"}, "binning-x", poll_s=0.01, holder=me)
    assert again is None and found.info.run_id == lease.run_id and found.info.status == "FINISHED"

    exp_id = tracking.current_experiment_id()
    grid = tracking.client()  # as a grid makes its cells: created, then waiting
    rid = grid.create_run(exp_id, tags={"step": "train"}).info.run_id
    grid.update_run(rid, status="SCHEDULED")
    train = leases.acquire_run(rid, holder=me)
    with train.kept(), tracking.step_run("train", run_id=rid, lease=train, use_env=False):
        tracking.log_metrics({"test_auc": 0.8}, step=1)
    with pytest.raises(ValueError, match="bad input"), tracking.step_run("compare", use_env=False):
        raise ValueError("bad input")

    assert tracking.ensure_experiment("overload-2") != exp_id
    runs = {r.info.run_id: r for r in store.search_runs([exp_id])}
    assert runs[rid].info.status == "FINISHED" and runs[rid].data.metrics["test_auc"] == 0.8
    assert runs[rid].data.tags[leases.ENDED] == "1" and runs[lease.run_id].data.tags[leases.ENDED] == "1"
    failed = [r for r in runs.values() if r.data.tags.get("step") == "compare"]
    assert [(r.info.status, r.data.tags[ERROR_CLASS]) for r in failed] == [("FAILED", "ValueError")]
    assert len(runs) == 3 and all(refused.values()), (len(runs), refused)  # nothing created twice; every kind of call was refused


def test_a_runs_log_goes_up_after_an_epoch_at_most_every_log_every_s(monkeypatch):
    """``upload_current_log`` (each epoch of a train run): nothing within ``LOG_EVERY_S`` of the
    log's opening (a demo cell's epochs), an upload once that has passed, then nothing again
    within it; ``upload_log`` (the run's end) always uploads (plants: no spacing -> an upload per
    call; spacing on the final upload -> the end's log lost)."""
    sent = []
    monkeypatch.setattr(tracking, "log_artifact", lambda path, folder: sent.append((Path(path).name, folder)))
    with RunLog("train") as rl:
        monkeypatch.setattr(tracking, "stack", lambda: [rl])
        tracking.upload_current_log()
        assert sent == []
        rl.uploaded -= tracking.LOG_EVERY_S + 1  # as if it opened longer ago than that (a thesis epoch)
        tracking.upload_current_log()
        tracking.upload_current_log()
        assert sent == [("train.log", "logs")]
        tracking.upload_log(rl)  # the end of the run: whatever the spacing
        assert len(sent) == 2
