"""Leases the tracking server decides: one holder per run or upstream claim, whatever the
clocks and speeds of the jobs; silent holders taken over on the waiter's own clock; a holder
that lost its lease stops without marking anything finished. One real server for the module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from thesis_mlflow.errors import LeaseHeld, LeaseLost
from thesis_mlflow.tracking import leases
from thesis_mlflow.tracking import runs as tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def srv(shared_server):
    return shared_server


@pytest.fixture()
def exp(server_exp):
    return server_exp


def _other_node(pid=4242):
    return leases.Holder("worker-node-17", pid)


# --------------------------------------------------------------------------- one run


def test_one_holder_per_run_and_a_live_one_is_named(exp, monkeypatch):
    c = tracking.client()
    rid = c.create_run(exp).info.run_id
    first = leases.acquire_run(rid, "train run X")
    try:
        # a second process on this host: the first's pid is alive -> refused at once, naming it
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
            leases.acquire_run(rid, "train run X", holder=leases.Holder(socket.gethostname(), os.getpid() + 1))
        assert time.monotonic() - t0 < 5
    finally:
        first.release()
    # released: the next process takes the next generation without waiting
    second = leases.acquire_run(rid, holder=_other_node())
    assert second.gen == 2 and leases.generations(c.get_run(rid).data.params) == {1: str(first.holder), 2: str(second.holder)}
    second.stop()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(exp):
    c = tracking.client()
    rid = c.create_run(exp).info.run_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert leases.write_once(rid, "lease.g1", str(leases.Holder(socket.gethostname(), dead.pid)))
    t0 = time.monotonic()
    lease = leases.acquire_run(rid)
    assert lease.gen == 2 and time.monotonic() - t0 < 5
    assert c.get_run(rid).data.tags[leases.LOST] == "1"
    lease.stop()


def test_a_silent_holder_elsewhere_is_taken_over_on_the_waiters_clock(exp, monkeypatch):
    """A holder on another node whose beat stops; the waiter's own monotonic clock decides, the
    holder's stamps are never compared with it. The old holder then finds out and stops."""
    monkeypatch.setenv("THESIS_MLFLOW_LEASE_STALE_S", "3")
    monkeypatch.setenv("THESIS_MLFLOW_LEASE_BEAT_S", "0.5")
    c = tracking.client()
    rid = c.create_run(exp).info.run_id
    old = leases.acquire_run(rid, holder=_other_node())
    # while it beats, a newcomer is told it is held (within a beat period)
    with pytest.raises(LeaseHeld, match="worker-node-17"):
        leases.acquire_run(rid, poll_s=0.2)
    old.stop()  # silence: the node hangs (its beat thread no longer runs)
    t0 = time.monotonic()
    new = leases.acquire_run(rid, poll_s=0.2)
    assert new.gen == 2 and 3 <= time.monotonic() - t0 < 15
    with pytest.raises(LeaseLost):
        old.verify()
    new.stop()


def test_a_holder_that_lost_its_lease_does_not_finish_the_run(exp):
    c = tracking.client()
    rid = c.create_run(exp).info.run_id
    lease = leases.acquire_run(rid, holder=_other_node(1))
    assert leases.write_once(rid, "lease.g2", str(_other_node(2)))  # taken over meanwhile
    with pytest.raises(LeaseLost):
        with tracking.step_run("train", run_id=rid, lease=lease):
            mlflow.log_metric("val_auc", 0.5, step=1)
    run = c.get_run(rid)
    assert run.info.status == "RUNNING"  # left to the process that holds it now
    assert mlflow.active_run() is None


