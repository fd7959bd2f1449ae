"""Shared-cluster safety that needs no server: job ads, artifacts that could run code,
telemetry, and when a cell counts as done."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from thesis_mlflow.grid import jobenv as grid
from thesis_mlflow.learn import safeload
from thesis_mlflow.tracking import done  # the rule of a finished cell

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- Condor getenv


@pytest.mark.parametrize("pattern", ["MLFLOW_*", "AWS_*", "M*", "*_PASSWORD", "PG*", "*"])
def test_getenv_wildcards_that_could_match_a_secret_are_refused(pattern):
    with pytest.raises(ValueError, match="job ads that every user can read"):
        grid.getenv_value(["PATH", pattern], environ={"PATH": "/bin"})


def test_getenv_wildcards_are_expanded_to_the_names_checked_now():
    env = {"PATH": "/bin", "CONDA_PREFIX": "/c", "CONDA_DEFAULT_ENV": "thesis", "LC_ALL": "C", "MY_API_TOKEN": "x"}
    assert grid.getenv_value(["PATH", "CONDA_*"], environ=env) == "PATH, CONDA_DEFAULT_ENV, CONDA_PREFIX"
    # a wildcard matching a secret-looking name that is set here is refused too
    with pytest.raises(ValueError, match="MY_"):
        grid.getenv_value(["MY_*"], environ=env)
    # the default allow-list never names a wildcard in the submit file
    assert "*" not in grid.getenv_value(True, environ=env)


# --------------------------------------------------------------------------- artifacts that run code


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "last.pt"
    torch.save({"model": {}, "payload": _Evil(marker)}, bad)
    with pytest.raises(pickle.UnpicklingError):
        safeload.load(bad)
    assert not marker.exists()
    # plain data and tensors load; so do numpy arrays of older checkpoints (data, not code)
    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(3), "rng": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, 0.0), "n": 3}, ok)
    d = safeload.load(ok)
    assert d["n"] == 3 and d["rng"][1].tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- telemetry


@pytest.mark.slow  # starts processes: not in the quick loop (test-fast)
def test_no_telemetry_thread_in_a_train_process(tmp_path, tiny_raw):
    """MLflow turns telemetry off by itself under CI; a user's shell has no CI variable."""
    hook = tmp_path / "hook"
    hook.mkdir()
    record = tmp_path / "threads.txt"
    (hook / "sitecustomize.py").write_text(
        "import threading\n"
        "_start = threading.Thread.start\n"
        "def start(self, *a, **k):\n"
        f"    open({str(record)!r}, 'a').write(self.name + '\\n')\n"
        "    return _start(self, *a, **k)\n"
        "threading.Thread.start = start\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST")}
    # in tmp_path: the experiment this run creates keeps its artifacts in ./mlruns (the checkout's, run from there)
    env.update(PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}", MLFLOW_EXPERIMENT_NAME="t")
    cmd = [sys.executable, "-m", "steps.train", "--tokenizer", "direct", "--epochs", "1", "--data", str(tiny_raw), "--d-model", "16",
           "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--max-train-events", "200", "--max-eval-events", "100",
           "--system-metrics", "false"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "mlruns").is_dir()  # its artifacts here, not in the checkout
    names = record.read_text().split() if record.exists() else []
    assert not [n for n in names if "elemetry" in n], names


def test_telemetry_stays_on_when_the_user_opts_in():
    code = "import thesis_mlflow, os; print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))"
    env = {**{k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK",)}, "MLFLOW_DISABLE_TELEMETRY": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == "false"
    env.pop("MLFLOW_DISABLE_TELEMETRY")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == "true"


# --------------------------------------------------------------------------- done


def test_a_run_is_done_only_with_test_metrics_and_scores(mlflow_env, tmp_path):
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    rid = c.create_run(exp).info.run_id
    c.log_metric(rid, "test_auc", 0.8)
    c.set_terminated(rid, "FINISHED")
    assert not done.is_done(c.get_run(rid))  # metrics without scores: evicted mid-upload (older versions)
    f = tmp_path / "test_scores.npz"
    np.savez(f, labels=np.ones(2), scores=np.ones(2))
    c.log_artifact(rid, str(f), "eval")
    assert done.is_done(c.get_run(rid))
    other = c.create_run(exp).info.run_id
    c.log_artifact(other, str(f), "eval")
    c.set_terminated(other, "FINISHED")
    assert not done.is_done(c.get_run(other))  # scores without metrics
    running = c.create_run(exp).info.run_id
    c.log_metric(running, "test_auc", 0.8)
    c.log_artifact(running, str(f), "eval")
    unscored = c.create_run(exp).info.run_id
    c.log_metric(unscored, "test_auc", 0.8)
    c.set_terminated(unscored, "FINISHED")
    # many runs at once (the grid driver), their artifacts listed side by side: the same rule, in order
    runs = [c.get_run(r) for r in (rid, other, running, unscored, rid)]
    assert done.are_done(runs) == [done.is_done(r) for r in runs] == [True, False, False, False, True]
    assert done.are_done([]) == []


def test_conda_env_lists_exactly_the_package_requirements():
    """conda.yaml (what `mlflow run` builds on the cluster) and pyproject.toml (pip) name the same
    requirements: one source, checked, so a floor raised for safety (torch>=2.6) reaches both."""
    import tomllib
    import yaml

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((root / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert pip == deps
    assert any(d.startswith("torch>=2.6") for d in deps)


def test_no_unsafe_checkpoint_loading_anywhere():
    """weights_only=False runs code from a pickle; nothing in the project, benchmarks included, asks for it."""
    root = Path(__file__).resolve().parents[1]
    call = re.compile(r"\.load\([^)]*weights_only\s*=\s*False")
    offenders = [str(p.relative_to(root)) for d in ("thesis_mlflow", "steps", "benchmarks", "scripts", "tests") for p in (root / d).rglob("*.py")
                 if call.search(p.read_text())]
    assert not offenders, offenders
