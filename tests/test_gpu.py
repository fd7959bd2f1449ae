"""CUDA checks of the fast training step (skipped without CUDA: the CPU tests cover the logic).

- the compiled, graph-captured step and the eager step give the same loss on the first batch;
- a whole epoch replayed as a CUDA graph, its last batch padded, equals the eager loop in fp32;
- a resume is bit-exact under deterministic algorithms;
- dropout on captured graphs draws from each run's own generator: two cells captured and
  replayed side by side in threads end as each trained alone, and the two runs' masks differ;
- one cell trains on CUDA end to end through ``train`` (real MLflow store);
- a run killed after epoch 1 resumes on CUDA with the same metric history and weights within
  bf16 tolerance of an uninterrupted run;
- the seeds of a configuration stacked into one model on CUDA each equal that seed alone (fp32).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible: torch.cuda.is_available() is False)")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "64", "--warmup-steps", "5", "--lr", "3e-3",
        "--max-train-events", "600", "--max-eval-events", "200"]


@pytest.mark.parametrize("mode", ["graph", "compiled"])
def test_captured_step_first_batch_loss_equals_eager(tiny_splits, mode):
    from thesis_mlflow.learn import features
    from thesis_mlflow.learn.binning import Binning
    from thesis_mlflow.learn.model import Classifier, ModelConfig
    from thesis_mlflow.learn.training import EagerStep, StaticStep, TrainConfig, lr_lambda, make_optimizer
    from thesis_mlflow.spec import RunStream

    dev = torch.device("cuda")
    b = Binning().fit(tiny_splits["train"])
    tr = features.make_tensors(features.token_inputs(b.transform(tiny_splits["train"]), True), tiny_splits["train"].y, "4t_vs_bg").to(dev)
    cfg = TrainConfig(epochs=1, batch_size=64, device="cuda", step_mode=mode)
    torch.manual_seed(0)
    ref = Classifier(ModelConfig(tokenizer="binned", pooling="max", dropout=0.0)).to(dev)  # the thesis size, no dropout: comparable
    fast = Classifier(ModelConfig(tokenizer="binned", pooling="max", dropout=0.0)).to(dev)
    fast.load_state_dict(ref.state_dict())
    losses = []
    for model, m in ((ref, "eager"), (fast, mode)):
        model.train()
        opt = make_optimizer(model, cfg, dev, m)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, 100))
        step = EagerStep(model, opt, sched, tr, cfg, dev) if m == "eager" else StaticStep(model, opt, sched, tr, cfg, dev,
                                                                                           compile_model=m == "compiled")
        step.steps_per_epoch = 1  # just the first batch
        losses.append(step.epoch(RunStream("test", 0).epoch_order(len(tr), 1), lambda: None).item() / 64)
    assert losses[1] == pytest.approx(losses[0], rel=2e-2), losses  # bf16 autocast in both


@pytest.fixture()
def exact_fp32(monkeypatch):
    """fp32 end to end (no bf16 autocast, no TF32): the step's arithmetic compared, not its rounding."""
    from thesis_mlflow.learn import training as T

    monkeypatch.setattr(T, "_autocast", lambda device: torch.autocast("cuda", enabled=False))
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def test_graph_epoch_equals_eager_with_a_padded_last_batch(tiny_splits, exact_fp32):
    """A whole epoch, its last batch topped up with weight-0 events, replayed as a CUDA graph:
    the same loss and weights as the eager loop (fp32, dropout 0) to ~1e-6, and the same LR."""
    import math

    from thesis_mlflow.learn import features
    from thesis_mlflow.learn.binning import Binning
    from thesis_mlflow.learn.model import Classifier, ModelConfig
    from thesis_mlflow.learn.training import EagerStep, StaticStep, TrainConfig, lr_lambda, make_optimizer
    from thesis_mlflow.spec import RunStream

    dev = torch.device("cuda")
    b = Binning().fit(tiny_splits["train"])
    tr = features.make_tensors(features.token_inputs(b.transform(tiny_splits["train"]), True), tiny_splits["train"].y, "4t_vs_bg",
                               max_events=64 * 7 + 13).to(dev)
    n = len(tr)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, warmup_steps=3, device="cuda", step_mode="graph")
    assert n % cfg.batch_size, "the test needs a padded last batch"
    small = dict(tokenizer="binned", pooling="max", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)
    torch.manual_seed(0)
    ref = Classifier(ModelConfig(**small)).to(dev)
    fast = Classifier(ModelConfig(**small)).to(dev)
    fast.load_state_dict(ref.state_dict())
    total = math.ceil(n / cfg.batch_size) * cfg.epochs
    steps = {}
    for model, m in ((ref, "eager"), (fast, "graph")):
        model.train()
        opt = make_optimizer(model, cfg, dev, m)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total))
        steps[m] = EagerStep(model, opt, sched, tr, cfg, dev) if m == "eager" else StaticStep(model, opt, sched, tr, cfg, dev)
    for epoch in (1, 2):
        la = steps["eager"].epoch(RunStream("test", 0).epoch_order(n, epoch), lambda: None).item()
        lb = steps["graph"].epoch(RunStream("test", 0).epoch_order(n, epoch), lambda: None).item()
        assert lb == pytest.approx(la, rel=1e-6), (epoch, la, lb)
    for (k, pa), pb in zip(ref.state_dict().items(), fast.state_dict().values(), strict=True):
        if k.endswith("attn.qkv.bias"):  # the key bias has no true gradient: Adam steps its rounding noise (see test_train_step)
            d = small["d_model"]
            torch.testing.assert_close(pb[d:2 * d], pa[d:2 * d], rtol=0, atol=4 * cfg.lr, msg=k)
            pa, pb = torch.cat([pa[:d], pa[2 * d:]]), torch.cat([pb[:d], pb[2 * d:]])
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6, msg=k)
    last = lr_lambda(cfg.warmup_steps, total)(total - 1)
    assert steps["graph"].lr.item() == pytest.approx(cfg.lr * last, rel=1e-6)