def test_a_paused_holder_woken_after_a_takeover_writes_nothing(exp, tmp_path, tiny_raw):
    """A train job paused after epoch 1 (SIGSTOP: a Condor suspend, an NFS stall) while another
    node takes its run over, then woken: it writes nothing more to the run (no checkpoint, no
    metric, no log, no error tag, no status) and exits with the "held elsewhere" code 75.
    Plant: the per-epoch check reading only the beat thread's flag, or a log upload / failure
    record without a check -> the woken job overwrites the new holder's run."""
    import psutil

    from tests.fault import kill_env

    env = kill_env(1, base={"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
                            "MLFLOW_EXPERIMENT_NAME": os.environ["MLFLOW_EXPERIMENT_NAME"]}, how="stop")
    cmd = [sys.executable, "-m", "steps.train", "--tokenizer", "direct", "--epochs", "2", "--data", str(tiny_raw), "--d-model", "16",
           "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "64", "--max-train-events", "300", "--max-eval-events", "100",
           "--system-metrics", "false"]
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while psutil.Process(p.pid).status() != psutil.STATUS_STOPPED:
            assert p.poll() is None and time.monotonic() < deadline, "the job never paused"
            time.sleep(0.2)
        c = tracking.client()
        (run,) = [r for r in c.search_runs([exp], "tags.step = 'train'")]
        rid = run.info.run_id
        gen = max(leases.generations(run.data.params))

        def state():
            r = c.get_run(rid)
            ck = Path(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="checkpoints/last.pt", dst_path=str(tmp_path / "d")))
            arts = sorted(a.path for a in c.list_artifacts(rid)) + sorted(a.path for a in c.list_artifacts(rid, "logs"))
            return (r.info.status, {k: v for k, v in r.data.tags.items() if not k.startswith("lease.") and k != "mlflow.runName"},
                    [m.step for m in c.get_metric_history(rid, "val_auc")], ck.read_bytes(), arts)

        before = state()
        assert before[0] == "RUNNING" and before[2] == [1]
        # another node takes the run over: the paused holder looked dead there
        c.set_tag(rid, leases.LOST, str(gen))
        assert leases.write_once(rid, f"lease.g{gen + 1}", str(_other_node()))
        time.sleep(tracking.FENCE_BATCH_S + 0.5)  # a pause longer than one write batch (a real one lasts minutes)
        p.send_signal(signal.SIGCONT)
        out = p.communicate(timeout=180)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 75, out[-2000:]
    assert "another process took over" in out
    assert state() == before  # not one byte more from the woken job


# --------------------------------------------------------------------------- upstream claims


