"""``grid rehearse`` through the local backend, as a user runs it: every cell rehearsed once at
the scale's sizes (a few steps), the forecast printed and logged on the rehearsal's own parent,
the rehearsal's runs invisible to the real grid (status, views, report), and the real grid run
afterwards trains every cell from scratch. A memory request below the measured peak ends the
forecast with exit status 1, naming the pack. (Through the real SLURM: tests/test_slurm.py.)"""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
import yaml

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.forecast.rehearse import rehearse
from thesis_mlflow.grid.driver import run_grid
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.rehearsal import Rehearsal
from thesis_mlflow.grid.status import grid_status
from thesis_mlflow.paths import ROOT
from thesis_mlflow.report.results import grid_runs

pytestmark = pytest.mark.slow
EPOCHS = 3


def _grid(tmp_path, tiny_raw, name="rh", **slurm) -> str:
    doc = {"name": name, "data": str(tiny_raw), "factors": {"tokenizer": ["direct", "vqvae"], "pooling": ["mean"], "met": [True], "vect": [4]},
           "scales": {"full": {"seeds": [0], "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 3e-3, "warmup_steps": 5, "d_model": 16,
                                                       "n_layers": 1, "n_heads": 2, "d_ff": 32},
                               "vqvae": {"epochs": 3, "codebook_size": 16, "max_events": 1200}}},
           "slurm": {"time": "01:00:00", "mem": "8G", "cells_per_job": 2, "gpus_per_job": 0, **slurm}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_a_rehearsal_forecasts_and_leaves_the_real_grid_untouched(mlflow_env, tiny_raw, tmp_path):
    gfile = _grid(tmp_path, tiny_raw)
    lines: list[str] = []
    r = rehearse(gfile, "full", "local", Rehearsal(steps=3, eval_events=200), echo=lines.append)
    text = "\n".join(lines)
    fc = r.forecast
    assert fc is not None and fc.exit_code == 0, text
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    reh = c.search_runs([exp], "tags.`grid.name` = 'rh-rehearsal' and tags.step = 'train'")
    assert sorted(x.data.tags["grid.cell"] for x in reh) == sorted(cell.tag for cell in load_grid(gfile, "full").cells())  # once each
    for x in reh:
        assert x.data.tags["grid.rehearsal"] == "true" and x.info.status == "FINISHED"
        assert x.data.params["n_train_events"] == str(3 * 64) and x.data.params["n_test_events"] == "200"
        assert x.data.params["d_model"] == "16" and x.data.params["batch_size"] == "64"  # the scale's sizes, few steps
        assert {"cost.epoch_train_s", "cost.setup_s", "cost.eval_s_per_1k", "cost.peak_rss_mb"} <= set(x.data.metrics)
    # the forecast: printed with the full run's packs, and logged on the rehearsal's parent
    assert "full run: 2 cells in 1 packs (local)" in text and "how each quantity was had:" in text, text
    # the prepare job: the rehearsal's VQ-VAE trained one epoch on 3 x 64 events; the real one 3 epochs on 1,200
    assert "prepare job (binning, VQ-VAE pre-training)" in text and fc.prepare_s is not None and fc.prepare_s > 0, text
    vq = c.search_runs([c.get_experiment_by_name("test-exp").experiment_id], "tags.step = 'vqvae'")
    assert len(vq) == 1 and vq[0].data.params["epochs"] == "1" and vq[0].data.metrics["cost.events"] == 3 * 64
    parent = c.search_runs([exp], "tags.`grid.name` = 'rh-rehearsal' and tags.step = 'grid'")[0]
    assert parent.data.tags["grid.rehearsal"] == "true"
    logged = {a.path for a in c.list_artifacts(parent.info.run_id, "forecast")}
    assert {"forecast/packs.csv", "forecast/cells.csv", "forecast/forecast.html", "forecast/forecast.txt"} <= logged
    assert parent.data.metrics["forecast.exit_code"] == 0
    # full size: the real scale's training events (the tiny file's whole train split), its epochs
    full = fc.cells[0]
    assert full.cell_s > full.setup_s + EPOCHS * full.epoch_s * 0.99

    # the real grid sees none of it
    st = grid_status(gfile, "full")
    assert st.counts()["finished"] == 0, st.render(with_logs=False)
    assert grid_runs("rh").empty
    s = run_grid(gfile, "local", "full", 1, False, echo=lines.append)
    assert s.complete and sorted(s.launched) == sorted(cell.name for cell in load_grid(gfile, "full").cells())  # every cell from scratch
    real = grid_runs("rh")
    assert len(real) == 2 and set(real["run_id"]).isdisjoint({x.info.run_id for x in reh})
    for rid in real["run_id"]:
        run = c.get_run(rid)
        assert "grid.rehearsal" not in run.data.tags and run.data.params["n_train_events"] != str(3 * 64)
        assert [m.step for m in c.get_metric_history(rid, "val_auc")] == list(range(1, EPOCHS + 1))

    # a memory request below what the rehearsal measured: exit 1, the pack named (the CLI, as run by the SLURM job)
    tight = _grid(tmp_path, tiny_raw, mem="64M")
    res = subprocess.run([sys.executable, "-m", "steps.grid", "forecast", tight, "--backend", "slurm", *Rehearsal(steps=3, eval_events=200).args()],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith("WARNING: pack 0: 2 cells need") and "> slurm.mem 0.1 GB" in res.stdout, res.stdout


def test_a_grid_named_like_a_rehearsal_is_refused(tmp_path, tiny_raw):
    with pytest.raises(BadSetting, match="names a grid's rehearsal"):
        load_grid(_grid(tmp_path, tiny_raw, name="thesis-rehearsal"), "full")