def test_resume_is_bit_exact_under_deterministic_algorithms(tiny_splits, tmp_path, exact_fp32, monkeypatch):
    """With deterministic kernels, an eager CUDA run stopped after epoch 1 and resumed from its
    checkpoint ends with the very weights of an uninterrupted run (dropout included: the run's
    own generator is reseeded from its stream per epoch)."""
    from thesis_mlflow.learn import features
    from thesis_mlflow.learn.binning import Binning
    from thesis_mlflow.learn.model import Classifier, ModelConfig
    from thesis_mlflow.learn.training import TrainConfig, fit

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        b = Binning().fit(tiny_splits["train"])
        tens = {s: features.make_tensors(features.token_inputs(b.transform(tiny_splits[s]), True), tiny_splits[s].y, "4t_vs_bg")
                for s in ("train", "val")}
        cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, warmup_steps=3, device="cuda", step_mode="eager")
        small = dict(tokenizer="binned", pooling="max", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1)

        def model():
            torch.manual_seed(0)
            return Classifier(ModelConfig(**small))

        ref = model()
        fit(ref, tens["train"], tens["val"], cfg, tmp_path / "ref.pt", progress=False)

        def stop(epoch, _):
            if epoch == 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fit(model(), tens["train"], tens["val"], cfg, tmp_path / "one.pt", progress=False, on_epoch=stop)
        resumed = model()
        fit(resumed, tens["train"], tens["val"], cfg, tmp_path / "two.pt", resume_from=tmp_path / "one.pt", progress=False)
        for (k, a), c in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
            torch.testing.assert_close(c, a, rtol=0, atol=0, msg=k)
    finally:
        torch.use_deterministic_algorithms(False)


def test_captured_cells_side_by_side_equal_alone_with_dropout(tiny_splits, tmp_path, exact_fp32):
    """Two cells with dropout, each a CUDA graph with its own registered generator, trained in
    two threads at once (as a pack runs them, on their own streams): each ends as when trained
    alone (fp32; the tolerance of the padded-epoch test above), and the two differ."""
    from tests.together import at_once
    from thesis_mlflow.learn import features
    from thesis_mlflow.learn.binning import Binning
    from thesis_mlflow.learn.model import Classifier, ModelConfig
    from thesis_mlflow.learn.training import TrainConfig, fit
    from thesis_mlflow.spec import CellSpec

    b = Binning().fit(tiny_splits["train"])
    tens = {s: features.make_tensors(features.token_inputs(b.transform(tiny_splits[s]), True), tiny_splits[s].y, "4t_vs_bg")
            for s in ("train", "val")}
    small = dict(tokenizer="binned", pooling="max", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.2)
    specs = [CellSpec(tokenizer="binned", pooling="max", seed=s) for s in (0, 1)]

    def run(spec, path):
        cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, warmup_steps=3, device="cuda", step_mode="graph", seed=spec.seed,
                          stream_key=spec.stream_key())
        model = Classifier(ModelConfig(**small))
        with torch.cuda.stream(torch.cuda.Stream()):
            fit(model, tens["train"], tens["val"], cfg, path, progress=False)
        torch.cuda.synchronize()
        return model.cpu()

    alone = [run(s, tmp_path / f"a{i}.pt") for i, s in enumerate(specs)]
    together = at_once(lambda i, s: run(s, tmp_path / f"t{i}.pt"), list(enumerate(specs)))
    for i in range(2):
        for (k, a), c in zip(alone[i].state_dict().items(), together[i].state_dict().values(), strict=True):
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6, msg=f"cell {i}: {k}")
    assert any(not torch.allclose(a, c) for a, c in zip(alone[0].state_dict().values(), alone[1].state_dict().values(), strict=True))


def _runs(step):
    import mlflow

    return [r for r in mlflow.search_runs(experiment_names=["test-exp"], output_format="list") if r.data.tags.get("step") == step]


