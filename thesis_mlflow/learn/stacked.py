"""The seeds of one configuration trained as one model with stacked weights.

Three seeds of a cell are the same network, the same data and the same settings; only their
random streams differ. Stacked, their weights get a leading seed axis ``S`` and one vmapped
step (``torch.func``) trains all of them: on a GPU that is one set of kernels S times as wide
instead of S launches of tiny ones (the model is launch-bound at batch 64).

Each seed keeps everything it has alone, so a stacked seed *is* that seed trained alone (the
CPU tests check every seed's losses, weights and scores against ``training.fit`` within float
rounding, and plant each per-seed element shared to watch them fail):

- its own stream: initial weights, each epoch's order, and dropout masks drawn from its own
  generator in the order and shapes the alone model draws them (the masks are drawn outside
  the vmapped step and handed in; the last, partial batch is drawn at its real size);
- its own learning rate and step count (AdamW with per-seed bias correction), its own gradient
  clipping (the norm over that seed's gradients only), its own epoch: seeds resumed from
  checkpoints at different epochs train together, a seed that is done stops updating;
- its own checkpoint in ``training.fit``'s format, so one seed resumes alone or in a stack;
  its own evaluation and callbacks (``on_epoch``, ``on_checkpoint``, ``on_step_mode``), called per seed.

Two ways to run the step, same numbers (the CPU tests compare both with each seed alone):

- ``stacked``: eager, the CPU path;
- ``stacked-compiled`` (on a GPU): the whole step (vmapped forward and backward, per-seed
  clipping and AdamW) one ``torch.compile``d function, so the optimizer over the stack is a few
  fused kernels instead of ~10 per weight. It compiles once per configuration (the weights are
  its inputs); a compiler failure falls back to ``stacked`` with the reason reported.
  The dropout masks are drawn outside it, each from its seed's generator (8 small kernels per
  seed at batch 64). Not captured as a CUDA graph yet: the stacked weights are updated in place,
  which torch's CUDA-graph trees skip unless their addresses are marked static, and that needs a
  GPU to check.

A member whose callback raises (its lease was lost, say) leaves the stack: its weights stop
changing, nothing more of it is saved or reported, the others go on, and ``fit_stacked``
returns the error in that member's place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from thesis_mlflow.errors import BadSetting, RunConflict
from thesis_mlflow.learn import safeload
from thesis_mlflow.learn.features import Tensors
from thesis_mlflow.learn.model import Dropout, init_weights, keep_mask
from thesis_mlflow.learn.training import (
    _GATE,
    TrainConfig,
    _atomic_save,
    _autocast,
    _set_scheduled_lr,
    check_stop,
    evaluate,
    first_line,
    lr_lambda,
    make_optimizer,
    one_more_compiled,
    resolve_device,
    restore_state,
    saved_state,
)
from thesis_mlflow.spec import stream_check

log = logging.getLogger(__name__)
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which the alone loop uses
SHARED = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "device", "eval_batch_size")


@dataclass
class Member:
    """One seed of the stack: what ``training.fit`` takes for it alone."""

    model: torch.nn.Module
    cfg: TrainConfig
    checkpoint_path: Path
    resume_from: Path | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    on_checkpoint: Callable[[Path], None] | None = None
    extra_state: dict | None = None
    on_step_mode: Callable[[str, str | None], None] | None = None  # (mode, fallback reason), once the step is built
    # filled in by fit_stacked
    history: list[dict] = field(default_factory=list)
    error: BaseException | None = None


def check_members(members: list[Member]) -> None:
    """Seeds of one configuration only: same settings but the seed, one model layout."""
    if not members:
        raise BadSetting("a stack needs at least one member")
    first = members[0]
    for m in members[1:]:
        diff = [k for k in SHARED if getattr(m.cfg, k) != getattr(first.cfg, k)]
        if diff:
            raise BadSetting(f"stacked seeds must share {', '.join(diff)}: {[getattr(m.cfg, k) for k in diff]} "
                             f"vs {[getattr(first.cfg, k) for k in diff]}")
        if m.model.config_dict() != first.model.config_dict():
            raise BadSetting("stacked seeds must have the same model configuration")
    ids = [m.cfg.stream.id for m in members]
    if len(set(ids)) != len(ids):
        raise BadSetting("two members of a stack share one random stream: they would be one replicate twice")


def resolve_stacked_step(step_mode: str, device: torch.device) -> str:
    """The stacked step for the seeds' ``step_mode``: compiled on a GPU (``auto``, ``compiled``,
    ``graph``: the stacked step has no uncompiled capture), eager on a CPU or when asked."""
    return "stacked-compiled" if device.type == "cuda" and step_mode != "eager" else "stacked"


# --------------------------------------------------------------------------- dropout masks


class _Masks:
    """The dropout draws of one forward pass, in the order the model makes them.

    ``record``: run the model once and note each draw's (shape, dtype); ``draw``: a seed's masks
    for one batch from its own generator, as the alone model would draw them; inside the
    vmapped step every ``Dropout`` takes the next mask from the list handed in."""

    def __init__(self, model: torch.nn.Module):
        self.sites = [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0]
        self.shapes: list[tuple[tuple[int, ...], torch.dtype]] = []

    def record(self, model, batch: dict, device: torch.device) -> None:
        seen = []

        def note(x):
            seen.append((tuple(x.shape), x.dtype))

        for s in self.sites:
            s.recorder = note
        try:
            model.train()
            with torch.no_grad(), _autocast(device):
                model(batch)
        finally:
            for s in self.sites:
                s.recorder = None
        self.shapes = seen

    def draw(self, generator: torch.Generator, n: int, B: int, p: float, device: torch.device) -> list[torch.Tensor]:
        """A seed's keep masks for a batch of ``n`` real events padded to ``B`` (ones after ``n``)."""
        out = []
        for shape, dtype in self.shapes:
            keep = keep_mask((n, *shape[1:]), p, generator, dtype, device)
            if n < B:
                keep = torch.cat([keep, keep.new_ones((B - n, *shape[1:]))])
            out.append(keep)
        return out

    def ones(self, B: int, device: torch.device) -> list[torch.Tensor]:
        return [torch.ones((B, *shape[1:]), dtype=dtype, device=device) for shape, dtype in self.shapes]

    def supply(self, keeps) -> None:
        it = iter(keeps)
        for s in self.sites:
            s.supplied = it  # each site takes the next mask in call order (sites may be called in any order)

    def clear(self) -> None:
        for s in self.sites:
            s.supplied = None


