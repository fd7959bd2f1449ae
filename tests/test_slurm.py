"""The grid on a real SLURM: a one-node cluster started from Debian's packages for this test
session (``tests/slurmcluster.py``), jobs that log to the shared tracking server with its login
on, as the jobs user, with the login read from ``~/.mlflow/credentials`` (never carried by a
job). Where SLURM cannot run (not root, not installed) these tests skip, saying why."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests import slurmcluster
from tests.conftest import login_from_home
from thesis_mlflow.grid.driver import run_grid
from thesis_mlflow.grid.slurm import state as slurmstate
from thesis_mlflow.grid.status import grid_status
from thesis_mlflow.paths import ROOT
from thesis_mlflow.server import logins

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurmcluster.why_not()
    if why:
        pytest.skip(why)
    c = slurmcluster.start(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    yield c
    c.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def slurm_server(cluster, tmp_path_factory):
    """A tracking server of this module's own, with its login on (not the session's shared one:
    the scheduler tests are long and run beside the shared server's group, not after it)."""
    from thesis_mlflow.server import process as server

    s = server.start(tmp_path_factory.mktemp("slurm-srv") / "srv", auth=True, workers=2)
    yield s
    s.stop()


@pytest.fixture()
def jobs_home(slurm_server, tmp_path, monkeypatch, request):
    """This test's experiment on the module's server, made by the admin with EDIT for the jobs
    login; a HOME holding that login as MLflow clients find it, and no login in the environment
    (a job gets only what the grid's export allow-list names, and never a secret)."""
    name = f"t-{request.node.name}"[:200]
    logins.provision_jobs_user(slurm_server.uri, slurm_server.root, name)
    home = tmp_path / "home"
    login_from_home(slurm_server, home, monkeypatch, name)
    yield home
    while mlflow.active_run():
        mlflow.end_run()


