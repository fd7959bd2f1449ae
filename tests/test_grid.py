"""The grid: expansion, the Condor DAG and submit files, and a real local run against a real server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner

from steps.cli import main
from tests import condorsyntax
from tests.fault import ENV, kill_env
from thesis_mlflow.grid.condor.submit import write_dag
from thesis_mlflow.grid.driver import run_grid, train_command
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.status import grid_status
from thesis_mlflow.server import devdb
from thesis_mlflow.server import process as server

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "grids" / "binning_vs_direct.yaml"


def test_expansion_counts_and_names(tmp_path):
    demo = load_grid(GRID, "demo")
    full = load_grid(GRID, "full")
    assert len(demo.cells()) == 36 and len(full.cells()) == 36 * len(full.seeds) == 108
    names = [c.name for c in demo.cells()]
    assert len(set(names)) == 36
    assert all(re.fullmatch(r"(direct|binned|vqvae)-(cls|mean|max)-(met|nomet)-[45]v-s0", n) for n in names)
    assert "binned-max-met-4v-s0" in names
    c = next(c for c in demo.cells() if c.name == "binned-max-met-4v-s0")
    assert c.tag == "tokenizer=binned,pooling=max,met=true,vect=4,seed=0"
    assert demo.run_name == "binning_vs_direct-demo" and full.run_name == "binning_vs_direct"
    # demo and full are selections of the same file: same factors, different training settings
    assert demo.factors == full.factors and demo.train != full.train
    doc = yaml.safe_load(GRID.read_text())
    doc["binned_ambre_path"] = {4: "/x/a4.h5", 5: "/x/a5.h5"}
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    g = load_grid(p, "demo")
    assert len(g.cells()) == 48
    amb = [c for c in g.cells() if c.tokenizer == "binned_ambre"]
    assert len(amb) == 12 and all(g.train_args(c)[-2:] == ["--binned-path", f"/x/a{c.vect}.h5"] for c in amb)
    doc["binned_ambre_path"] = "/x/a4.h5"  # one path: the 4-vector file only
    p.write_text(yaml.safe_dump(doc))
    assert len(load_grid(p, "demo").cells()) == 42


@pytest.mark.parametrize("patch, msg", [
    ({"factors": {"pooling": ["sum"]}}, "factors.pooling has level 'sum'"),
    ({"bogus": 1}, "unknown keys \\['bogus'\\]"),
    ({"task": "x"}, "task must be one of"),
    ({"condor": {"request_gpu": 1}}, "condor: unknown keys"),
])
def test_bad_grid_files(tmp_path, patch, msg):
    doc = yaml.safe_load(GRID.read_text())
    doc.update(patch)
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=msg):
        load_grid(p, "demo")
    with pytest.raises(ValueError, match="scale 'huge' not defined"):
        load_grid(GRID, "huge")


def _parse_sub(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_dag_and_submit_files_read_back(tmp_path):
    doc = yaml.safe_load(GRID.read_text())
    doc["condor"].update({"request_gpus": 2, "request_cpus": 8, "request_memory": "32GB", "job_category": "medium", "use_os": "el8",
                          "getenv": False, "log_dir": str(tmp_path / "logs"), "initialdir": str(tmp_path), "retries": 5,
                          "cells_per_job": 1})  # one node per cell (packs: test_packing.py)
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    g = load_grid(p, "demo", base_dir=ROOT)
    cells = g.cells()
    run_ids = {c: f"{i:032x}" for i, c in enumerate(cells)}
    dag = write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag")
    text = dag.read_text()
    # nodes: prepare, 36 train nodes with retries, a FINAL report node
    assert re.search(r"^JOB prepare\S* ", text, re.M) and re.search(r"^FINAL report", text, re.M)
    train_nodes = re.findall(r"^JOB (train\S*) ", text, re.M)
    assert len(train_nodes) == 36
    assert len(re.findall(r"^RETRY train\S* 5", text, re.M)) == 36
    assert re.search(r"^PARENT prepare\S* CHILD", text, re.M)
    vars_ = {}
    for node, body in re.findall(r"^VARS (\S+) (.*)$", text, re.M):
        vars_[node] = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body))
    from_dag = {(v["tokenizer"], v["pooling"], v["met"], v["vect"], v["seed"], v["run_id"]) for n, v in vars_.items() if n.startswith("train")}
    expected = {(c.tokenizer, c.pooling, str(c.met).lower(), str(c.vect), str(c.seed), run_ids[c]) for c in cells}
    assert from_dag == expected
    # DAGMan keeps a node status file, and each node's cells are recorded for `grid status`
    assert re.search(rf"^NODE_STATUS_FILE {re.escape(str(tmp_path / 'dag' / 'nodes.status'))} 60$", text, re.M)
    by_node = json.loads((tmp_path / "dag" / "nodes.json").read_text())
    assert sorted(by_node) == sorted(train_nodes) and all(by_node[n] == [vars_[n]["cell"]] for n in train_nodes)
    # the train submit description carries the configured keys and the job's environment
    subs = {f.name: _parse_sub(f.read_text()) for f in (tmp_path / "dag").glob("*.sub")}
    train_sub = next(v for k, v in subs.items() if k.startswith("train"))
    assert train_sub["request_gpus"] == "2" and train_sub["request_cpus"] == "8"
    # 32 GB asked for; held for exceeding it, released with twice as much per start up to the shipped grid's 64 GB
    assert train_sub["request_memory"].endswith("min({int(32768 * pow(2, NumJobStarts)), 65536}), 32768)")
    assert "HoldReasonCode =?= 34" in train_sub["periodic_release"]
    # "+JobCategory" is written in its canonical spelling "MY.JobCategory" by the bindings
    assert train_sub["MY.JobCategory"] == '"medium"' and train_sub["MY.UseOS"] == '"el8"' and train_sub["getenv"] == "False"
    assert train_sub["initialdir"] == str(tmp_path) and train_sub["output"].startswith(str(tmp_path / "logs"))
    assert "MLFLOW_RUN_ID=$(run_id)" in train_sub["environment"] and "MLFLOW_TRACKING_URI=http://login01:5000" in train_sub["environment"]
    assert train_sub["arguments"] == '"-m steps.train $(args)"'  # HTCondor's new syntax (quoted words)
    # a node's arguments are exactly the local backend's command for the same cell
    c0 = cells[0]
    node = next(v for v in vars_.values() if v.get("run_id") == run_ids[c0])
    # the local backend's command, with --device cuda: the job asked for GPUs, so it trains on one or fails at once
    assert train_command(c0.replace(device="cuda"))[1:] == ["-m", "steps.train", *condorsyntax.words(f'"{node["args"]}"')]
    assert any(k.startswith("report") for k in subs) and any(k.startswith("prepare") for k in subs)


def test_condor_dry_run_prints_files(mlflow_env, tmp_path):
    res = CliRunner().invoke(main, ["grid", "run", str(GRID), "--backend", "condor", "--scale", "demo", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "DAG written" in res.output and "JOB prepare" in res.output and "request_gpus = 1" in res.output
    assert mlflow.search_runs(experiment_names=["test-exp"], output_format="list") == []  # a dry run creates no runs


@pytest.fixture()
def live_server(request, tmp_path, monkeypatch):
    """A real server with its login on a throwaway PostgreSQL (the cluster's store); the jobs
    authenticate through this test's ~/.mlflow/credentials. (A grid against a real server on
    SQLite runs in tests/test_leases.py, two at once; the kill-and-resume here ran on both stores
    until 2026-12-01, ~57 s of the suite, and never differed between them.)"""
    pg = devdb.start()
    request.addfinalizer(lambda: pg and pg.stop())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    srv = server.start(tmp_path / "srv", backend_store_uri=pg.uri if pg else None)
    server.install_client_credentials(tmp_path / "srv", tmp_path / "home")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "grid-test")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(srv.uri)
    yield srv, pg
    srv.stop()


def test_local_grid_against_real_server_resumes(live_server, tiny_raw, tmp_path, monkeypatch):
    doc = {
        "name": "tiny", "data": str(tiny_raw),
        "factors": {"tokenizer": ["direct", "binned"], "pooling": ["mean"], "met": [True], "vect": [4, 5]},
        "scales": {"demo": {"seeds": [0], "train": {"epochs": 2, "batch_size": 128, "lr": 3e-3, "warmup_steps": 5, "d_model": 16,
                                                    "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_train_events": 500, "max_eval_events": 200}}},
    }
    gfile = tmp_path / "tiny.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    # first pass: one cell is killed (SIGKILL) after its first epoch
    for k, v in kill_env(1, "binned-mean-met-5v-s0").items():
        monkeypatch.setenv(k, v)
    lines = []
    s1 = run_grid(str(gfile), "local", "demo", 2, False, echo=lines.append)
    assert sorted(s1.launched) == sorted(["direct-mean-met-4v-s0", "direct-mean-met-5v-s0", "binned-mean-met-4v-s0", "binned-mean-met-5v-s0"])
    assert s1.status["binned-mean-met-5v-s0"] == "FAILED" and s1.n_finished == 3
    monkeypatch.delenv(ENV["epoch"])
    # second pass: only the failed cell runs again, on its own run id, resuming from epoch 1
    s2 = run_grid(str(gfile), "local", "demo", 2, False, echo=lines.append)
    assert s2.launched == ["binned-mean-met-5v-s0"] and s2.n_finished == 4
    # third pass: nothing to do
    s3 = run_grid(str(gfile), "local", "demo", 2, False, echo=lines.append)
    assert s3.launched == []
    runs = mlflow.search_runs(experiment_names=["grid-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("step") == "grid"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = mlflow.search_runs(experiment_names=["grid-test"], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
                                  output_format="list")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["grid.name"] for r in children} == {"tiny-demo"}
    c = mlflow.MlflowClient()
    for r in children:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]
    assert len([r for r in runs if r.data.tags.get("step") == "binning"]) == 2  # prepared once per vect
    st = grid_status(str(gfile), "demo")
    assert all(c.state == "finished" and (c.epoch, c.epochs) == (2, 2) for c in st.cells) and st.exit_code == 0
    assert grid_status("tiny-demo").cells == st.cells  # by name, as the UI and the report know it
    # the parent shows the progress: counts per cell done, and the status as its description
    parent = parents[0]
    hist = sorted(c.get_metric_history(parent.info.run_id, "cells_finished"), key=lambda m: (m.timestamp, m.step))
    assert hist[-1].value == 4, [(m.step, m.value) for m in hist]
    assert "4 finished" in parent.data.tags["mlflow.note.content"]
    assert any("[1/1] binned-mean-met-5v-s0" in ln for ln in lines)
    _, pg = live_server
    if pg is not None:  # the store really is PostgreSQL: the rows are there
        out = subprocess.run(["psql", pg.uri, "-tAc", "select count(*) from runs"], capture_output=True, text=True)
        assert int(out.stdout.strip()) == len(runs)


def test_condor_run_creates_runs_and_prints_submit_command(mlflow_env, tiny_raw, tmp_path):
    doc = {"name": "cdr", "data": str(tiny_raw), "factors": {"tokenizer": ["direct"], "pooling": ["mean", "max"], "met": [True], "vect": [4]},
           "scales": {"full": {"seeds": [0, 1]}}, "condor": {"dag_dir": str(tmp_path / "dag"), "log_dir": str(tmp_path / "logs")}}
    gfile = tmp_path / "cdr.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    lines = []
    s = run_grid(str(gfile), "condor", "full", 1, False, echo=lines.append)
    assert len(s.launched) == 4
    text = "\n".join(lines)
    assert "condor_submit_dag -batch-name cdr cdr.dag" in text  # no schedd here: the exact command to run
    children = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'train'", output_format="list")
    assert len(children) == 4 and {r.info.status for r in children} == {"SCHEDULED"}
    # created side by side, listed as the grid file orders the cells (the UI sorts by start time)
    by_start = [r.info.run_name for r in sorted(children, key=lambda r: r.info.start_time)]
    assert by_start == [c.name for c in load_grid(str(gfile)).cells()]
    starts = sorted(r.info.start_time for r in children)
    assert starts == list(range(starts[0], starts[0] + 4))  # by construction, not by which thread came first
    assert all(r.data.params["pooling"] in ("mean", "max") for r in children)  # each its own factors
    assert {r.data.params["pooling"] for r in children} == {"mean", "max"}
    dag = (tmp_path / "dag" / "cdr" / "cdr.dag").read_text()
    assert {r.info.run_id for r in children} == set(re.findall(r'run_id="(\w+)"', dag))
    # submitting again creates no second set of runs
    run_grid(str(gfile), "condor", "full", 1, False, echo=lines.append)
    assert len(mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'train'", output_format="list")) == 4
    assert [x.state for x in grid_status(str(gfile), "full").cells] == ["not started"] * 4


def test_condor_files_are_private_and_a_folder_others_can_write_is_refused(tmp_path):
    """DAGMan re-reads submit files at each retry: one a groupmate could edit would run code as
    the user. The DAG folder is 0700, every file 0600; a group-writable folder is refused before
    anything is written, naming it."""
    import stat

    from thesis_mlflow.errors import UserError

    doc = yaml.safe_load(GRID.read_text())
    doc["condor"].update({"getenv": False, "log_dir": str(tmp_path / "logs"), "initialdir": str(tmp_path), "cells_per_job": 1})
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    g = load_grid(p, "demo", base_dir=ROOT)
    run_ids = {c: f"{i:032x}" for i, c in enumerate(g.cells())}
    dag = write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag")
    assert stat.S_IMODE((tmp_path / "dag").stat().st_mode) == 0o700
    files = [f for f in (tmp_path / "dag").rglob("*") if f.is_file()]
    assert dag in files and any(f.suffix == ".sub" for f in files)
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}, {f.name: oct(f.stat().st_mode) for f in files}
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)  # a project area the group can write
    with pytest.raises(UserError, match="writable by group or others.*DAG folder"):
        write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=shared)
    assert list(shared.iterdir()) == []


def test_a_cell_that_fails_before_training_is_failed_where_the_user_looks(mlflow_env, tiny_raw, tmp_path):
    """A colleague file that is not HDF5: the binned_ambre cells fail while their inputs are built,
    before training. Their child runs exist, so the failure is recorded there (FAILED,
    error.class, the message and the log), and `grid status` counts them as failed and exits 1.
    Plant: inputs built outside the run, failure not recorded -> the runs stay unstarted and
    status says "not started" with exit 0."""
    bad = tmp_path / "colleague.h5"
    bad.write_text("not an HDF5 file\n")
    doc = {"name": "holes", "data": str(tiny_raw), "binned_ambre_path": str(bad),
           "factors": {"tokenizer": ["direct"], "pooling": ["max"], "met": [True], "vect": [4]},
           "scales": {"demo": {"seeds": [0], "train": {"epochs": 1, "batch_size": 128, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                                       "d_ff": 32, "max_train_events": 300, "max_eval_events": 100}}}}
    gfile = tmp_path / "holes.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    run_grid(str(gfile), "local", "demo", 1, False, echo=lambda *_: None)
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'train'",
                                                          output_format="list")}
    ambre = [r for n, r in runs.items() if n.startswith("binned_ambre")]
    assert ambre and runs["direct-max-met-4v-s0"].info.status == "FINISHED"
    for r in ambre:
        assert r.info.status == "FAILED", r.info.status
        assert r.data.tags["error.class"] == "DataFormatError" and str(bad.name) in r.data.tags["error.message"]
        log = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="logs/train.log", dst_path=str(tmp_path / r.info.run_id))
        assert "Traceback" in Path(log).read_text()
    st = grid_status(str(gfile), "demo")
    assert st.counts()["failed"] == len(ambre) and st.exit_code == 1
    # the grid's parent records the code that drove it (provenance, like every step's run)
    from thesis_mlflow.tracking import provenance

    (parent,) = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'grid'", output_format="list")
    assert parent.data.tags["mlflow.source.name"] == "thesis-mlflow grid"
    assert parent.data.tags.get("mlflow.source.git.commit") == provenance.code_state().commit and "env.python" in parent.data.tags
    # and what the grid is (its params; `grid status` reads the file and scale back from them)
    p = parent.data.params
    assert {k: p.get(k) for k in ("grid_file", "scale_name", "n_cells", "seeds")} == {"grid_file": str(gfile), "scale_name": "demo",
                                                                                      "n_cells": str(len(runs)), "seeds": "0"}
    assert "binned_ambre" in p["tokenizers"].split(",") and "direct" in p["tokenizers"].split(",")


def test_the_local_backends_settings_are_checked_before_anything_starts(tmp_path):
    """``LocalSpec`` refuses a worker count below one or an unknown MPS mode, naming it; ``run_grid``
    checks them before any run or process (plants: no check -> the grid would start)."""
    from thesis_mlflow.errors import BadSetting
    from thesis_mlflow.grid.local import LocalSpec

    assert LocalSpec(2, "off") == LocalSpec(jobs=2, mps="off")
    for bad, what in (({"jobs": 0}, "jobs must be a whole number >= 1; got 0"), ({"jobs": True}, "jobs must be"),
                      ({"mps": "yes"}, "mps must be one of auto, on, off; got 'yes'")):
        with pytest.raises(BadSetting, match=what):
            LocalSpec(**bad)
    with pytest.raises(BadSetting, match="jobs must be"):
        run_grid(str(tmp_path / "absent.yaml"), "local", "demo", 0, False)
