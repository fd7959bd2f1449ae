"""Several cells per GPU job: packs in the DAG, a retried pack trains only what is left, MPS plumbing."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.fault import kill_env
from thesis_mlflow.grid import mps, packing
from thesis_mlflow.grid.condor.submit import write_dag
from thesis_mlflow.grid.driver import run_pack
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.runs import ensure_children, find_or_create_parent

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "grids" / "binning_vs_direct.yaml"


def _grid_file(tmp_path, **condor):
    doc = yaml.safe_load(GRID.read_text())
    doc["condor"].update({"log_dir": str(tmp_path / "logs"), **condor})
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_dag_with_packs_covers_every_cell_once(tmp_path):
    p = _grid_file(tmp_path, cells_per_job=8)
    g = load_grid(p, "full", base_dir=ROOT)
    cells = g.cells()
    # whole configurations per pack (their 3 seeds stacked): 2 configurations = 6 cells fit in 8
    assert len(cells) == 108 and [len(x) for x in g.packs()] == [6] * 18
    configs = [{(c.tokenizer, c.pooling, c.met, c.vect) for c in pack} for pack in g.packs()]
    assert all(len(x) == 2 for x in configs) and len(set().union(*configs)) == 36  # no configuration split over two packs
    assert [len(x) for x in g.packs(cells[:4])] == [4]  # four configurations with one seed left each fill one pack
    assert [len(x) for x in load_grid(_grid_file(tmp_path, cells_per_job=2), "full", base_dir=ROOT).packs()] == [3] * 36  # at least one whole configuration
    run_ids = {c: f"{i:032x}" for i, c in enumerate(cells)}
    dag = write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag").read_text()
    nodes = re.findall(r"^JOB (pack\S*) ", dag, re.M)
    assert len(nodes) == 18 and not re.search(r"^JOB train", dag, re.M)
    assert len(re.findall(r"^RETRY pack\S* 3", dag, re.M)) == 18
    runs = [v for v in re.findall(r'runs="([^"]*)"', dag)]
    pairs = [x.split("=") for r in runs for x in r.split(",")]
    assert sorted(rid for _, rid in pairs) == sorted(run_ids.values())  # each cell in exactly one pack
    assert {name for name, _ in pairs} == {c.name for c in cells}
    by_node = json.loads((tmp_path / "dag" / "nodes.json").read_text())  # read back by `grid status` (condor)
    assert sorted(by_node) == sorted(nodes) and all(by_node[n] == [x.split("=")[0] for x in r.split(",")] for n, r in zip(nodes, runs, strict=True))
    sub = next((tmp_path / "dag").glob("pack*.sub")).read_text()
    assert "-m steps.grid pack" in sub and "--runs $(runs)" in sub and "--scale full" in sub
    assert "MLFLOW_RUN_ID" not in sub  # each cell's run id travels in --runs, not the job's environment
    assert "TORCHINDUCTOR_CACHE_DIR=" in sub and "TORCHINDUCTOR_FX_GRAPH_CACHE=1" in sub  # one compile cache for every job


def test_compile_is_paid_once_per_configuration(tmp_path, recompile_limit):
    """The recompile limit fits the configurations a process builds (36 in the local GPU
    backend's one process; torch's default of 8 would leave 28 uncompiled while their runs say
    ``compiled``), never lowered; the Inductor cache folder is private (a cached kernel is code)."""
    from thesis_mlflow.learn.training import raise_recompile_limit

    assert raise_recompile_limit(36) >= 72 and recompile_limit() >= 72
    assert raise_recompile_limit(1) == recompile_limit() >= 72  # not lowered by a later, smaller pack
    env = packing.compile_cache_env(tmp_path / "cache")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache") and env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_cells_per_job_is_validated(tmp_path):
    with pytest.raises(ValueError, match="cells_per_job must be an integer >= 1"):
        load_grid(_grid_file(tmp_path, cells_per_job=0), "demo")


def _pack(tmp_path, tiny_raw, name: str, poolings: list[str], max_train_events: int, seeds=(0,), epochs: int = 2):
    """A tiny grid (direct tokens, the given poolings) whose cells form one pack, with its parent
    and child runs made: (grid file, experiment id, {cell: run}, the pack's --runs value)."""
    doc = {"name": name, "data": str(tiny_raw), "factors": {"tokenizer": ["direct"], "pooling": poolings, "met": [True], "vect": [4]},
           "scales": {"demo": {"seeds": list(seeds), "train": {"epochs": epochs, "batch_size": 128, "lr": 3e-3, "warmup_steps": 5, "d_model": 16,
                                                       "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_train_events": max_train_events,
                                                       "max_eval_events": 200}}},
           "condor": {"cells_per_job": len(poolings) * len(seeds)}}
    gfile = tmp_path / f"{name}.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    g = load_grid(gfile, "demo", base_dir=ROOT)
    exp = mlflow.MlflowClient().get_experiment_by_name("test-exp").experiment_id
    children = ensure_children(g, find_or_create_parent(g, exp), exp)
    return gfile, exp, children, ",".join(f"{c.name}={r.info.run_id}" for c, r in children.items())


def test_retried_pack_trains_only_what_is_left(mlflow_env, tiny_raw, tmp_path, monkeypatch):
    gfile, exp, children, runs = _pack(tmp_path, tiny_raw, "pk", ["mean", "max", "cls"], max_train_events=400)
    # the pack job is evicted (SIGKILL) in its second cell, right after that cell's first epoch
    env = {**kill_env(1, "direct-max-met-4v-s0"), "MLFLOW_EXPERIMENT_ID": exp}
    cmd = [sys.executable, "-m", "steps.grid", "pack", str(gfile), "--scale", "demo", "--runs", runs]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stderr[-2000:]
    assert "pack of 3 cells: 0 finished, 3 to train (one after another)" in first.stdout
    lines = []
    run_pack(str(gfile), "demo", runs, echo=lines.append)  # the retried node: the killed cell resumes, the third starts
    assert "pack of 3 cells: 1 finished, 2 to train (one after another)" in lines
    assert [ln.split()[0] for ln in lines[1:-1]] == ["direct-max-met-4v-s0", "direct-cls-met-4v-s0"]
    assert lines[-1] == "thesis-mlflow: DONE: all 3 cells of the pack finished"  # what a SLURM job's log says when SLURM forgets it
    c = mlflow.MlflowClient()
    for r in children.values():
        run = c.get_run(r.info.run_id)
        assert run.info.status == "FINISHED" and "test_auc" in run.data.metrics
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]  # resumed: each epoch once
    lines.clear()
    run_pack(str(gfile), "demo", runs, echo=lines.append)  # a third start: nothing to do
    assert lines == ["pack of 3 cells: 3 finished, 0 to train", "thesis-mlflow: DONE: all 3 cells of the pack finished"]
    with pytest.raises(ValueError, match=r"unknown or malformed: \['nope'\]"):
        run_pack(str(gfile), "demo", "nope=123", echo=lines.append)