# --------------------------------------------------------------------------- the loop


def fit_stacked(members: list[Member], train: Tensors, val: Tensors, progress: bool = True,
                compile_backend: str | None = None) -> list[Member]:
    """Train every member (a seed of one configuration) for its ``cfg.epochs``, as one stacked
    model; each member's ``history`` and ``error`` are filled in and the members returned.

    Per member, the same contract as ``training.fit``: weights drawn from its stream unless it
    resumes; a resume refused under another stream (``RunConflict``); a checkpoint written
    before its metrics each epoch; a resumed member's stored history replayed through its
    ``on_epoch`` first; the step mode that runs reported through its ``on_step_mode``.

    ``compile_backend``: compile the step with this ``torch.compile`` backend whatever the
    device (the CPU tests use ``aot_eager``: the same traced graph, no kernels generated);
    default: ``resolve_stacked_step`` (inductor on a GPU)."""
    check_members(members)
    cfg0 = members[0].cfg
    device = resolve_device(cfg0.device)
    mode = "stacked-compiled" if compile_backend else resolve_stacked_step(cfg0.step_mode, device)
    B, N, S = cfg0.batch_size, len(train), len(members)
    steps_per_epoch = math.ceil(N / B)
    total = steps_per_epoch * cfg0.epochs
    schedule = lr_lambda(cfg0.warmup_steps, total)
    base = members[0].model
    start = []
    for m in members:
        m.model.to("cpu")
        opt = make_optimizer(m.model, m.cfg, torch.device("cpu"), "eager")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(m.cfg.warmup_steps, total))
        m._opt, m._sched = opt, sched
        if m.resume_from is None:
            init_weights(m.model, m.cfg.stream.torch_generator("init"))
            m.history = []
            start.append(1)
        else:
            ck = safeload.load(m.resume_from, map_location="cpu")
            why = stream_check(ck.get("stream"), m.cfg.stream)
            if why:
                raise RunConflict(f"refusing to resume from {Path(m.resume_from).name}: {why}")
            m.history = restore_state(ck, m.model, opt, sched, torch.device("cpu"))
            start.append(ck["epoch"] + 1)
            log.info("seed %d resumed from epoch %d", m.cfg.seed, ck["epoch"])
        m.model.to(device)
    for m in members:  # what a member lost, logged once, before anything new
        for h in m.history:
            _call(m, m.on_epoch, h["epoch"], h["metrics"])

    names = [n for n, _ in base.named_parameters()]
    params = {n: torch.stack([dict(m.model.named_parameters())[n].detach() for m in members]).clone() for n in names}  # (S, ...)
    buffers = {n: b for n, b in base.named_buffers()}  # fixed (positions): shared, not stacked
    exp_avg, exp_avg_sq = {}, {}
    steps = torch.zeros(S, dtype=torch.float64)  # optimizer steps done, per seed
    for n in names:
        exp_avg[n] = torch.zeros_like(params[n])
        exp_avg_sq[n] = torch.zeros_like(params[n])
    for s, m in enumerate(members):  # Adam's moments and step of a resumed seed
        plist = list(m.model.parameters())
        for n, p in zip(names, plist, strict=True):
            st = m._opt.state.get(p)
            if st:
                exp_avg[n][s].copy_(st["exp_avg"])
                exp_avg_sq[n][s].copy_(st["exp_avg_sq"])
                steps[s] = float(st["step"])

    p_drop = base.cfg.dropout
    masks = _Masks(base)
    train_dev = train.to(device)
    if masks.sites:
        masks.record(base, train_dev.batch(slice(0, B)), device)

    def loss_one(p, batch, y, w, keeps):  # one seed: its weights, its batch, its masks
        masks.supply(keeps)
        with _autocast(device):
            logits = functional_call(base, (p, buffers), (batch,))
        masks.clear()
        return (F.cross_entropy(logits.float(), y, reduction="none") * w).sum() / w.sum()

    grad_fn = vmap(grad_and_value(loss_one), in_dims=(0, 0, 0, 0, 0), randomness="error")

    def one_step(params, exp_avg, exp_avg_sq, batch, y, w, keeps, factors, act):
        """The whole step, in place on the stacked weights and moments; returns each seed's loss (S,)."""
        grads, loss = grad_fn(params, batch, y, w, keeps)
        _clip_per_seed(grads, cfg0.grad_clip)
        _adamw(params, grads, exp_avg, exp_avg_sq, *factors, act)
        return loss

    step = _Step(one_step, mode, compile_backend)
    noise = [torch.Generator(device=device) for _ in members]
    base.train()
    n_rounds = cfg0.epochs + 1 - min(start)
    like = next(iter(params.values()))
    for r in range(n_rounds):
        epochs = [st + r for st in start]
        active = [m.error is None and e <= cfg0.epochs for m, e in zip(members, epochs, strict=True)]
        if not any(active):
            break
        perms = []
        for s, (m, e) in enumerate(zip(members, epochs, strict=True)):
            if active[s]:
                noise[s].manual_seed(m.cfg.stream.dropout_seed(e))  # masks a function of (stream, epoch), as alone
                perms.append(_order(m, N, e))
            else:
                perms.append(torch.arange(N))
        padded = torch.stack([pm[torch.arange(steps_per_epoch * B) % N] for pm in perms]).to(device)  # (S, steps*B)
        act = torch.tensor(active)  # (S,) on the host, where the step counts are
        act_dev = act.to(device)
        loss_sum = torch.zeros(S, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            check_stop()  # a signalled pack stops within a step; each seed resumes from its last checkpoint
            with step.gate():  # on a GPU, other cells of this process capture only between steps (see training._Gate)
                lo = i * B
                n_real = min(B, N - lo)
                idx = padded[:, lo : lo + B]  # (S, B)
                batch = {k: v[idx] for k, v in train_dev.inputs.items()}  # (S, B, ...)
                y = train_dev.y[idx]  # (S, B)
                w = (torch.arange(B, device=device) < n_real).float().expand(S, B)  # (S, B): the top-up weighs 0
                keeps = [[] for _ in masks.shapes]
                for s in range(S):
                    drawn = masks.draw(noise[s], n_real, B, p_drop, device) if active[s] else masks.ones(B, device)
                    for j, k in enumerate(drawn):
                        keeps[j].append(k)
                keeps = [torch.stack(k) for k in keeps]  # per site (S, B, ...)
                lr = torch.tensor([m.cfg.lr * schedule(int(steps[s])) for s, m in enumerate(members)], dtype=torch.float64)
                factors = _adam_factors(steps, lr, cfg0.weight_decay, like)
                loss = step(params, exp_avg, exp_avg_sq, batch, y, w, keeps, factors, act_dev)
            if i == 0 and r == 0:  # once built: each seed's run says what runs (outside the gate: these are MLflow calls)
                for m in members:
                    _call(m, m.on_step_mode, step.mode, step.fallback)
            steps += act.double()
            loss_sum += loss.detach().double() * n_real
        losses = loss_sum.cpu().tolist()
        train_time = time.perf_counter() - t0
        for s, m in enumerate(members):
            if not active[s]:
                continue
            e = epochs[s]
            _unstack(m, s, names, params, exp_avg, exp_avg_sq, steps)
            m._sched.last_epoch = int(steps[s])  # the scheduler's bookkeeping as fit's eager loop leaves it
            _set_scheduled_lr(m._opt, m._sched)
            m._sched._last_lr = [g["lr"] for g in m._opt.param_groups]
            ev = evaluate(m.model, val, device, m.cfg.eval_batch_size)
            metrics = {"train_loss": losses[s] / N, "val_loss": ev["loss"], "val_auc": ev["auc"], "val_acc": ev["acc"],
                       "lr": float(m._sched._last_lr[0]), "events_per_s": N / train_time}
            m.history.append({"epoch": e, "metrics": metrics})
            state = {**saved_state(m.model, m._opt, m._sched, e, m.history, m.cfg.stream),
                     "train_config": {**asdict(m.cfg), "step_mode": step.mode}, "model_config": m.model.config_dict(),
                     **(m.extra_state or {})}
            _atomic_save(state, m.checkpoint_path)
            _call(m, m.on_checkpoint, m.checkpoint_path)
            _call(m, m.on_epoch, e, metrics)
            log.info("seed %d epoch %d/%d train_loss %.4f val_auc %.4f (%.0f events/s for %d seeds)", m.cfg.seed, e, cfg0.epochs,
                     metrics["train_loss"], metrics["val_auc"], S * N / train_time, sum(active))
        base.train()
    for m in members:
        for attr in ("_opt", "_sched"):
            if hasattr(m, attr):
                delattr(m, attr)
    return members


class _Step:
    """``one_step``, eager or compiled. The compiled one is built at its first call, one build at
    a time in the process (torch.compile is not thread-safe; see ``training._Gate``), with room
    under torch's recompile limit for one more configuration (past it, a configuration would run
    uncompiled unsaid). A build that fails runs that step, and the rest, eagerly: ``fallback``
    says why (the step's inputs are untouched until the compiled update runs)."""

    def __init__(self, fn, mode: str, backend: str | None):
        self.fn, self.mode, self.backend = fn, mode, backend
        self.fallback: str | None = None
        self._built = mode == "stacked"

    def gate(self):
        """Around each step: exclusive while the step is built, shared afterwards."""
        return _GATE.shared() if self._built else _GATE.exclusive()

    def __call__(self, *args):  # inside ``gate()``
        if self._built:
            return self.fn(*args)
        one_more_compiled()
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(self.fn, backend=self.backend or "inductor", dynamic=False)
            out = compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step is the same science
            self.fallback = f"torch.compile failed ({first_line(e)})"
            log.warning("%s; the stacked step runs eagerly", self.fallback)
            self.mode = "stacked"
            out = self.fn(*args)
        else:
            self.fn = compiled
            log.info("stacked step compiled in %.1f s", time.perf_counter() - t0)
        self._built = True
        return out


def _order(m: Member, n: int, epoch: int) -> torch.Tensor:
    """A member's event order in ``epoch``: its own stream's, as alone."""
    return m.cfg.stream.epoch_order(n, epoch)


def _call(m: Member, fn, *args) -> None:
    """A member's callback; if it raises, the member leaves the stack with that error."""
    if fn is None or m.error is not None:
        return
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - the member's own failure (lease lost, ...), returned in its place
        m.error = e
        log.warning("seed %d leaves the stack: %s: %s", m.cfg.seed, type(e).__name__, e)


def _clip_per_seed(grads: dict, max_norm: float) -> None:
    """``clip_grad_norm_`` per seed: each seed's total norm over its own gradients only."""
    per = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], dim=1)  # (S, n_params)
    total = torch.linalg.vector_norm(per, dim=1)  # (S,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


