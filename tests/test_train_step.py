"""The training step's pieces on the CPU: the static-shape step the CUDA graph captures does
the same arithmetic as the eager loop (padded last batch, device LR schedule, clipping)."""

from __future__ import annotations

import math

import pytest
import torch

from thesis_mlflow.learn import features, synthetic
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.model import Classifier, ModelConfig
from thesis_mlflow.learn.training import (
    EagerStep,
    StaticStep,
    TrainConfig,
    _load_optimizer,
    lr_factor,
    lr_lambda,
    make_optimizer,
    resolve_step,
    restore_state,
    saved_state,
)
from thesis_mlflow.spec import RunStream

STREAM = RunStream("test", 0)
SMALL = dict(tokenizer="binned", pooling="max", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)


@pytest.fixture(scope="module")
def tokens():
    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=400, seed=5))
    b = Binning().fit(sp["train"])
    return features.make_tensors(features.token_inputs(b.transform(sp["train"]), True), sp["train"].y, "4t_vs_bg")


@pytest.mark.parametrize("warmup, total", [(0, 10), (5, 40), (1000, 300), (3, 3)])
def test_device_schedule_equals_lambda(warmup, total):
    f = lr_lambda(warmup, total)
    for step in range(0, total + 3):
        got = lr_factor(torch.tensor(float(step), dtype=torch.float64), warmup, total).item()
        assert got == pytest.approx(f(step), rel=1e-12, abs=1e-15), step


# warm-up over 10 steps, then cosine to zero at step 110: values a reader can check by hand
SCHEDULE = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 35: 0.5 * (1 + math.cos(math.pi / 4)), 60: 0.5, 85: 0.5 * (1 - math.cos(math.pi / 4)),
            110: 0.0, 200: 0.0}


@pytest.mark.parametrize("step, want", SCHEDULE.items())
def test_schedule_at_named_steps(step, want):
    assert lr_lambda(10, 110)(step) == pytest.approx(want, abs=1e-12)
    assert lr_factor(torch.tensor(float(step), dtype=torch.float64), 10, 110).item() == pytest.approx(want, abs=1e-12)


def test_restored_optimizer_has_the_saved_moments_step_and_lr(tokens):
    """``restore_state`` puts back Adam's moments and step count as saved (a resume that zeroed
    them would retrain with a cold optimizer), the scheduler's position and the scheduled LR."""
    cfg = TrainConfig(lr=2e-3, warmup_steps=3)
    torch.manual_seed(0)
    model = Classifier(ModelConfig(**SMALL))
    opt = make_optimizer(model, cfg, torch.device("cpu"), "eager")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, 40))
    step = EagerStep(model, opt, sched, tokens, cfg, torch.device("cpu"))
    model.train()
    step.epoch(STREAM.epoch_order(len(tokens), 1), lambda: None)
    ck = saved_state(model, opt, sched, 1, [{"epoch": 1, "metrics": {}}], STREAM)
    n_steps = math.ceil(len(tokens) / cfg.batch_size)

    fresh = Classifier(ModelConfig(**SMALL))
    opt2 = make_optimizer(fresh, cfg, torch.device("cpu"), "eager")
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lr_lambda(cfg.warmup_steps, 40))
    history = restore_state(ck, fresh, opt2, sched2, torch.device("cpu"))
    assert history == [{"epoch": 1, "metrics": {}}]
    saved = {n: opt.state[p] for n, p in model.named_parameters()}
    for n, p in fresh.named_parameters():
        st = opt2.state[p]
        assert float(st["step"]) == n_steps, n
        torch.testing.assert_close(st["exp_avg"], saved[n]["exp_avg"], rtol=0, atol=0, msg=n)
        torch.testing.assert_close(st["exp_avg_sq"], saved[n]["exp_avg_sq"], rtol=0, atol=0, msg=n)
        assert st["exp_avg_sq"].abs().sum() > 0, n  # real moments, not zeros compared with zeros
    assert sched2.last_epoch == n_steps
    assert opt2.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_lambda(cfg.warmup_steps, 40)(n_steps))


def _pair(tokens, cfg):
    torch.manual_seed(0)
    a = Classifier(ModelConfig(**SMALL))
    b = Classifier(ModelConfig(**SMALL))
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a, cfg, torch.device("cpu"), "eager")
    # the captured step's optimizer has a tensor LR; on the CPU the single-tensor AdamW takes one
    opt_b = torch.optim.AdamW(b.parameters(), lr=torch.tensor(cfg.lr), weight_decay=cfg.weight_decay, foreach=False)
    steps = math.ceil(len(tokens) / cfg.batch_size) * cfg.epochs
    sched_a = torch.optim.lr_scheduler.LambdaLR(opt_a, lr_lambda(cfg.warmup_steps, steps))
    sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, lr_lambda(cfg.warmup_steps, steps))
    cpu = torch.device("cpu")
    return (a, EagerStep(a, opt_a, sched_a, tokens, cfg, cpu)), (b, StaticStep(b, opt_b, sched_b, tokens, cfg, cpu, capture=False))