def _claim_together(n, slow=None, delay=0.0, stale=None):
    """n jobs (threads, each with its own identity) claim the same upstream settings at once;
    job ``slow``'s create_run takes ``delay`` seconds longer. Returns each job's outcome."""
    real = mlflow.MlflowClient.create_run
    who = threading.local()

    def create_run(self, *a, **kw):
        if getattr(who, "slow", False):
            time.sleep(delay)
        return real(self, *a, **kw)

    out = [None] * n
    barrier = threading.Barrier(n)

    def job(i):
        who.slow = i == slow
        barrier.wait()
        try:
            run, lease = leases.find_or_claim("binning", {"x": "1"}, "binning-x", poll_s=0.3, holder=leases.Holder("node", 100 + i))
            if lease is not None:
                with leases.claimed(lease), tracking.step_run("binning", run_id=lease.run_id, lease=lease, use_env=False):
                    tracking.log_params({"x": "1"})
                    time.sleep(1.0)
                out[i] = ("won", lease.run_id)
            else:
                out[i] = ("found", run.info.run_id)
        except BaseException as e:  # noqa: BLE001
            out[i] = ("error", repr(e))

    mlflow.MlflowClient.create_run = create_run
    try:
        threads = [threading.Thread(target=job, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        mlflow.MlflowClient.create_run = real
    return out


@pytest.mark.parametrize("slow", [None, 0])
def test_jobs_starting_together_make_one_upstream_run(exp, slow):
    """One claimant's create_run is 3 s slow (an overloaded server; the old rule, "oldest start
    time wins" after a 1 s settle, gave two owners): still exactly one run does the work."""
    out = _claim_together(4, slow=slow, delay=3.0)
    assert [o[0] for o in out].count("won") == 1, out
    winner = next(o[1] for o in out if o[0] == "won")
    assert all(o == ("found", winner) for o in out if o[0] != "won"), out
    runs = mlflow.search_runs(experiment_ids=[exp], filter_string="tags.step = 'binning'", output_format="list")
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in done] == [winner]
    # the losers' claims: ended, not deleted (the jobs' login has EDIT, which does not delete), folded under the winner
    lost = [r for r in runs if r.info.run_id != winner]
    assert len(lost) == 3 and all(r.info.status == "KILLED" and r.data.tags[leases.CLAIM_RESULT] == "lost"
                                  and r.data.tags["mlflow.parentRunId"] == winner for r in lost), [(r.info.status, r.data.tags) for r in lost]


def test_a_silent_claim_holder_is_taken_over_and_not_counted_as_failed(exp, monkeypatch):
    monkeypatch.setenv("THESIS_MLFLOW_LEASE_STALE_S", "3")
    c = tracking.client()
    key = leases.claim_key("binning", {"x": "1"})
    ghost = leases.Holder("vanished-node", 7)
    rid = c.create_run(exp, tags={"step": "binning", leases.CLAIM_TAG: key, leases.OWNER: str(ghost)}).info.run_id
    assert leases.write_once(rid, "lease.g1", str(ghost))
    c.set_tag(rid, "lease.result.g1", "won")
    t0 = time.monotonic()
    run, lease = leases.find_or_claim("binning", {"x": "1"}, "binning-x", poll_s=0.3)
    assert run is None and lease is not None and lease.gen == 2 and time.monotonic() - t0 >= 3
    ghost_run = c.get_run(rid)
    assert ghost_run.info.status == "FAILED" and ghost_run.data.tags[leases.LOST] == "1"


# --------------------------------------------------------------------------- two drivers of one grid


def test_two_grid_runs_at_once_train_every_cell_once(exp, srv, tmp_path, tiny_raw):
    doc = {"name": "twice", "data": str(tiny_raw), "factors": {"tokenizer": ["direct"], "pooling": ["max", "mean"], "met": [True], "vect": [4]},
           "scales": {"demo": {"seeds": [0], "train": {"epochs": 2, "batch_size": 128, "lr": 3e-3, "warmup_steps": 5, "d_model": 16,
                                                       "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_train_events": 400, "max_eval_events": 200,
                                                       }}}}
    gfile = tmp_path / "twice.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "MLFLOW_TRACKING_URI": srv.uri, "MLFLOW_EXPERIMENT_NAME": os.environ["MLFLOW_EXPERIMENT_NAME"]}
    cmd = [sys.executable, "-m", "steps.cli", "grid", "run", str(gfile), "--scale", "demo", "--jobs", "2"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 75], "\n=====\n".join(outs)
    refused = outs[[p.returncode for p in procs].index(75)]
    assert "is being worked on by another process" in refused and f"pid {procs[0].pid}" in refused or f"pid {procs[1].pid}" in refused
    c = tracking.client()
    parents = c.search_runs([exp], "tags.step = 'grid'")
    won = [p for p in parents if p.data.tags.get(leases.CLAIM_RESULT) != "lost"]
    assert len(won) == 1 and won[0].data.tags["grid.name"] == "twice-demo", [p.info.run_id for p in parents]
    assert all(p.info.status == "KILLED" and "grid.name" not in p.data.tags for p in parents if p not in won)  # a loser's claim: ended
    cells = c.search_runs([exp], "tags.step = 'train'")
    assert len(cells) == 2 and all(r.info.status == "FINISHED" for r in cells)
    for r in cells:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]
        assert set(leases.generations(r.data.params)) == {1}  # one process ever trained it


# --------------------------------------------------------------------------- liveness that holds in containers and across users