def _adam_factors(steps: torch.Tensor, lr: torch.Tensor, weight_decay: float, like: torch.Tensor) -> tuple:
    """This update's per-seed AdamW factors (S,) from the step counts and LRs (float64 on the
    host), rounded once to the weights' dtype as AdamW's Python scalars are: weight decay, the
    square root of the second moment's bias correction, and the step size."""
    b1, b2 = BETAS
    t = steps + 1  # this update's step number
    return tuple(x.to(like.dtype).to(like.device) for x in (1 - lr * weight_decay, (1 - b2**t).sqrt(), lr / (1 - b1**t)))


def _adamw(params, grads, exp_avg, exp_avg_sq, decay, bc2_sqrt, step_size, active) -> None:
    """``torch.optim.AdamW``'s update, per seed: its own LR, its own step (bias correction) in the
    factors; a seed not ``active`` keeps its weights and moments."""
    b1, b2 = BETAS
    for n, p in params.items():
        shape = (-1, *([1] * (p.dim() - 1)))
        a = active.view(shape)
        g = grads[n]
        new_p = p * decay.view(shape)
        m = exp_avg[n].lerp(g, 1 - b1)
        v = torch.addcmul(exp_avg_sq[n] * b2, g, g, value=1 - b2)
        denom = v.sqrt() / bc2_sqrt.view(shape) + EPS
        new_p = new_p - step_size.view(shape) * (m / denom)
        p.copy_(torch.where(a, new_p, p))
        exp_avg[n].copy_(torch.where(a, m, exp_avg[n]))
        exp_avg_sq[n].copy_(torch.where(a, v, exp_avg_sq[n]))


@torch.no_grad()
def _unstack(m: Member, s: int, names, params, exp_avg, exp_avg_sq, steps) -> None:
    """Seed ``s``'s slice into its own model and optimizer, as ``training.fit`` would hold them."""
    plist = list(m.model.parameters())
    for n, p in zip(names, plist, strict=True):
        p.copy_(params[n][s])
        st = m._opt.state.setdefault(p, {})
        st["step"] = torch.tensor(float(steps[s]), dtype=torch.float32)
        st["exp_avg"] = exp_avg[n][s].detach().clone()  # on the weight's device, as fit's optimizer keeps it
        st["exp_avg_sq"] = exp_avg_sq[n][s].detach().clone()
