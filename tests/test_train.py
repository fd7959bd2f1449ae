"""The train entry point end to end: logging, artifacts, refusal of bad values, kill and resume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from steps.cli import main
from tests.fault import kill_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "64", "--warmup-steps", "5", "--lr", "3e-3",
        "--max-train-events", "600", "--max-eval-events", "200"]
EPOCH_METRICS = ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "events_per_s")


def _runs(step=None):
    runs = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    return [r for r in runs if step is None or r.data.tags.get("step") == step]


def test_train_direct_logs_everything(mlflow_env, tiny_raw):
    res = CliRunner().invoke(main, ["train", "--tokenizer", "direct", "--pooling", "max", "--met", "false", "--vect", "5",
                                    "--epochs", "3", "--data", str(tiny_raw), *TINY])
    assert res.exit_code == 0, res.output
    (r,) = _runs("train")
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "direct-max-nomet-5v-s0"
    assert r.data.tags["grid.cell"] == "tokenizer=direct,pooling=max,met=false,vect=5,seed=0"
    p = r.data.params
    for k in ("tokenizer", "pooling", "met", "vect", "seed", "epochs", "batch_size", "lr", "d_model", "n_layers", "n_heads", "d_ff",
              "n_params", "n_params_embedding", "task", "data"):
        assert k in p, k
    assert (p["tokenizer"], p["pooling"], p["met"], p["vect"], p["d_model"], p["task"]) == ("direct", "max", "false", "5", "16", "4t_vs_bg")
    c = mlflow.MlflowClient()
    for k in EPOCH_METRICS:
        assert [m.step for m in c.get_metric_history(r.info.run_id, k)] == [1, 2, 3], k
    for k in ("test_auc", "test_acc", "test_rej_at_eff50", "test_rej_at_eff70"):
        assert np.isfinite(r.data.metrics[k]), k
    assert 0.5 < r.data.metrics["test_auc"] <= 1.0
    # its random stream: named by the configuration's key and the seed, never the bare seed
    from thesis_mlflow.spec import SCHEME, RunStream

    key = "cell:task=4t_vs_bg,tokenizer=direct,pooling=max,met=false,vect=5"
    assert (p["rng_key"], p["rng_stream"], p["rng_scheme"]) == (key, RunStream(key, 0).id, str(SCHEME))
    npz = np.load(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="eval/test_scores.npz"))
    assert npz["labels"].shape == npz["scores"].shape == (200,)
    assert set(np.unique(npz["labels"])) == {0, 1} and np.all((npz["scores"] >= 0) & (npz["scores"] <= 1))
    ck = torch.load(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="checkpoints/last.pt"), weights_only=True)
    assert ck["epoch"] == 3 and "optimizer" in ck and "scheduler" in ck
    assert ck["stream"] == {"scheme": SCHEME, "id": p["rng_stream"], "key": key, "seed": 0}
    assert ck["scaler"]["mean"]["log_pt"] > 0
    assert r.inputs.dataset_inputs[0].dataset.name == Path(tiny_raw).name


@pytest.mark.parametrize("task, present, absent", [
    ("multiclass", {"test_auc_ovr_4t", "test_auc_ovr_ttH", "test_auc_ovr_ttZ", "test_auc_vs_ttZ"}, set()),
    ("4t_vs_ttH", {"test_auc_vs_ttH", "test_rej50_vs_ttH"}, {"test_auc_vs_ttZ", "test_auc_ovr_4t"}),
])
def test_other_tasks_train_end_to_end(mlflow_env, tiny_raw, task, present, absent):
    res = CliRunner().invoke(main, ["train", "--tokenizer", "direct", "--pooling", "mean", "--task", task, "--epochs", "1",
                                    "--data", str(tiny_raw), *TINY])
    assert res.exit_code == 0, res.output
    (r,) = _runs("train")
    assert r.info.status == "FINISHED" and r.data.params["task"] == task
    assert present <= set(r.data.metrics) and not absent & set(r.data.metrics)
    assert 0 <= r.data.metrics["test_auc"] <= 1  # one tiny epoch: defined, not yet good
    npz = np.load(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="eval/test_scores.npz"))
    wanted = {1, 2} if task == "4t_vs_ttH" else {1, 2, 3, 4, 5}
    assert set(np.unique(npz["process"])) == wanted  # only the task's processes are evaluated


def test_train_binned_reuses_binning_run(mlflow_env, tiny_raw):
    args = ["train", "--tokenizer", "binned", "--pooling", "mean", "--epochs", "1", "--data", str(tiny_raw), *TINY]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, [*args[:-len(TINY)], *TINY, "--seed", "1"]).exit_code == 0
    binning = _runs("binning")
    assert len(binning) == 1
    trains = _runs("train")
    assert len(trains) == 2 and {r.data.params["binning_run_id"] for r in trains} == {binning[0].info.run_id}
    assert {r.data.params["vocab_size"] for r in trains} == {"886"}
    # the upstream run says which code, environment and device made it, like the train runs
    from thesis_mlflow.tracking import provenance

    t = binning[0].data.tags
    assert t["mlflow.source.name"] == "thesis-mlflow binning" and t.get("mlflow.source.git.commit") == provenance.code_state().commit
    assert {"code.dirty", "env.torch", "env.mlflow", "device", "host", "mlflow.user"} <= set(t)


@pytest.mark.parametrize("args, code, msg", [
    (["--pooling", "avg"], 2, "'cls', 'mean', 'max'"),
    (["--tokenizer", "bpe"], 2, "'direct', 'binned', 'binned_ambre', 'vqvae'"),
    (["--met", "maybe"], 2, "true, false"),
    (["--vect", "3"], 2, "'4', '5'"),
    (["--epochs", "0"], 2, "epochs"),
    (["--task", "ttH"], 2, "4t_vs_bg"),
    (["--d-model", "15", "--n-heads", "2"], 1, "divisible"),
    (["--tokenizer", "binned_ambre"], 1, "binned_path"),
])
def test_bad_parameters_fail_fast_without_a_run(mlflow_env, tiny_raw, args, code, msg):
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_raw), "--epochs", "1", *args])
    assert res.exit_code == code, res.output
    assert msg in res.output
    assert _runs("train") == []


def _train_args(raw, epochs=3):
    return ["--tokenizer", "binned", "--pooling", "cls", "--epochs", str(epochs), "--data", str(raw), *TINY]


def _train_proc(raw, run_env, epochs=3):
    cmd = [sys.executable, "-m", "steps.train", *_train_args(raw, epochs)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **run_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_cmd(raw, run_env, epochs=3):
    p = _train_proc(raw, run_env, epochs)
    p.stdout_text, p.stderr = p.communicate(timeout=300)
    return p


def test_kill_and_resume_is_exact(mlflow_env, tiny_raw, caplog, monkeypatch):
    base = {"MLFLOW_TRACKING_URI": mlflow_env, "MLFLOW_EXPERIMENT_NAME": "test-exp"}
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    # a job killed (SIGKILL, no cleanup) between epoch 2's checkpoint upload and its metrics: the
    # checkpoint knows an epoch the run never logged
    killed = _train_proc(tiny_raw, kill_env(2, at="checkpoint", base=base))
    assert killed.wait(timeout=300) == -9, killed.communicate()[1][-3000:]
    run = [r for r in _runs("train") if r.info.status == "RUNNING"]
    assert len(run) == 1
    run_id = run[0].info.run_id
    assert [m.step for m in c.get_metric_history(run_id, "val_auc")] == [1]
    # the uninterrupted reference, in this process (a run's numbers depend on its settings only)
    ref = CliRunner().invoke(main, ["train", *_train_args(tiny_raw)])
    assert ref.exit_code == 0, ref.output
    # the retried job: same command, same run id
    again = _train_cmd(tiny_raw, {**base, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": exp})
    assert again.returncode == 0, again.stderr
    assert "resum" in again.stderr
    r = c.get_run(run_id)
    assert r.info.status == "FINISHED"
    ref_run = [x for x in _runs("train") if x.info.run_id != run_id][0]
    for k in EPOCH_METRICS:  # epoch 2 replayed from the checkpoint's history, each epoch once
        assert [m.step for m in c.get_metric_history(run_id, k)] == [1, 2, 3], k
    ref_val = {m.step: m.value for m in c.get_metric_history(ref_run.info.run_id, "val_auc")}
    assert {m.step: m.value for m in c.get_metric_history(run_id, "val_auc")} == ref_val
    w_ref = torch.load(mlflow.artifacts.download_artifacts(run_id=ref_run.info.run_id, artifact_path="checkpoints/last.pt"), weights_only=True)
    w_res = torch.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt"), weights_only=True)
    for k, v in w_ref["model"].items():
        torch.testing.assert_close(w_res["model"][k], v, rtol=0, atol=0, msg=k)
    assert r.data.metrics["test_auc"] == ref_run.data.metrics["test_auc"]
    # a third start on the finished run trains nothing and logs nothing twice (in this process: no
    # training to compare, so no subprocess needed)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    with caplog.at_level(logging.INFO, logger="thesis_mlflow"):
        third = CliRunner().invoke(main, ["train", *_train_args(tiny_raw)])
    assert third.exit_code == 0 and "nothing to do" in caplog.text, third.output
    assert [m.step for m in c.get_metric_history(run_id, "val_auc")] == [1, 2, 3]


@pytest.mark.parametrize("on", [True, False])
def test_system_metrics_of_train_runs(mlflow_env, tiny_raw, monkeypatch, on):
    """On by default (CPU and memory here; GPU utilisation and memory where CUDA is used), off with a flag."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")  # the default samples every 10 s; this run lasts ~1 s
    args = ["train", "--epochs", "3", "--data", str(tiny_raw), *TINY] + ([] if on else ["--system-metrics", "false"])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (r,) = _runs("train")
    system = {k for k in r.data.metrics if k.startswith("system/")}
    if on:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    else:
        assert system == set()


def test_diverged_run_is_failed_and_named_not_ranked(mlflow_env, tiny_raw, monkeypatch):
    """NaN test scores (a diverged run) are refused before any test metric is logged: the run is
    FAILED with the reason in its error tags, and the command says which cell."""
    from thesis_mlflow.pipeline import cell as C

    real = C.evaluate  # the test evaluation the cell runs (fit's validation evaluations are the loop's own)

    def diverged(model, data, device, batch_size):
        out = real(model, data, device, batch_size)
        if len(data) == 200:  # the test split of TINY (val is cut to 200 too, but evaluated during fit: let those through)
            out["scores"] = out["scores"].copy()
            out["scores"][:3] = np.nan
        return out

    monkeypatch.setattr(C, "evaluate", diverged)
    res = CliRunner().invoke(main, ["train", "--tokenizer", "direct", "--pooling", "max", "--epochs", "1", "--data", str(tiny_raw), *TINY])
    assert res.exit_code == 1 and "direct-max-met-4v-s0: 3 of 200 test scores are NaN or infinite" in res.output, res.output
    (r,) = _runs("train")
    assert r.info.status == "FAILED" and "test_auc" not in r.data.metrics
    assert r.data.tags.get("error.class") == "Diverged", r.data.tags