def _grid(tmp_path, tiny_raw, name, cluster, poolings=("mean", "max"), seeds=(0, 1), epochs=4, events=600, **slurm_keys):
    doc = {"name": name, "data": str(tiny_raw), "factors": {"tokenizer": ["direct"], "pooling": list(poolings), "met": [True], "vect": [4]},
           "scales": {"demo": {"seeds": list(seeds), "train": {"epochs": epochs, "batch_size": 64, "lr": 3e-3, "warmup_steps": 5, "d_model": 16,
                                                          "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_train_events": events,
                                                          "max_eval_events": 200}}},
           "slurm": {"partition": cluster.partition, "time": "00:10:00", "cpus_per_job": 1, "mem": "2G", "gpus_per_job": 0,
                     "cells_per_job": len(seeds), "signal_before_end_s": 50, "job_dir": str(tmp_path / "jobs"), **slurm_keys}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _job(cluster, jid: str) -> dict:
    out = cluster.run("scontrol", "show", "job", "-o", jid).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait(what, cond, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _queue(cluster) -> list[str]:
    return [ln for ln in cluster.run("squeue", "-h", "-o", "%i %j %T").stdout.splitlines() if ln.strip()]


def _epochs(c, rid) -> list[int]:
    return [m.step for m in c.get_metric_history(rid, "val_auc")]


# a pack trains ~45 s here (2 cells x 6 epochs of 3000 events, ~3.5 s each, and ~6 s to start): past its
# warning, which SLURM's 30-s check sends 0-30 s after pack 1's limit is cut (below)
EPOCHS = 6


def test_a_grid_through_slurm_survives_a_requeue_and_its_time_limit(cluster, jobs_home, tiny_raw, tmp_path):
    """2 configurations x 2 seeds in 2 packs, prepare before them and the report after, through
    the real scheduler. Pack 0 is requeued by the admin mid-training (``scontrol requeue``: SIGTERM,
    back in the queue); pack 1's time limit is cut to one minute, shorter than its work: SLURM's
    warning (USR1) stops its cells at their checkpoints, KILLED, the pack requeues itself and the
    next attempt resumes them. Every cell ends FINISHED with each epoch logged once, the report ran,
    ``grid status`` exits 0 and nothing is left in the queue."""
    gfile = _grid(tmp_path, tiny_raw, "sl", cluster, epochs=EPOCHS, events=3000, max_requeues=6, signal_before_end_s=60)
    lines = []
    s = run_grid(str(gfile), "slurm", "demo", 1, False, echo=lines.append)
    text = "\n".join(lines)
    sub = s.submitted
    assert sub is not None and len(sub["packs"]) == 2 and sorted(s.launched) == sorted(c for p in sub["packs"] for c in p["cells"]), text
    assert "submitted to SLURM" in text
    prep, (p0, p1), rep = sub["prepare"], [p["job"] for p in sub["packs"]], sub["report"]
    # the chain: packs after prepare (afterok), the report after every pack (afterany), all requeueable
    assert "afterok:" + prep in _job(cluster, p0)["Dependency"] and _job(cluster, p0)["Requeue"] == "1"
    assert f"afterany:{p0}" in _job(cluster, rep)["Dependency"] and f"afterany:{p1}" in _job(cluster, rep)["Dependency"]
    assert all(_job(cluster, j)["JobName"].startswith("sl-demo-") for j in (prep, p0, p1, rep))
    # private scripts and record, nothing secret in them
    folder = s.job_dir
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    c = mlflow.MlflowClient()
    rid = {name: r for p in sub["packs"] for name, r in p["cells"].items()}
    # pack 1: once it runs, a time limit of one minute, shorter than its work; its warning is due
    # 60 s before that end, at once: SLURM's check of limits (every 30 s) sends it 0-30 s later,
    # while the pack trains (a warning due 30 s before the end came 30-60 s after, and the
    # pack needed ~70 s of work to be sure to be caught training)
    _wait("pack 1 to start", lambda: _job(cluster, p1).get("JobState") == "RUNNING", 240, 0.3)
    cluster.run("scontrol", "update", f"JobId={p1}", "TimeLimit=1")
    first_of_p0 = next(iter(sub["packs"][0]["cells"].values()))
    _wait("pack 0's first cell to log an epoch", lambda: _epochs(c, first_of_p0), 240, 0.5)
    cluster.run("scontrol", "requeue", p0)
    _wait("pack 0 back in the queue", lambda: _job(cluster, p0).get("JobState") == "PENDING" and int(_job(cluster, p0)["Restarts"]) >= 1, 60, 0.3)
    st = grid_status("sl-demo")
    by = {x.cell: x for x in st.cells}
    assert [by[n].state for n in sub["packs"][0]["cells"]] == ["requeued", "requeued"], st.render(with_logs=False)
    assert by[next(iter(sub["packs"][0]["cells"]))].job.startswith(f"{p0} requeued") and st.exit_code == 0
    # one warning is the case under test: once pack 1 has been requeued by it, its limit goes back
    # up, so the next attempt finishes instead of being warned again every minute (2-5 restarts,
    # ~20 s each, before: the suite's longest test)
    _wait("pack 1 requeued by its time-limit warning", lambda: int(_job(cluster, p1).get("Restarts", 0)) >= 1, 240, 0.5)
    cluster.run("scontrol", "update", f"JobId={p1}", "TimeLimit=10")
    _wait("the report job to end", lambda: _job(cluster, rep).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 420, 2)
    for j in (p0, p1, rep):
        info = _job(cluster, j)
        assert info["JobState"] == "COMPLETED", (j, {k: info.get(k) for k in ("JobState", "Reason", "ExitCode", "Restarts", "RunTime")},
                                                  _log(folder, j)[-3000:])
    assert int(_job(cluster, p0)["Restarts"]) >= 1 and int(_job(cluster, p1)["Restarts"]) >= 1
    p1_log = _log(folder, p1)
    assert "REQUEUE: job" in p1_log and "near its time limit" in p1_log, p1_log[-3000:]
    for name, r in rid.items():
        run = c.get_run(r)
        assert run.info.status == "FINISHED" and "test_auc" in run.data.metrics, (name, run.info.status)
        assert _epochs(c, r) == list(range(1, EPOCHS + 1)), (name, _epochs(c, r))  # each epoch exactly once across the attempts
        mlflow.artifacts.download_artifacts(run_id=r, artifact_path="logs/train.log", dst_path=str(tmp_path / name))
    # pack 0's cell stopped mid-training ended KILLED and resumed from its checkpoint (pack 1's
    # warning may have come between its two cells: then nothing was stopped mid-way)
    resumed = [n for n in rid if "resumed from epoch" in Path(tmp_path / n / "train.log").read_text()]
    assert set(sub["packs"][0]["cells"]) & set(resumed), resumed
    assert p1_log.count(" started on ") >= 2 and "DONE: all 2 cells of the pack finished" in p1_log.split(" started on ")[-1]
    st = grid_status("sl-demo")
    assert st.exit_code == 0 and st.counts()["finished"] == 4, st.render(with_logs=False)
    assert not [q for q in _queue(cluster) if "sl-demo" in q]
    # again: every cell finished, nothing is submitted
    again = run_grid(str(gfile), "slurm", "demo", 1, False, echo=lines.append)
    assert again.submitted is None and again.launched == []


def _log(folder: Path, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (folder / "logs").glob(f"*-{job}.out"))


def test_a_cancelled_prepare_and_a_pack_out_of_memory_are_named_even_once_slurm_forgets_them(cluster, jobs_home, tiny_raw, tmp_path,
                                                                                             ):
    """``scancel`` of a grid's prepare: no pack trains (SLURM ends them, their dependency can never
    be met) and status says so, naming the prepare job; a pack given too little memory is killed by
    SLURM and status says out of memory. Both stay named, exit 1, once SLURM no longer knows the
    jobs and keeps no accounting (from the job logs). The report ran for both."""
    never = run_grid(str(_grid(tmp_path, tiny_raw, "nv", cluster)), "slurm", "demo", 1, False).submitted
    cluster.run("scancel", never["prepare"])
    oom = run_grid(str(_grid(tmp_path, tiny_raw, "om", cluster, poolings=("max",), seeds=(0,))), "slurm", "demo", 1, False).submitted
    pack = oom["packs"][0]["job"]
    cluster.run("scontrol", "update", f"JobId={pack}", "MinMemoryNode=150")  # 150 MB: Python with torch and MLflow needs more
    for rep in (never["report"], oom["report"]):
        _wait("the reports to end", lambda rep=rep: _job(cluster, rep).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 240, 1)
    c = mlflow.MlflowClient()
    for sub, cause, words in ((never, "dependency never satisfied", f"its prepare job {never['prepare']} ended: cancelled"),
                              (oom, "out of memory", "exceeded memory limit")):
        name = _job(cluster, sub["report"])["JobName"].removesuffix("-report")
        for forgotten in (False, True):
            with pytest.MonkeyPatch.context() as mp:
                if forgotten:  # SLURM's controller has purged the jobs (MinJobAge) and there is no accounting: the logs remain
                    mp.setattr(slurmstate, "scheduler_jobs", lambda ids: ({}, True))
                st = grid_status(name)
            assert st.exit_code == 1 and {x.state for x in st.cells} == {"failed"}, st.render(with_logs=False)
            for x in st.cells:
                assert x.error_class == cause and words in x.error_message, (forgotten, x)
            assert f"FAILED {cause}: " in st.render(with_logs=False)
        for p in sub["packs"]:
            for rid in p["cells"].values():
                assert not _epochs(c, rid)  # nothing trained
    assert _job(cluster, never["report"])["JobState"] == "COMPLETED" and _job(cluster, oom["report"])["JobState"] == "COMPLETED"


def test_two_grid_runs_at_once_submit_each_cell_once_and_again_submits_nothing_queued(cluster, jobs_home, tiny_raw, tmp_path):
    """Two ``grid run --backend slurm`` started together: one submits, the other submits nothing
    twice (it is refused while the first holds the grid, or finds its jobs queued); a third run
    while the jobs wait submits nothing either, naming the jobs."""
    gfile = _grid(tmp_path, tiny_raw, "tw", cluster)
    cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=DOWN")  # the jobs stay queued meanwhile
    cmd = [sys.executable, "-m", "steps.cli", "grid", "run", str(gfile), "--backend", "slurm", "--scale", "demo"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    try:
        queue = [q for q in _queue(cluster) if " tw-demo-" in q]
        names = [q.split()[1] for q in queue]
        assert sorted(names) == ["tw-demo-pack-000", "tw-demo-pack-001", "tw-demo-prepare", "tw-demo-report"], (queue, outs)
        assert codes in ([0, 0], [0, 75]), outs
        third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert third.returncode == 0 and "4 cell(s) already in SLURM jobs that will still run them" in third.stdout, third.stdout + third.stderr
        assert "nothing to submit" in third.stdout
        assert sorted(q.split()[1] for q in _queue(cluster) if " tw-demo-" in q) == sorted(names)
    finally:
        cluster.run("scancel", "-n", ",".join(["tw-demo-prepare", "tw-demo-pack-000", "tw-demo-pack-001", "tw-demo-report"]), check=False)
        cluster.run("scontrol", "update", f"PartitionName={cluster.partition}", "State=UP")


def _odd_grids(tmp_path, cluster):
    from tests.test_job_files import ODD, grid_doc, write

    for name, changes in ODD:
        doc = grid_doc(tmp_path / name, **changes)
        doc["slurm"].update({"partition": cluster.partition, "mem": "1G", "cpus_per_job": 1, "job_dir": str(tmp_path / name / "jobs")})
        if doc["slurm"].get("python"):
            doc["slurm"]["python"] = str(tmp_path / name / doc["slurm"]["python"])
        (tmp_path / name).mkdir()
        yield name, write(tmp_path / name, doc)


def test_sbatch_reads_every_odd_script_as_written(cluster, tmp_path, monkeypatch):
    """The scripts of tests/test_job_files.py's odd-but-harmless rows through the real ``sbatch
    --test-only`` (it parses every directive and asks the controller, submitting nothing), fed as
    the grid feeds them (standard input, the caller's SBATCH_* removed): accepted, each one."""
    from thesis_mlflow.grid.gridfile import load_grid
    from thesis_mlflow.grid.slurm import submit as slurm

    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.setenv("SBATCH_EXPORT", "ALL")
    monkeypatch.setenv("SBATCH_PARTITION", "no_such_partition")  # would make --test-only fail if it reached sbatch
    for name, p in _odd_grids(tmp_path, cluster):
        g = load_grid(p, "demo", base_dir=tmp_path / name)
        for s in slurm.write_scripts(g, {c: "0" * 32 for c in g.cells()}, "http://127.0.0.1:5000", "7", p):
            out = subprocess.run(["sbatch", "--test-only"], input=s.text, capture_output=True, text=True, timeout=60,
                                 env=slurm.sbatch_environment())
            assert out.returncode == 0 and "to start at" in out.stderr, (name, s.name, out.stderr)


def test_a_real_job_sees_only_the_allow_list_and_logs_in_its_folder_whatever_the_caller_sets(cluster, tmp_path, monkeypatch):
    """``SBATCH_EXPORT=ALL`` and ``SBATCH_OUTPUT`` in the submitting shell (as in a user's start-up
    file): a grid's real pack job (the product's script, submitted by the product's ``sbatch``, a
    stand-in Python that records what it was given) still sees only the allow-list and writes its
    log in the private folder."""
    import json

    from tests.test_job_files import _recorder, grid_doc, write
    from thesis_mlflow.grid.gridfile import load_grid
    from thesis_mlflow.grid.slurm import submit as slurm

    monkeypatch.setenv("THESIS_MLFLOW_OUTPUTS", str(tmp_path / "out"))
    rec = tmp_path / "rec" / "python"
    _recorder(rec)
    doc = grid_doc(tmp_path, slurm={"partition": cluster.partition, "mem": "1G", "cpus_per_job": 1, "python": str(rec), "time": "00:05:00",
                                    "signal_before_end_s": 60})
    doc["factors"]["pooling"] = ["mean"]
    p = write(tmp_path, doc)
    g = load_grid(p, "demo", base_dir=ROOT)
    pack = next(s for s in slurm.write_scripts(g, {c: "0" * 32 for c in g.cells()}, "http://127.0.0.1:5000", "7", p) if s.kind == "pack")
    leak = tmp_path / "leak"
    leak.mkdir()
    monkeypatch.setenv("SBATCH_EXPORT", "ALL")
    monkeypatch.setenv("SBATCH_OUTPUT", str(leak / "out-%j.log"))
    monkeypatch.setenv("PLANTED_BY_THE_CALLER", "1")
    job = slurm.sbatch(pack)
    _wait("the job to end", lambda: not [q for q in _queue(cluster) if q.split()[0] == job], 60, 0.5)
    env = json.loads((rec.parent / "called.json").read_text())["env"]
    assert "PLANTED_BY_THE_CALLER" not in env and "SBATCH_EXPORT" not in env, sorted(env)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert list(leak.iterdir()) == []
    (log,) = (slurm.job_dir(g) / "logs").iterdir()
    assert log.name == f"{pack.name}-{job}.out" and stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_rehearsal_through_slurm_forecasts_from_its_own_jobs(cluster, jobs_home, tiny_raw, tmp_path):
    """``grid rehearse --backend slurm --wait``: the rehearsal's prepare, pack and forecast jobs go
    through the real scheduler under the rehearsal's own name; every cell is rehearsed once; the
    forecast is printed here and by the last job, and logged on the rehearsal's parent; the real
    grid's status sees none of it."""
    from thesis_mlflow.forecast.rehearse import rehearse
    from thesis_mlflow.grid.rehearsal import Rehearsal

    gfile = _grid(tmp_path, tiny_raw, "rs", cluster, poolings=("mean",), epochs=4)
    lines = []
    r = rehearse(str(gfile), "demo", "slurm", Rehearsal(steps=3, eval_events=200), wait=True, echo=lines.append, poll_s=1)
    text = "\n".join(lines)
    assert r.forecast is not None and r.forecast.exit_code == 0, text
    assert "full run: 2 cells in 1 packs (slurm)" in text and "requeues: 0 in all (time 0:10:00 per attempt)" in text, text
    sub = r.run.submitted
    assert all(_job(cluster, j)["JobName"].startswith("rs-demo-rehearsal-") for j in (sub["prepare"], sub["report"]))
    _wait("the forecast job to end", lambda: _job(cluster, sub["report"]).get("JobState") in ("COMPLETED", "FAILED"), 120, 1)
    assert _job(cluster, sub["report"])["JobState"] == "COMPLETED"
    assert "full run: 2 cells in 1 packs (slurm)" in _log(r.run.job_dir, sub["report"])
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name(f"t-{test_a_rehearsal_through_slurm_forecasts_from_its_own_jobs.__name__}").experiment_id
    parent = c.search_runs([exp], "tags.`grid.name` = 'rs-demo-rehearsal' and tags.step = 'grid'")[0]
    assert "forecast/forecast.html" in {a.path for a in c.list_artifacts(parent.info.run_id, "forecast")}
    cells = c.search_runs([exp], "tags.`grid.name` = 'rs-demo-rehearsal' and tags.step = 'train'")
    assert len(cells) == 2 and all(x.info.status == "FINISHED" and x.data.params["n_train_events"] == str(3 * 64) for x in cells)
    assert grid_status(str(gfile), "demo").counts()["finished"] == 0