def test_static_step_equals_eager_loop_with_partial_last_batch(tokens):
    n = len(tokens)
    cfg = TrainConfig(epochs=2, batch_size=48, lr=3e-3, warmup_steps=4, grad_clip=0.5)
    assert n % cfg.batch_size, "the test needs a partial last batch"
    (a, eager), (b, static) = _pair(tokens, cfg)
    assert static.perm.numel() == math.ceil(n / 48) * 48  # static shape: whole batches only
    a.train(), b.train()
    ticks = {"eager": 0, "static": 0}

    def tick(which):
        return lambda: ticks.__setitem__(which, ticks[which] + 1)

    for epoch in (1, 2):
        la = eager.epoch(STREAM.epoch_order(n, epoch), tick("eager"))
        lb = static.epoch(STREAM.epoch_order(n, epoch), tick("static"))
        assert ticks["eager"] == ticks["static"] == epoch * math.ceil(n / 48)  # no batch dropped, none added
        assert lb.item() == pytest.approx(la.item(), rel=1e-5)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if k.endswith("attn.qkv.bias"):
            # The key bias has no true gradient (softmax is shift-invariant): Adam turns its
            # rounding noise into +-lr steps, so that third agrees only to a few lr.
            d = 16
            torch.testing.assert_close(pb[d:2 * d], pa[d:2 * d], rtol=0, atol=4 * cfg.lr, msg=k)
            pa, pb = torch.cat([pa[:d], pa[2 * d:]]), torch.cat([pb[:d], pb[2 * d:]])
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6, msg=k)
    assert static.lr_step.item() == eager.sched.last_epoch  # the device schedule advanced as the host one
    last = lr_lambda(cfg.warmup_steps, static.total_steps)(static.total_steps - 1)  # the LR of the last step taken
    assert static.lr.item() == pytest.approx(cfg.lr * last, rel=1e-6)


def test_padding_of_the_last_batch_has_no_weight(tokens):
    """Changing the events that top up the last batch changes nothing."""
    n = len(tokens)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-3, warmup_steps=0)
    (_, _), (b, static) = _pair(tokens, cfg)
    b.train()
    before = {k: v.clone() for k, v in b.state_dict().items()}
    perm = STREAM.epoch_order(n, 1)
    static.epoch(perm, lambda: None)
    after1 = {k: v.clone() for k, v in b.state_dict().items()}
    # same run again from the same start, but the top-up taken from other events
    b.load_state_dict(before)
    for st in static.opt.state.values():
        for t in st.values():
            t.zero_()
    static.lr_step.zero_()
    static.perm.copy_(perm[torch.arange(static.perm.numel()) % n])
    static.perm[n:] = perm[-1]  # the top-up positions now repeat a different event
    static.pos.zero_()
    static.loss_sum.zero_()
    for _ in range(static.steps_per_epoch):
        static.opt.zero_grad(set_to_none=True)
        static._step()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, after1[k], rtol=1e-5, atol=1e-6, msg=k)


def test_step_modes():
    cpu = torch.device("cpu")
    assert resolve_step("auto", cpu) == "eager" and resolve_step("eager", cpu) == "eager"
    for m in ("graph", "compiled"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            resolve_step(m, cpu)
    with pytest.raises(ValueError, match="step_mode must be one of auto, eager, graph, compiled"):
        TrainConfig(step_mode="fast")


def test_optimizer_state_moves_between_step_modes(tokens):
    """A checkpoint written with a tensor LR (captured step) resumes in an eager optimizer and back."""
    cfg = TrainConfig(lr=2e-3)
    (a, eager), (b, static) = _pair(tokens, cfg)
    a.train(), b.train()
    static.epoch(STREAM.epoch_order(len(tokens), 1), lambda: None)
    state = static.opt.state_dict()
    _load_optimizer(eager.opt, state, torch.device("cpu"))
    g = eager.opt.param_groups[0]
    assert isinstance(g["lr"], float) and g["lr"] == pytest.approx(static.lr.item())
    eager.epoch(STREAM.epoch_order(len(tokens), 2), lambda: None)  # runs with the loaded state
    _load_optimizer(static.opt, eager.opt.state_dict(), torch.device("cpu"))
    assert torch.is_tensor(static.opt.param_groups[0]["lr"]) and static.opt.param_groups[0]["lr"] is static.lr


def test_every_compiled_model_is_counted_under_the_recompile_limit(tokens, monkeypatch, recompile_limit):
    """Each model handed to torch.compile in a process (the per-cell step here; the stacked step
    calls the same counter) keeps torch's recompile limit above the count: the 36 cells of the
    local GPU backend's one process would otherwise leave all but 8 uncompiled while their runs
    say ``compiled``. No driver has to know the count up front."""
    from thesis_mlflow.learn import training

    monkeypatch.setattr(training, "_COMPILED", [35])  # 35 models compiled in this process before this one
    _, (b, static) = _pair(tokens, TrainConfig(epochs=1, batch_size=48))
    assert training._COMPILED[0] == 35 and recompile_limit() == 8  # neither step compiles anything
    compiled = StaticStep(b, static.opt, static.sched, tokens, TrainConfig(epochs=1, batch_size=48), torch.device("cpu"),
                          compile_model=True, capture=False)
    assert compiled.mode == "compiled" and training._COMPILED[0] == 36 and recompile_limit() >= 72
