"""A grid's state at a glance, against a real server: finished, running, failed (on purpose, in
a real train process) and not-started cells; the failure's log and error tags; the parent's
progress; `grid status` by name, exiting 1 because a cell failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.grid import status
from thesis_mlflow.grid.condor import state as condor
from thesis_mlflow.grid.condor import submit as condor_submit
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.runs import DAG_DIR_TAG, ensure_children, find_or_create_parent
from thesis_mlflow.paths import ROOT

TINY = {"epochs": 1, "batch_size": 128, "lr": 3e-3, "warmup_steps": 5, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
        "max_train_events": 400, "max_eval_events": 200}


def _train(spec, run_id, env):
    """A real train process on the child run (started, not waited for)."""
    cmd = [sys.executable, "-m", "steps.train", *spec.cli_args(), "--system-metrics", "false"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "MLFLOW_RUN_ID": run_id}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# What DAGMan writes into a node status file (HTCondor's format; two pack nodes): pack:0's job
# is on hold after a retry, pack:1's is idle in the queue.
NODE_STATUS = """[
  Type = "DagStatus";
  NodesTotal = 3; NodesDone = 0; NodesQueued = 2; JobProcsHeld = 1; JobProcsIdle = 2;
]
[
  Type = "NodeStatus";
  Node = "pack:0";
  NodeStatus = 3; /* "STATUS_SUBMITTED" */
  StatusDetails = "Job has gone over memory limit of 16384 megabytes";
  RetryCount = 1;
  JobProcsQueued = 1;
  JobProcsHeld = 1;
]
[
  Type = "NodeStatus";
  Node = "pack:1";
  NodeStatus = 3; /* "STATUS_SUBMITTED" */
  StatusDetails = "idle";
  RetryCount = 0;
  JobProcsQueued = 1;
  JobProcsHeld = 0;
]
[
  Type = "NodeStatus";
  Node = "report";
  NodeStatus = 0; /* "STATUS_NOT_READY" */
  StatusDetails = "";
  RetryCount = 0;
  JobProcsQueued = 0;
  JobProcsHeld = 0;
]
"""


def test_status_of_a_grid_with_every_kind_of_cell(server_exp, shared_server, tmp_path, tiny_raw):
    doc = {"name": "st", "data": str(tiny_raw), "factors": {"tokenizer": ["direct"], "pooling": ["max", "mean"], "met": [True], "vect": [4]},
           "scales": {"demo": {"seeds": [0, 1], "train": TINY}}}
    gfile = tmp_path / "st.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    g = load_grid(gfile, "demo", base_dir=ROOT)
    parent = find_or_create_parent(g, server_exp)
    children = {cell.name: (cell, r.info.run_id) for cell, r in ensure_children(g, parent, server_exp).items()}
    env = {"MLFLOW_TRACKING_URI": shared_server.uri, "MLFLOW_EXPERIMENT_ID": server_exp}
    c = mlflow.MlflowClient()
    # finished: trained for real
    done_cell, done_id = children["direct-max-met-4v-s0"]
    good = _train(done_cell, done_id, env)
    # failed on purpose inside its run: it was started with other settings (resuming is refused)
    bad_cell, bad_id = children["direct-max-met-4v-s1"]
    c.log_param(bad_id, "epochs", "99")
    bad = _train(bad_cell, bad_id, env)
    assert good.wait(timeout=300) == 0, good.communicate()[1][-3000:]
    err = bad.communicate(timeout=300)[1]
    assert bad.returncode == 1 and "refusing to resume" in err
    # running: an epoch done, its rate known
    run_cell, run_id = children["direct-mean-met-4v-s0"]
    c.update_run(run_id, status="RUNNING")
    c.log_param(run_id, "epochs", "4")
    c.log_param(run_id, "n_train_events", "400")
    c.log_metric(run_id, "epoch", 1, step=1)
    c.log_metric(run_id, "events_per_s", 200.0, step=1)

    st = status.grid_status("st-demo")  # by the grid's name, as the UI and the report know it
    by = {x.cell: x for x in st.cells}
    assert st.counts() == {"finished": 1, "running": 1, "queued": 0, "requeued": 0, "not started": 1, "not created": 0, "held": 0,
                           "failed": 1}
    assert st.exit_code == 1
    assert by["direct-max-met-4v-s0"].test_auc is not None and (by["direct-max-met-4v-s0"].epoch, by["direct-max-met-4v-s0"].epochs) == (1, 1)
    assert (by["direct-mean-met-4v-s0"].epoch, by["direct-mean-met-4v-s0"].epochs, by["direct-mean-met-4v-s0"].events_per_s) == (1, 4, 200.0)
    # ETA: the running cell's 3 epochs x its 2 s, the unstarted one's epoch at the grid's mean rate, one cell at a time
    fin = by["direct-max-met-4v-s0"]
    grid_epoch_s = (2.0 + fin.n_train_events / fin.events_per_s) / 2
    assert abs(st.eta_s() - (3 * 2.0 + 1 * grid_epoch_s)) < 1e-6
    (group, cells), = st.failed_groups().items()
    assert group[0] == "RunConflict" and "refusing to resume" in group[1] and [x.cell for x in cells] == ["direct-max-met-4v-s1"]
    # the failed run's own log, one click away: the traceback is in it
    log = Path(mlflow.artifacts.download_artifacts(run_id=bad_id, artifact_path="logs/train.log", dst_path=str(tmp_path / "dl"))).read_text()
    assert "Traceback" in log and "refusing to resume" in log
    text = st.render()
    assert "1 finished, 1 running, 1 not started, 1 failed; ETA 0m0" in text and "FAILED RunConflict" in text
    assert "refusing to resume" in text.split("last lines of")[1]
    # the command: by name, and non-zero because a cell failed
    res = CliRunner().invoke(main, ["grid", "status", "st-demo"])
    assert res.exit_code == 1 and "st-demo: 4 cells" in res.output
    # the parent run shows the same, for the runs table
    status.publish(st, 1)
    p = c.get_run(parent.info.run_id)
    assert p.data.metrics["cells_failed"] == 1 and p.data.metrics["cells_finished"] == 1 and "FAILED" not in p.data.tags["mlflow.note.content"]
    assert "**RunConflict** (1)" in p.data.tags["mlflow.note.content"]
    # on Condor, DAGMan's node status file tells what MLflow cannot: the running cell's job is now
    # on hold (its run would stay RUNNING forever), the unstarted one waits in the queue
    dag = tmp_path / "dag"
    dag.mkdir()
    condor_submit.write_cells_by_node(dag, {"pack:0": ["direct-max-met-4v-s0", "direct-mean-met-4v-s0"],
                                       "pack:1": ["direct-max-met-4v-s1", "direct-mean-met-4v-s1"]})
    (dag / condor.STATUS_FILE).write_text(NODE_STATUS)
    c.set_tag(parent.info.run_id, DAG_DIR_TAG, str(dag))
    st = status.grid_status("st-demo")
    by = {x.cell: (x.state, x.retries, x.error_class) for x in st.cells}
    assert by == {"direct-max-met-4v-s0": ("finished", 1, None), "direct-mean-met-4v-s0": ("held", 1, "held by HTCondor"),
                  "direct-max-met-4v-s1": ("failed", 0, "RunConflict"), "direct-mean-met-4v-s1": ("queued", 0, None)}
    text = st.render(with_logs=False)
    assert "st-demo: 4 cells: 1 finished, 1 queued, 1 held, 1 failed" in text
    assert "HELD held by HTCondor: Job has gone over memory limit of 16384 megabytes" in text
    assert st.exit_code == 1


def test_a_job_held_for_memory_is_released_with_more_up_to_the_cap():
    """The submit file's ``request_memory`` and ``periodic_release``, evaluated by HTCondor's own
    ClassAd library on the job ad as the schedd would: each memory hold releases the job with twice
    the memory, until the next request would pass ``memory_max``; then it stays held for the user.
    A hold for another reason is never released by it (plants: no cap, or release on any hold, fail it)."""
    import classad2

    from thesis_mlflow.grid.condor.settings import CondorSpec
    from thesis_mlflow.grid.condor.submit import memory_settings

    ms = memory_settings(CondorSpec(request_memory="16GB", memory_max="64GB", memory_multiplier=2))

    def job(starts: int, code: int | None, sub: int = 0, last: int | None = None) -> classad2.ClassAd:
        ad = classad2.ClassAd({"NumJobStarts": starts, "JobStatus": 5 if code is not None else 2})
        if code is not None:
            ad["HoldReasonCode"], ad["HoldReasonSubCode"] = code, sub
        if last is not None:
            ad["LastHoldReasonCode"], ad["LastHoldReasonSubCode"] = last, 0
        ad["RequestMemory"] = classad2.ExprTree(ms["request_memory"])
        ad["PeriodicRelease"] = classad2.ExprTree(ms["periodic_release"])
        return ad

    assert job(0, None).eval("RequestMemory") == 16384  # as asked, before any hold
    assert job(1, 34).eval("PeriodicRelease") is True and job(1, None, last=34).eval("RequestMemory") == 32768
    assert job(2, 34).eval("PeriodicRelease") is True and job(2, None, last=34).eval("RequestMemory") == 65536
    assert job(3, 34).eval("PeriodicRelease") is False  # at the cap: held for the user
    assert job(9, None, last=34).eval("RequestMemory") == 65536  # never above the cap
    assert job(1, 3, sub=34).eval("PeriodicRelease") is True  # newer pools: code 3, subcode 34
    assert job(1, 13).eval("PeriodicRelease") is False  # held for something else (a missing file): not released
    assert memory_settings(CondorSpec(request_memory="16GB", memory_max=None, memory_multiplier=2)) == {"request_memory": "16GB"}


EVENT_LOG = """\
000 (123.000.000) {day} 10:00:00 Job submitted from host: <127.0.0.1:9618>
    DAG Node: pack:0