def test_a_stacked_pack_gives_each_seed_its_own_run_and_the_numbers_of_alone(mlflow_env, tiny_raw, tmp_path):
    """``grid pack --stack-seeds on``: the three seeds of a configuration train as one stacked
    model, and each seed still has its own child run with its epochs, checkpoint, log and test
    metrics, equal (1e-5) to the same seed trained alone (a second grid, stacking off: a run's
    stream is its configuration and seed, not its grid)."""
    c = mlflow.MlflowClient()
    aucs = {}
    for name, how in (("stk", "on"), ("alone", "off")):
        gfile, exp, children, runs = _pack(tmp_path, tiny_raw, name, ["max"], max_train_events=300, seeds=(0, 1, 2))
        lines = []
        run_pack(str(gfile), "demo", runs, echo=lines.append, stack_seeds=how)
        stacked = "seeds of a configuration stacked, " if how == "on" else ""
        assert lines[0] == f"pack of 3 cells: 0 finished, 3 to train ({stacked}one after another)"
        for cell, r in children.items():
            run = c.get_run(r.info.run_id)
            assert run.info.status == "FINISHED" and run.data.tags["step_mode.used"] == ("stacked" if how == "on" else "eager")
            assert [m.step for m in c.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]
            assert run.data.params["seed"] == str(cell.seed)
            aucs[name, cell.seed] = run.data.metrics["test_auc"]
            if how == "on":
                log_text = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="logs/train.log")).read_text()
                assert "epoch 2/2" in log_text and "(stacked)" in log_text  # its own epochs, in its own log
                assert {a.path for a in c.list_artifacts(r.info.run_id, "checkpoints")} == {"checkpoints/last.pt"}
    for seed in (0, 1, 2):
        assert abs(aucs["stk", seed] - aucs["alone", seed]) < 1e-5, seed
    assert len({round(aucs["stk", s], 6) for s in (0, 1, 2)}) == 3  # three replicates, not one


