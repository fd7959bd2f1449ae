"""The step mode that is logged is the one that ran, and a resume continues at the scheduled LR
whichever step mode wrote the checkpoint (CPU; the CUDA side is benchmarks/gpu_fit_resume.py)."""

from __future__ import annotations

import torch

from thesis_mlflow.learn import features
from thesis_mlflow.learn import training as train
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.model import Classifier, ModelConfig
from thesis_mlflow.learn.training import TrainConfig, fit


class _FakeStatic:
    def __init__(self, model, opt, sched, tr, cfg, device, compile_model=False, capture=True, noise=None):
        if compile_model:
            raise RuntimeError("")  # a compiler error with an empty message (seen with Inductor)
        self.mode = "graph"
        self.fallback = None


def test_compile_fallback_is_reported_and_survives_an_empty_message(monkeypatch):
    monkeypatch.setattr(train, "StaticStep", _FakeStatic)
    cfg = TrainConfig(step_mode="auto")
    step = train.build_step(None, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), None, None, cfg, torch.device("cpu"),
                            "compiled")
    assert step.mode == "graph" and step.fallback == "torch.compile failed (RuntimeError)"
    assert train.first_line(ValueError("a\nb")) == "ValueError: a" and train.first_line(KeyError()) == "KeyError"


def _data(tiny_splits):
    b = Binning().fit(tiny_splits["train"])
    return [features.make_tensors(features.token_inputs(b.transform(tiny_splits[s]), True), tiny_splits[s].y, "4t_vs_bg", 600)
            for s in ("train", "val")]


def _model():
    torch.manual_seed(0)
    return Classifier(ModelConfig(tokenizer="binned", pooling="max", d_model=16, n_layers=1, n_heads=2, d_ff=32))


def test_resume_continues_at_the_scheduled_lr_even_from_a_stale_group_lr(tiny_splits, tmp_path):
    """A captured step leaves the LR of the step it just took in the optimizer (its graph sets
    the LR before each step): a checkpoint of it, resumed in eager mode (a GPU run resumed on a
    CPU), must still take its first step at the schedule's LR."""
    tr, va = _data(tiny_splits)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup_steps=5, device="cpu", step_mode="eager")
    seen = []
    ref = _model()
    h_ref = fit(ref, tr, va, cfg, tmp_path / "ref.pt", progress=False, on_step_mode=lambda m, f: seen.append((m, f)))
    assert seen == [("eager", None)]

    def stop(epoch, _):
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        fit(_model(), tr, va, cfg, tmp_path / "one.pt", progress=False, on_epoch=stop)
    except KeyboardInterrupt:
        pass
    ck = torch.load(tmp_path / "one.pt", weights_only=True)
    ck["optimizer"]["param_groups"][0]["lr"] = 0.5  # what a graph-mode epoch leaves: not the next step's LR
    torch.save(ck, tmp_path / "stale.pt")
    resumed = _model()
    h_res = fit(resumed, tr, va, cfg, tmp_path / "res.pt", resume_from=tmp_path / "stale.pt", progress=False)
    assert h_res[-1]["metrics"]["lr"] == h_ref[-1]["metrics"]["lr"]
    for p, q in zip(ref.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_gate_keeps_captures_apart_from_running_epochs():
    """A build (capture) waits for the epochs under way, and holds new epochs back until it is done."""
    import threading
    import time

    gate, events = train._Gate(), []
    in_epoch, release = threading.Event(), threading.Event()

    def epoch(name, hold=None):
        with gate.shared():
            events.append(f"{name} start")
            if hold:
                in_epoch.set()
                hold.wait(5)
            events.append(f"{name} end")

    def build():
        with gate.exclusive():
            events.append("build start")
            time.sleep(0.2)
            events.append("build end")

    a = threading.Thread(target=epoch, args=("a", release))
    a.start()
    in_epoch.wait(5)
    b = threading.Thread(target=build)
    b.start()
    time.sleep(0.2)  # the build waits for epoch a
    c = threading.Thread(target=epoch, args=("c",))
    c.start()
    time.sleep(0.2)  # epoch c waits behind the waiting build
    assert events == ["a start"]
    release.set()
    for t in (a, b, c):
        t.join(5)
    assert events == ["a start", "a end", "build start", "build end", "c start", "c end"]