...
012 (123.000.000) {day} 11:00:00 Job was held.
\tJob has gone over memory limit of 16384 megabytes.
\tCode 34 Subcode 0
...
013 (123.000.000) {day} 11:01:00 Job was released.
\tThe job attribute PeriodicRelease expression evaluated to TRUE
...
012 (123.000.000) {day} 12:00:00 Job was held.
\tJob has gone over memory limit of 65536 megabytes.
\tCode 34 Subcode 0
...
000 (124.000.000) {day} 10:00:00 Job submitted from host: <127.0.0.1:9618>
    DAG Node: pack:1
...
"""


def test_status_says_a_job_was_released_with_more_memory_and_is_held_past_its_limit(tmp_path):
    """From DAGMan's node status file and the jobs' event log: a pack held again at its memory cap
    two days ago is reported held longer than ``condor.held_limit_h`` (nothing will release it), and
    that it was released once with more memory; the idle pack is just queued."""
    import datetime

    day = (datetime.date.today() - datetime.timedelta(days=2)).isoformat()
    (tmp_path / "jobs.log").write_text(EVENT_LOG.format(day=day))
    condor_submit.write_cells_by_node(tmp_path, {"pack:0": ["a-s0", "a-s1"], "pack:1": ["b-s0"]})
    (tmp_path / condor.STATUS_FILE).write_text(NODE_STATUS)
    (tmp_path / condor.SETTINGS_FILE).write_text(json.dumps({"event_log": str(tmp_path / "jobs.log"), "held_limit_h": 24}))
    views = {cell: n.view() for cell, n in condor.cell_states(tmp_path).items()}
    held = views["a-s0"]
    assert held.phase == "held" and "longer than condor.held_limit_h = 24 h" in held.reason and "released 1x with more memory" in held.reason
    assert views["b-s0"].phase == "queued" and "released" not in views["b-s0"].reason
    (tmp_path / condor.SETTINGS_FILE).write_text(json.dumps({"event_log": str(tmp_path / "jobs.log"), "held_limit_h": 100}))
    assert "longer than" not in condor.cell_states(tmp_path)["a-s0"].view().reason


def test_a_pack_asks_its_scheduler_at_most_once_a_minute(tmp_path, monkeypatch):
    """Cells ending one after another inside a pack each refresh the parent's progress; the
    scheduler (squeue, sacct, DAGMan's files) is asked once for them within a minute, and again
    after it (plant: no cache -> asked per cell)."""
    from thesis_mlflow.grid.backends import Backend

    asked = []

    class Counting(Backend):
        def cell_views(self, folder):
            asked.append(folder)
            return {}, None

    b = Counting("slurm", "thesis_mlflow.grid.slurm", "slurm.job_dir")
    clock = [1000.0]
    monkeypatch.setattr(status, "_now", lambda: clock[0])
    monkeypatch.setattr(status, "_SCHEDULER_SEEN", {})
    for _ in range(5):  # five cells end within the minute
        status._scheduler_views(b, tmp_path, status.SCHEDULER_EVERY_S)
        clock[0] += 10
    assert len(asked) == 1
    clock[0] += 60
    status._scheduler_views(b, tmp_path, status.SCHEDULER_EVERY_S)
    assert len(asked) == 2
    status._scheduler_views(b, tmp_path, 0)  # `grid status` typed by a user: always fresh
    assert len(asked) == 3