def test_sigterm_stops_a_stacked_pack_within_seconds(mlflow_env, tiny_raw, tmp_path):
    """Condor evicting a pack (SIGTERM) whose cells train in threads: every cell stops at its next
    step, ends KILLED with its last checkpoint, and the process exits in seconds, not when the
    cells would have finished (plant: no stop request to the training threads -> the pack runs
    on for its 40 epochs and the wait times out)."""
    gfile, exp, children, runs = _pack(tmp_path, tiny_raw, "sig", ["max"], max_train_events=300, seeds=(0, 1, 2), epochs=40)
    env = {**os.environ, "MLFLOW_EXPERIMENT_ID": exp}
    cmd = [sys.executable, "-m", "steps.grid", "pack", str(gfile), "--scale", "demo", "--runs", runs, "--stack-seeds", "on"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c = mlflow.MlflowClient()
    ids = [r.info.run_id for r in children.values()]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(c.get_metric_history(i, "val_auc") for i in ids):
        time.sleep(0.5)
    assert p.poll() is None, p.stdout.read()[-2000:]
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=60)[0]
    assert time.monotonic() - t0 < 30, out[-2000:]
    assert p.returncode != 0
    for i in ids:
        run = c.get_run(i)
        assert run.info.status == "KILLED", (run.info.status, out[-2000:])
        assert "test_auc" not in run.data.metrics and 1 <= len(c.get_metric_history(i, "val_auc")) < 40
        assert {a.path for a in c.list_artifacts(i, "checkpoints")} == {"checkpoints/last.pt"}