def test_a_pid_is_judged_only_where_it_means_one_process(monkeypatch):
    """The holder's identity carries boot id, pid namespace and start time: a pid from another
    pid namespace on this host (a container job) is not judged here (its beats are watched), a
    reused pid (another start time) and a pre-reboot pid are dead, and a pid we may not signal
    (another user's process) is not alive."""
    me = leases.Holder.here()
    boot, ns, start = me.ident.split(".")
    assert leases.pid_alive(me) is True and leases.Holder.parse(str(me)) == me
    assert leases.pid_alive(leases.Holder(me.host, me.pid, "t", f"{boot}.{int(ns) + 1}.{start}")) is None  # other namespace
    assert leases.pid_alive(leases.Holder(me.host, me.pid, "t", f"{boot}.{ns}.{int(start) + 1}")) is False  # reused pid
    assert leases.pid_alive(leases.Holder(me.host, me.pid, "t", f"0000deadbeef.{ns}.{start}")) is False  # rebooted since
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = leases.Holder(me.host, child.pid, "t", f"{boot}.{ns}.{leases.start_ticks(child.pid)}")
        assert leases.pid_alive(other) is True

        def denied(pid, sig):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "kill", denied)  # as for another user's process under that pid
        assert leases.pid_alive(other) is False
        monkeypatch.undo()
    finally:
        child.kill()
        child.wait()
    old = leases.Holder.parse(f"{me.host}:{me.pid}:abc")  # written before identities: parsed, judged the old way
    assert old is not None and old.ident == "" and leases.pid_alive(old) is True  # (also where pytest-xdist retitled this process)
    other = subprocess.Popen(["sleep", "30"])  # its pid now used by a process that is not Python: the old holder is dead
    try:
        assert leases.pid_alive(leases.Holder.parse(f"{me.host}:{other.pid}:abc")) is False
    finally:
        other.kill()
        other.wait()


def test_the_stale_limit_covers_the_clients_worst_case(monkeypatch):
    monkeypatch.delenv("THESIS_MLFLOW_LEASE_STALE_S", raising=False)
    for k, v in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "THESIS_MLFLOW_LEASE_BEAT_S": "15"}.items():
        monkeypatch.setenv(k, v)
    # 8 attempts of up to 30 s, waits 4, 8, 16, 32, 64 s (+ 1 s jitter each) and one at urllib3's 120 s cap
    assert tracking.retry_budget_s() == 8 * 30 + (5 + 9 + 17 + 33 + 65 + 120)
    assert leases.stale_s() == tracking.retry_budget_s() + 2 * 15
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # MLflow's own default: the limit follows it
    assert leases.stale_s() == 8 * 120 + 249 + 30


def test_a_confirmation_covers_one_write_batch_only(monkeypatch):
    """One server check serves the writes of one batch (FENCE_BATCH_S); after that, and after
    any pause, the next write asks again; a lost lease stays lost."""
    lease = leases.Lease("r", 1, _other_node())
    calls, now = [], [100.0]
    monkeypatch.setattr(lease, "holds", lambda: calls.append(1) or True)
    monkeypatch.setattr(leases.time, "monotonic", lambda: now[0])
    lease.verify(max_age=tracking.FENCE_BATCH_S)
    now[0] += 0.5
    lease.verify(max_age=tracking.FENCE_BATCH_S)
    assert len(calls) == 1
    now[0] += tracking.FENCE_BATCH_S
    lease.verify(max_age=tracking.FENCE_BATCH_S)
    lease.verify()  # no max_age: always asks
    assert len(calls) == 3
    monkeypatch.setattr(lease, "holds", lambda: False)
    now[0] += 300  # woken after a long pause
    with pytest.raises(LeaseLost):
        lease.verify(max_age=tracking.FENCE_BATCH_S)
    monkeypatch.setattr(lease, "holds", lambda: True)
    with pytest.raises(LeaseLost):
        lease.verify(max_age=tracking.FENCE_BATCH_S)  # lost stays lost


def test_a_beat_thread_keeps_the_store_its_lease_was_taken_on(exp, monkeypatch, tmp_path):
    """The environment changes under a running beat thread (a test's teardown; a notebook that
    points MLflow elsewhere): its beats still go to the lease's own store, and nothing is
    written into ``./mlflow.db`` of the process's folder (plant: the beat re-reading the
    environment -> the beat stops advancing and a stray mlflow.db appears; CI saw it)."""
    monkeypatch.setenv("THESIS_MLFLOW_LEASE_BEAT_S", "0.2")
    c = tracking.client()
    rid = c.create_run(exp).info.run_id
    lease = leases.acquire_run(rid, holder=_other_node())
    lease.start()
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.chdir(tmp_path)
        first = c.get_run(rid).data.tags[leases.BEAT]
        deadline = time.monotonic() + 30
        while c.get_run(rid).data.tags[leases.BEAT] == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get_run(rid).data.tags[leases.BEAT] != first
    finally:
        lease.release()
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