def _train(raw, env, epochs=3, *extra):
    cmd = [sys.executable, "-m", "steps.train", "--tokenizer", "binned", "--pooling", "cls", "--epochs", str(epochs), "--data", str(raw),
           "--device", "cuda", *TINY, *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def test_cell_trains_on_cuda_end_to_end(mlflow_env, tiny_raw):
    res = _train(tiny_raw, {"MLFLOW_TRACKING_URI": mlflow_env, "MLFLOW_EXPERIMENT_NAME": "test-exp"}, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = _runs("train")
    assert r.info.status == "FINISHED"
    assert r.data.params["step_mode"] in ("compiled", "graph")
    assert 0.5 < r.data.metrics["test_auc"] <= 1.0
    assert r.data.metrics["events_per_s"] > 0


def test_killed_run_resumes_on_cuda(mlflow_env, tiny_raw):
    import mlflow

    from tests.fault import kill_env

    base = {"MLFLOW_TRACKING_URI": mlflow_env, "MLFLOW_EXPERIMENT_NAME": "test-exp"}
    ref = _train(tiny_raw, base)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _train(tiny_raw, kill_env(1, base=base))
    assert killed.returncode == -9
    (run,) = [r for r in _runs("train") if r.info.status == "RUNNING"]
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    again = _train(tiny_raw, {**base, "MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_EXPERIMENT_ID": exp})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resum" in again.stderr
    rid, ref_id = run.info.run_id, next(r.info.run_id for r in _runs("train") if r.info.run_id != run.info.run_id)
    for k in ("train_loss", "val_loss", "val_auc", "lr"):
        h = [(m.step, m.value) for m in c.get_metric_history(rid, k)]
        h_ref = [(m.step, m.value) for m in c.get_metric_history(ref_id, k)]
        assert [s for s, _ in h] == [1, 2, 3], k
        for (_, v), (_, v_ref) in zip(h, h_ref, strict=True):
            assert v == pytest.approx(v_ref, rel=2e-2, abs=2e-3), (k, h, h_ref)

    def weights(run_id):
        p = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt")
        return torch.load(p, weights_only=True, map_location="cpu")["model"]

    w, w_ref = weights(rid), weights(ref_id)
    worst = max(((w[k] - v).abs().max() / v.abs().max().clamp(min=1e-3)).item() for k, v in w_ref.items())
    print(f"resumed vs uninterrupted on CUDA: largest relative weight difference {worst:.2e}")
    assert worst < 2e-2


@pytest.mark.parametrize("step_mode, tol", [("eager", 1e-4), ("auto", 1e-3)])
def test_stacked_seeds_on_cuda_equal_each_seed_alone(tiny_splits, tmp_path, exact_fp32, monkeypatch, step_mode, tol):
    """The seeds of one configuration as one stacked model on CUDA (``learn.stacked``, as a GPU
    pack runs them), eager and compiled (``auto``: inductor, whose fused kernels round in
    another order, hence the looser bound): each seed ends as that seed trained alone on CUDA
    (fp32, eager), with its dropout masks from its own generator, and the seeds differ."""
    from tests.test_stacked import _max_diff
    from thesis_mlflow.learn import features, stacked
    from thesis_mlflow.learn.binning import Binning
    from thesis_mlflow.learn.model import Classifier, ModelConfig
    from thesis_mlflow.learn.training import TrainConfig, fit
    from thesis_mlflow.spec import CellSpec

    monkeypatch.setattr(stacked, "_autocast", lambda device: torch.autocast("cuda", enabled=False))
    b = Binning().fit(tiny_splits["train"])
    tens = {s: features.make_tensors(features.token_inputs(b.transform(tiny_splits[s]), True), tiny_splits[s].y, "4t_vs_bg")
            for s in ("train", "val")}
    small = dict(tokenizer="binned", pooling="max", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.2)
    key = CellSpec(tokenizer="binned", pooling="max").stream_key()

    def cfg(seed, mode="eager"):
        return TrainConfig(epochs=2, batch_size=64, lr=2e-3, warmup_steps=3, device="cuda", step_mode=mode, seed=seed, stream_key=key)

    alone = []
    for s in range(3):
        m = Classifier(ModelConfig(**small))
        fit(m, tens["train"], tens["val"], cfg(s), tmp_path / f"a{s}.pt", progress=False)
        alone.append(m.cpu())
    told = []
    members = [stacked.Member(Classifier(ModelConfig(**small)), cfg(s, step_mode), tmp_path / f"s{s}.pt",
                              on_step_mode=lambda mode, why: told.append((mode, why))) for s in range(3)]
    t0 = time.perf_counter()
    stacked.fit_stacked(members, tens["train"], tens["val"], progress=False)
    print(f"stacked {step_mode}: {told[0]}, {time.perf_counter() - t0:.1f} s with the build")
    assert told == [("stacked" if step_mode == "eager" else "stacked-compiled", None)] * 3
    for s, m in enumerate(members):
        assert m.error is None
        assert _max_diff(m.model.cpu(), alone[s]) < tol, s
    assert _max_diff(alone[0], alone[1]) > 1e-2