def test_a_failing_cell_fails_the_pack_not_its_neighbours(mlflow_env, tiny_raw, tmp_path, monkeypatch):
    """One cell of a pack raises (a bug, here planted after its first epoch): the other cell of the
    same process still trains to the end, the failed one is FAILED with its error tags and log,
    and ``grid pack`` exits 1 with one line naming it, so DAGMan's RETRY runs the node again."""
    from click.testing import CliRunner

    from steps.cli import main
    from tests.fault import install

    gfile, exp, children, runs = _pack(tmp_path, tiny_raw, "pf", ["mean", "max"], max_train_events=300)
    install(1, "direct-mean-met-4v-s0", how="raise", patch=monkeypatch)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    res = CliRunner().invoke(main, ["grid", "pack", str(gfile), "--scale", "demo", "--runs", runs])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1] == "Error: 1 of 2 cells not finished: direct-mean-met-4v-s0 (a retry resumes them)"
    c = mlflow.MlflowClient()
    by = {cell.name: c.get_run(r.info.run_id) for cell, r in children.items()}
    ok, bad = by["direct-max-met-4v-s0"], by["direct-mean-met-4v-s0"]
    assert ok.info.status == "FINISHED" and "test_auc" in ok.data.metrics
    assert bad.info.status == "FAILED" and "test_auc" not in bad.data.metrics
    assert bad.data.tags["error.class"] == "PlantedFailure" and bad.data.tags["error.message"] == "planted failure after epoch 1"
    # no driver watches a Condor pack: the cells themselves keep the parent's progress current
    parent = c.get_run(ok.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["cells_finished"] == 1 and parent.data.metrics["cells_failed"] == 1
    assert "1 finished" in parent.data.tags["mlflow.note.content"] and "PlantedFailure" in parent.data.tags["mlflow.note.content"]
    log_text = Path(mlflow.artifacts.download_artifacts(run_id=bad.info.run_id, artifact_path="logs/train.log")).read_text()
    assert "Traceback" in log_text and "PlantedFailure: planted failure after epoch 1" in log_text


def test_thread_budget_is_split(monkeypatch):
    """Known budgets: a Condor slot's OMP_NUM_THREADS bounds the cores, split over the packed
    processes, Inductor's compile workers included, never below one thread."""
    monkeypatch.setattr(packing.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the slot's 8 of the node's 16 cores
    assert packing.cpu_budget() == 8
    env = packing.thread_env(4)
    assert {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")} == {
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "TORCHINDUCTOR_COMPILE_THREADS": "2"}
    assert packing.thread_env(1)["OMP_NUM_THREADS"] == "8"
    assert packing.thread_env(64)["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert packing.cpu_budget() == 16 and packing.thread_env(3)["OMP_NUM_THREADS"] == "5"


def _fake_bin(d: Path, name: str, body: str) -> None:
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _fake_gpu_node(tmp_path, monkeypatch, mps_record: str) -> Path:
    """Stand-ins for nvidia-smi (one GPU) and the MPS control binary, which appends ``mps_record``
    (shell words) to the returned calls file at each call."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA H200 (UUID: GPU-x)"\n')
    _fake_bin(bin_dir, "nvidia-cuda-mps-control", f'echo "{mps_record}" >> {calls}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return calls


def test_mps_daemon_started_and_stopped(tmp_path, monkeypatch):
    """The plumbing of a private MPS daemon, with stand-ins for nvidia-smi and the control binary."""
    calls = _fake_gpu_node(tmp_path, monkeypatch, "$@ pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat 2>/dev/null | head -1)")
    monkeypatch.setattr(mps, "MPS_PROBE", ["true"])  # a CUDA client that got through
    assert packing.gpu_count() == 1
    with mps.shared_gpu("auto", 4) as env:
        pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert Path(pipe).is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    assert not Path(pipe).exists()  # removed afterwards
    started, stopped = calls.read_text().splitlines()
    assert started.startswith(f"-d pipe={pipe}") and stopped == f" pipe={pipe} stdin=quit"
    with mps.shared_gpu("auto", 1) as env:  # one process: nothing to share
        assert env == {}


def test_mps_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither nvidia-smi nor the MPS control binary
    with mps.shared_gpu("auto", 8) as env:
        assert env == {}
    with pytest.raises(RuntimeError, match="nvidia-cuda-mps-control is not on the PATH"), mps.shared_gpu("on", 8):
        pass
    with pytest.raises(ValueError, match="mps must be one of auto, on, off"), mps.shared_gpu("sometimes", 8):
        pass


def test_job_ads_carry_no_secrets(tmp_path, monkeypatch):
    """Condor copies getenv variables into job ads any user can read: only an allow-list goes."""
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    p = _grid_file(tmp_path, cells_per_job=8, getenv=True)
    g = load_grid(p, "demo", base_dir=ROOT)
    run_ids = {c: f"{i:032x}" for i, c in enumerate(g.cells())}
    write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag")
    subs = "\n".join(f.read_text() for f in (tmp_path / "dag").glob("*.sub"))
    assert "hunter2" not in subs and "getenv = PATH, LD_LIBRARY_PATH" in subs and "PASSWORD" not in subs
    with pytest.raises(ValueError, match="holds a login"):
        write_dag(g, run_ids, "http://admin:pw@login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag2")
    for bad in (["PATH", "MLFLOW_TRACKING_PASSWORD"], ["*"]):
        with pytest.raises(ValueError, match="job ads that every user can read"):
            write_dag(load_grid(_grid_file(tmp_path, getenv=bad), "demo", base_dir=ROOT), run_ids, "http://login01:5000", "7", ROOT, p,
                      out_dir=tmp_path / "dag3")
    assert not (tmp_path / "dag2").exists() and not (tmp_path / "dag3").exists()


def test_a_daemon_no_cuda_client_can_use_is_not_used(tmp_path, monkeypatch):
    """The control daemon starts, but a real client fails (a broken MPS setup): no MPS, and the daemon is stopped."""
    calls = _fake_gpu_node(tmp_path, monkeypatch, "$@ stdin=$(cat 2>/dev/null | head -1)")
    monkeypatch.setattr(mps, "MPS_PROBE", [sys.executable, "-c", "raise SystemExit('all CUDA-capable devices are busy')"])
    with mps.shared_gpu("auto", 8) as env:
        assert env == {}
    assert calls.read_text().splitlines() == ["-d stdin=", " stdin=quit"]
    with pytest.raises(RuntimeError, match="could not use the MPS daemon"), mps.shared_gpu("on", 8):
        pass


def test_pack_resources_scale_with_cells_per_job(tmp_path):
    doc = yaml.safe_load(GRID.read_text())
    for k in ("request_cpus", "request_memory"):
        doc["condor"].pop(k)
    doc["condor"]["cells_per_job"] = 6
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(doc))
    c = load_grid(p, "full", base_dir=ROOT).condor
    assert c.request_cpus == 6 and c.request_memory == "24GB"
    doc["condor"]["request_cpus"] = 3  # what the user sets stays
    p.write_text(yaml.safe_dump(doc))
    assert load_grid(p, "full", base_dir=ROOT).condor.request_cpus == 3


@pytest.mark.slow  # starts processes: not in the quick loop (test-fast)
def test_a_signalled_pack_stops_its_children(tmp_path):
    """SIGTERM to the process running cells (Condor removing the job) stops the children too."""
    code = f"""
import sys, time
from pathlib import Path
from thesis_mlflow.grid import processes, signals
jobs = [processes.ChildProcess(f"c{{i}}", [sys.executable, "-c", "import time; time.sleep(120)"], {{}}, Path({str(tmp_path)!r}) / f"c{{i}}.log", Path("."))
        for i in range(2)]
killed = []
try:
    with signals.signals_as_interrupt():
        processes.run_processes(jobs, 2, lambda *a: None, on_interrupt=lambda j: killed.append(j.pid))
except KeyboardInterrupt:
    Path({str(tmp_path / "killed")!r}).write_text(" ".join(map(str, killed)))
"""
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    time.sleep(4)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0
    pids = [int(x) for x in (tmp_path / "killed").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_job_that_asked_for_a_gpu_trains_on_it_or_fails_at_once(tmp_path, mlflow_env):
    """The DAG of a grid whose jobs request GPUs runs packs and single cells with --device cuda;
    such a pack on a node where CUDA is not visible fails at once, naming what it found, before
    any cell is touched (not days of training on the CPU). Without GPUs requested: no flag."""
    import torch

    p = _grid_file(tmp_path, cells_per_job=8)
    g = load_grid(p, "full", base_dir=ROOT)
    run_ids = {c: f"{i:032x}" for i, c in enumerate(g.cells())}
    write_dag(g, run_ids, "http://login01:5000", "7", ROOT, p, out_dir=tmp_path / "dag")
    sub = next((tmp_path / "dag").glob("pack*.sub")).read_text()
    assert "--runs $(runs) --stack-seeds auto --device cuda" in sub
    p1 = _grid_file(tmp_path, cells_per_job=1)
    write_dag(load_grid(p1, "full", base_dir=ROOT), run_ids, "http://login01:5000", "7", ROOT, p1, out_dir=tmp_path / "dag1")
    assert all("--device cuda" in a for a in re.findall(r'args="([^"]*)"', (tmp_path / "dag1" / "binning_vs_direct.dag").read_text()))
    p0 = _grid_file(tmp_path, cells_per_job=8, request_gpus=0)
    write_dag(load_grid(p0, "full", base_dir=ROOT), run_ids, "http://login01:5000", "7", ROOT, p0, out_dir=tmp_path / "dag0")
    assert "--device" not in next((tmp_path / "dag0").glob("pack*.sub")).read_text()
    if torch.cuda.is_available():
        pytest.skip("CUDA is visible here: the refusal is for nodes without it")
    from thesis_mlflow.errors import Unavailable

    with pytest.raises(Unavailable, match=r"asked for a GPU \(--device cuda\) but none is visible here: torch .* 0 device\(s\); nothing was trained"):
        run_pack(str(p), "full", "nope=1", device="cuda")


def test_a_slurm_warning_during_set_up_requeues_without_training(mlflow_env, tiny_raw, tmp_path, monkeypatch):
    """SLURM's time-limit warning arrived while the pack job was still importing (noted by
    ``injob.watch_time_limit``): the pack trains nothing and asks for its requeue; at its cap of
    requeues it gives up with one line saying the limit is too short for one epoch.
    (Plant: the early warning not read -> the pack trains its cells.)"""
    import signal

    from thesis_mlflow.errors import StepFailed
    from thesis_mlflow.grid.slurm import commands, injob

    gfile, exp, children, runs = _pack(tmp_path, tiny_raw, "early", ["max"], max_train_events=300)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    asked = []
    monkeypatch.setattr(commands, "run", lambda cmd, check=True: asked.append(cmd))
    monkeypatch.setattr(injob.EARLY, "signum", signal.SIGUSR1)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    before = signal.getsignal(signal.SIGTERM)
    try:
        lines = []
        assert run_pack(str(gfile), "demo", runs, echo=lines.append, slurm_requeues=3) == {"direct-max-met-4v-s0": "REQUEUED"}
        assert asked == [["scontrol", "requeue", "77"]] and any("while the pack was setting up" in ln for ln in lines)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
        with pytest.raises(StepFailed, match="too short for one epoch"):
            run_pack(str(gfile), "demo", runs, echo=lines.append, slurm_requeues=3)
    finally:
        signal.signal(signal.SIGTERM, before)
    rid = next(iter(children.values())).info.run_id
    assert not mlflow.MlflowClient().get_metric_history(rid, "val_auc")  # nothing trained
