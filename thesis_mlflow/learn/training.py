"""Training loop: AdamW, warm-up + cosine, clipping, per-epoch evaluation, exact resume.

MLflow-free: the caller passes ``on_epoch(epoch, metrics)`` and ``on_checkpoint(path)``
callbacks (the train step logs through them). Order each epoch: checkpoint first, then
metrics. A resumed run replays the metric history stored in the checkpoint through
``on_epoch`` so the caller can log exactly the epochs it has not logged yet.

Randomness: ``fit`` owns every random draw of the run, all from the run's own stream
(``cfg.stream``, see ``thesis_mlflow.spec.RunStream``): the initial weights (unless resuming), each
epoch's event order, and dropout through a generator owned by the run (reseeded from the stream
at each epoch's start, registered with the captured graph). Nothing here seeds or reads torch's,
numpy's or Python's process-wide generators, so cells trained side by side in threads give the
same result as each trained alone.

Two ways to run one optimisation step, same science (model, data order, optimizer, schedule,
number of steps), different kernels:

- ``eager``: one Python pass per batch. The CPU path (bit-for-bit reproducible, resumes
  exactly) and the fallback on GPUs.
- ``graph`` / ``compiled``: the whole step (batch gather, forward, backward, clipping, fused
  AdamW, the LR schedule as a device tensor) captured once as a CUDA graph and replayed per
  batch, optionally with the model ``torch.compile``d first. At batch 64 the eager step is
  bound by kernel launches and host syncs (the model needs ~40 MFLOP per event, the card does
  hundreds of TFLOP/s); a replay is one launch. Shapes are static: the last partial batch of an
  epoch is topped up with real events of weight 0, so it is neither dropped nor recompiled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from thesis_mlflow.errors import BadSetting, RunConflict, Stopped, Unavailable
from thesis_mlflow.learn import safeload
from thesis_mlflow.learn.features import Tensors
from thesis_mlflow.learn.metrics import binary_metrics
from thesis_mlflow.learn.model import init_weights
from thesis_mlflow.spec import (
    SCHEME,
    RunStream,
    TrainConfig,  # noqa: F401 - declared with the cell's settings; imported from here too
    stream_check,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the LR schedule
# The learning rate per optimizer step: linear warm-up, then cosine to zero. Both functions are
# the same formula: ``lr_lambda`` for ``LambdaLR`` (eager loop, the checkpoint's scheduler state),
# ``lr_factor`` on a float64 device tensor inside a captured CUDA graph. Tests pin them to values
# at named steps, not only to each other. (Each epoch's event order is the run's random stream's:
# ``spec.RunStream.epoch_order``.)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def lr_factor(step: torch.Tensor, warmup: int, total: int) -> torch.Tensor:
    """``lr_lambda`` on a device tensor (float64), so a captured graph computes its own LR."""
    warm = (step + 1) / max(warmup, 1)
    progress = ((step - warmup) / max(1, total - warmup)).clamp(max=1.0)
    return torch.where(step < warmup, warm, 0.5 * (1 + torch.cos(math.pi * progress)))


# Set when the process is asked to stop (``request_stop``): every fit of the process, in any
# thread, raises ``Stopped`` at its next step. Signals reach only the main thread, and a pack's
# cells train in others: without this, SIGTERM waited for every cell to finish (hours).
STOP = threading.Event()


def request_stop() -> None:
    STOP.set()


def clear_stop() -> None:
    """Every fit that was asked to stop has: a later fit of this process (a notebook's next grid)
    trains again."""
    STOP.clear()


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped("asked to stop (signal): the run resumes from its last checkpoint")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Unavailable("device=cuda requested but no CUDA device is available")
    return torch.device(name)


def resolve_step(step: str, device: torch.device) -> str:
    """The step mode actually used: ``auto`` picks the fastest that works on ``device``."""
    if step == "auto":
        if device.type != "cuda":
            return "eager"
        return "compiled" if importlib.util.find_spec("triton") is not None else "graph"
    if step in ("graph", "compiled") and device.type != "cuda":
        raise BadSetting(f"step_mode={step} needs a CUDA device (CUDA graphs); use eager or auto on {device.type}")
    return step


def raise_recompile_limit(n_models: int) -> int:
    """Let torch.compile build ``n_models`` different models in this process: past its recompile
    limit (8 by default) a model would run uncompiled while its run still says ``compiled``.
    Returns the limit now set (never lowered)."""
    import torch._dynamo  # lazy: only where something is compiled

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    limit = max(getattr(cfg, name), 2 * n_models + 8)  # two graphs per model (train step, capture) and room
    setattr(cfg, name, limit)
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * limit)
    return limit


_COMPILED = [0]  # models torch.compile has been handed in this process (each cell or stack is one more)
_COMPILED_LOCK = threading.Lock()


def one_more_compiled() -> int:
    """Count one more model about to be compiled in this process and keep the recompile limit
    above the count: called by every path that compiles (the per-cell ``StaticStep``, the
    stacked step), so no driver has to know up front how many models a process will build."""
    with _COMPILED_LOCK:
        _COMPILED[0] += 1
        return raise_recompile_limit(_COMPILED[0])


def signal_scores(logits: torch.Tensor) -> torch.Tensor:
    """Signal (4t) probability: class 1 of the binary tasks, class 0 (label 1) of multiclass."""
    p = torch.softmax(logits.float(), dim=-1)
    return p[:, 1] if p.shape[1] == 2 else p[:, 0]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Tensors, device: torch.device, batch_size: int) -> dict:
    """Loss, accuracy, AUC and the per-event signal scores of one split (eager model: few, large batches)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    scores, probs = [], []
    multiclass = model.cfg.n_classes > 2
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        with _autocast(device):
            logits = model(data.batch(sl, device))
        y = data.y[sl].to(device)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(-1) == y).sum()
        scores.append(signal_scores(logits))
        if multiclass:
            probs.append(torch.softmax(logits.float(), dim=-1))
    s = torch.cat(scores).cpu().numpy()  # one host sync per split
    is_sig = (data.y.numpy() == (0 if multiclass else 1))
    out = {"loss": loss_sum.item() / len(data), "acc": correct.item() / len(data), "scores": s, "is_signal": is_sig,
           **binary_metrics(is_sig, s)}
    if multiclass:  # (N, 5) class probabilities: one-vs-rest AUC per process
        out["probs"] = torch.cat(probs).cpu().numpy()
    return out


def _autocast(device: torch.device):
    # bf16 on GPUs (no loss scaling needed); plain fp32 on the CPU, where it is deterministic.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


# --------------------------------------------------------------------------- steps


class EagerStep:
    """Today's loop, one Python pass per batch; the loss is summed on the device (no sync)."""

    mode, fallback = "eager", None

    def __init__(self, model, opt, sched, train: Tensors, cfg: TrainConfig, device: torch.device):
        self.model, self.opt, self.sched, self.train, self.cfg, self.device = model, opt, sched, train, cfg, device
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)

    def epoch(self, perm: torch.Tensor, tick: Callable[[], None]) -> torch.Tensor:
        """One epoch in the order ``perm``; returns the summed (not mean) training loss."""
        perm = perm.to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        params = list(self.model.parameters())
        B = self.cfg.batch_size
        for i in range(0, self.steps_per_epoch * B, B):
            idx = perm[i : i + B]
            with _autocast(self.device):
                logits = self.model(self.train.batch(idx))
            loss = F.cross_entropy(logits.float(), self.train.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            total += loss.detach().double() * len(idx)
            tick()
        return total


class StaticStep:
    """The step on static tensors: batch ``pos`` of the padded order ``self.perm`` -> one update.

    Every input of a step lives in a tensor allocated once (the epoch's order, the batch
    offset, the LR step, the loss accumulator), so the step can be captured as a CUDA graph
    and replayed; called without capture (``capture=False``) it runs the same arithmetic
    eagerly, which is how the CPU tests check it against the eager loop.
    """

    fallback: str | None = None  # why ``compiled`` was asked for and this runs uncompiled

    def __init__(self, model, opt, sched, train: Tensors, cfg: TrainConfig, device: torch.device, compile_model: bool = False,
                 capture: bool = True, noise: torch.Generator | None = None):
        self.model, self.opt, self.sched, self.train, self.cfg, self.device = model, opt, sched, train, cfg, device
        self.noise = noise  # the run's dropout generator: registered with the graph, so each replay draws from it
        B, N = cfg.batch_size, len(train)
        self.steps_per_epoch = math.ceil(N / B)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.perm = torch.zeros(self.steps_per_epoch * B, dtype=torch.int64, device=device)  # (S*B,) this epoch's order, padded
        self.offsets = torch.arange(B, device=device)  # (B,)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)  # start of the next batch in perm
        self.lr_step = torch.zeros((), dtype=torch.float64, device=device)  # optimizer steps done (the schedule's x)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.lr = opt.param_groups[0]["lr"]
        assert torch.is_tensor(self.lr), "StaticStep needs an optimizer whose lr is a tensor"
        self.base_lr = cfg.lr
        self.params = list(model.parameters())
        if compile_model:
            one_more_compiled()
        self.forward = torch.compile(model, dynamic=False) if compile_model else model
        self.mode = "compiled" if compile_model else "graph"
        self.graph = None
        self.lr_step.fill_(float(sched.last_epoch))
        if capture:
            self._capture()

    def _step(self) -> None:
        B, N = self.cfg.batch_size, len(self.train)
        at = self.pos + self.offsets  # (B,) positions in the padded order
        idx = self.perm[at]  # (B,) event indices; the top-up of the last batch repeats real events
        w = (at < N).float()  # (B,) 1 for this epoch's events, 0 for the top-up
        batch = {k: v[idx] for k, v in self.train.inputs.items()}
        with _autocast(self.device):
            logits = self.forward(batch)  # (B, n_classes)
        n_real = w.sum()
        loss = (F.cross_entropy(logits.float(), self.train.y[idx], reduction="none") * w).sum() / n_real  # mean over real events
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.lr.copy_(self.base_lr * lr_factor(self.lr_step, self.cfg.warmup_steps, self.total_steps))
        self.opt.step()
        self.lr_step += 1
        self.pos += B
        self.loss_sum += loss.detach().double() * n_real

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.params, *self.model.buffers(), self.pos, self.lr_step, self.loss_sum, self.lr]

    @torch.no_grad()
    def _restore(self, saved: list[torch.Tensor], opt_saved: dict) -> None:
        for t, v in zip(self._state_tensors(), saved, strict=True):
            t.copy_(v)
        for st in self.opt.state.values():
            for t in st.values():
                if torch.is_tensor(t) and id(t) in opt_saved:
                    t.copy_(opt_saved[id(t)])
                elif torch.is_tensor(t):
                    t.zero_()  # made by the warm-up: a fresh AdamW state is all zeros

    def _capture(self) -> None:
        """Warm up on a side stream (compiles, allocates the optimizer state), undo the warm-up's
        updates in place, then capture one step (PyTorch's "whole network capture")."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self._state_tensors()]
            opt_saved = {id(t): t.clone() for st in self.opt.state.values() for t in st.values() if torch.is_tensor(t)}
        rng = self.noise.get_state() if self.noise is not None else None
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(s):
                for _ in range(3):
                    self.opt.zero_grad(set_to_none=True)
                    self._step()
        finally:  # also when compiling fails: the caller may fall back on the same model
            torch.cuda.current_stream(self.device).wait_stream(s)
            torch.cuda.synchronize(self.device)
            self._restore(saved, opt_saved)
            if rng is not None:  # the warm-up's draws undone too
                self.noise.set_state(rng)
        self.opt.zero_grad(set_to_none=True)  # grads are then allocated from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        if self.noise is not None:  # replays advance this run's generator, not the process-wide one
            self.graph.register_generator_state(self.noise)
        # thread_local: cells trained side by side in threads keep launching work on their own
        # streams while this one captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._step()

    def epoch(self, perm: torch.Tensor, tick: Callable[[], None]) -> torch.Tensor:
        N, padded = len(self.train), self.perm.numel()
        self.perm.copy_(perm[torch.arange(padded) % N])  # the last batch topped up from the epoch's start
        self.pos.zero_()
        self.loss_sum.zero_()
        for _ in range(self.steps_per_epoch):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.opt.zero_grad(set_to_none=True)
                self._step()
            tick()
        return self.loss_sum


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, mode: str) -> torch.optim.Optimizer:
    """AdamW: the CPU default on the CPU (unchanged results); fused on CUDA; capturable with a
    tensor LR for the captured step (the graph writes the LR itself)."""
    if mode in ("graph", "compiled"):
        lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True, capturable=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)


def _load_optimizer(opt: torch.optim.Optimizer, state: dict, device: torch.device) -> None:
    """Load a checkpoint's optimizer state into ``opt`` whichever step mode wrote it: the
    group's own flags (fused, capturable, float or tensor LR) stay those of ``opt``."""
    keep = [{k: g[k] for k in ("lr", "fused", "capturable", "foreach") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, kept in zip(opt.param_groups, keep, strict=True):
        saved_lr = g["lr"]
        g.update(kept)
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(float(saved_lr))
        else:
            g["lr"] = float(saved_lr)
        on_device = g.get("fused") or g.get("capturable")
        for p in g["params"]:
            st = opt.state.get(p, {})
            if "step" in st:
                st["step"] = st["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


# --------------------------------------------------------------------------- loop


def fit(
    model: torch.nn.Module,
    train: Tensors,
    val: Tensors,
    cfg: TrainConfig,
    checkpoint_path: Path,
    resume_from: Path | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    progress: bool = True,
    extra_state: dict | None = None,
    on_step_mode: Callable[[str, str | None], None] | None = None,
) -> list[dict]:
    """Train for ``cfg.epochs`` epochs (numbered 1..epochs); returns the metric history.

    ``on_step_mode(mode, fallback)``: the step mode actually used, once it is built (``compiled``
    may fall back to ``graph``: ``fallback`` then says why).

    ``resume_from``: a checkpoint written by this function; training continues at the next
    epoch with the saved model, optimizer and scheduler states, so the result equals an
    uninterrupted run (bit-for-bit on the CPU; on CUDA within bf16 rounding): the order and
    the dropout generator are functions of (stream, epoch). A checkpoint written under another
    random stream or scheme is refused (``RunConflict``).

    Without ``resume_from`` the model's weights are drawn afresh from the stream's ``init``
    generator: whatever the caller's model held is replaced.
    """
    device = resolve_device(cfg.device)
    mode = resolve_step(cfg.step_mode, device)
    stream = cfg.stream
    if resume_from is None:
        init_weights(model.cpu(), stream.torch_generator("init"))
    model.to(device)
    noise = torch.Generator(device=device)  # the run's dropout generator, reseeded per epoch below
    model.set_noise(noise)
    opt = make_optimizer(model, cfg, device, mode)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, steps_per_epoch * cfg.epochs))
    sched.base_lrs = [cfg.lr]  # a number even when the captured step's optimizer holds its LR in a tensor
    history: list[dict] = []
    start = 1
    if resume_from is not None:
        ck = safeload.load(resume_from, map_location=device)
        why = stream_check(ck.get("stream"), stream)
        if why:
            raise RunConflict(f"refusing to resume from {Path(resume_from).name}: {why}")
        history = restore_state(ck, model, opt, sched, device)
        start = ck["epoch"] + 1
        log.info("resumed from epoch %d", ck["epoch"])
        for h in history:  # let the caller log what it lost (each epoch once)
            if on_epoch:
                on_epoch(h["epoch"], h["metrics"])
    if start > cfg.epochs:
        return history
    train_dev = train.to(device)
    model.train()
    t_build = time.perf_counter()
    with _GATE.exclusive():  # compile and capture one cell at a time, while no other cell's step runs (see _Gate)
        stepper = build_step(model, opt, sched, train_dev, cfg, device, mode, noise)
    mode = stepper.mode  # what runs, after any fallback
    if mode != "eager":
        log.info("training step: %s (captured in %.1f s)", mode, time.perf_counter() - t_build)
    if on_step_mode:
        on_step_mode(mode, stepper.fallback)
    for epoch in range(start, cfg.epochs + 1):
        model.train()
        with _GATE.shared():
            noise.manual_seed(stream.dropout_seed(epoch))  # masks a function of (stream, epoch): a resume redraws them
            _sync(device)
            t0 = time.perf_counter()
            check_stop()
            bar = _progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", progress)
            loss_sum = stepper.epoch(stream.epoch_order(len(train), epoch), _ticking(bar))
            train_loss = loss_sum.item() / len(train)  # the epoch's one host sync
            train_time = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if mode != "eager":  # keep the scheduler's bookkeeping (and so the checkpoint) as the eager loop has it
            sched.last_epoch += steps_per_epoch
            sched._last_lr = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        ev = evaluate(model, val, device, cfg.eval_batch_size)
        metrics = {"train_loss": train_loss, "val_loss": ev["loss"], "val_auc": ev["auc"], "val_acc": ev["acc"],
                   "lr": float(sched.get_last_lr()[0]), "events_per_s": len(train) / train_time}
        history.append({"epoch": epoch, "metrics": metrics})
        state = {**saved_state(model, opt, sched, epoch, history, stream), "train_config": {**asdict(cfg), "step_mode": mode},
                 "model_config": model.config_dict(), **(extra_state or {})}
        _atomic_save(state, checkpoint_path)
        if on_checkpoint:
            on_checkpoint(checkpoint_path)
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f (%.0f events/s)", epoch, cfg.epochs,
                 metrics["train_loss"], metrics["val_loss"], metrics["val_auc"], metrics["events_per_s"])
        if on_epoch:
            on_epoch(epoch, metrics)
    return history


# --------------------------------------------------------------------------- checkpoint: save and restore, a matched pair


def saved_state(model, opt, sched, epoch: int, history: list[dict], stream: RunStream) -> dict:
    """What a checkpoint holds to continue exactly after ``epoch``: model, optimizer (Adam's
    moments and step), scheduler, the metric history, and which random stream wrote it (the
    draws after ``epoch`` are functions of that stream and the epoch, so no generator state is
    needed). ``restore_state`` reads it."""
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
        "stream": {"scheme": SCHEME, "id": stream.id, "key": stream.key, "seed": int(stream.seed)},
        "history": history,
    }


def restore_state(ck: dict, model, opt, sched, device: torch.device) -> list[dict]:
    """Put ``saved_state``'s checkpoint back into a fresh model / optimizer / scheduler on
    ``device``, whichever step mode wrote it; returns the metric history."""
    model.load_state_dict(ck["model"])
    _load_optimizer(opt, ck["optimizer"], device)
    sched.load_state_dict(ck["scheduler"])
    sched.base_lrs = [float(b) for b in sched.base_lrs]  # plain numbers whichever step mode saved them
    _set_scheduled_lr(opt, sched)  # a captured step leaves the previous step's LR in the group: the next one is the schedule's
    return ck["history"]


class _Gate:
    """Cells trained side by side in threads of one process: each draws from its own generator,
    but capture puts CUDA state in capture mode process-wide, and with the shared default
    generator another cell's step raised "Offset increment outside graph capture" while one
    graph was captured (seen on an H100, before per-run generators). So building a step (compile, warm-up, capture) is exclusive and the
    epochs are shared: a build waits for the epochs under way to end, and holds new ones back
    until it is done (writer-preferring, so builds are not starved). Torch.compile is not
    thread-safe either: one build at a time covers that too."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._waiting_writers)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_writers += 1
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


_GATE = _Gate()


def build_step(model, opt, sched, train: Tensors, cfg: TrainConfig, device: torch.device, mode: str,
               noise: torch.Generator | None = None):
    """The step object of ``mode`` (its ``mode`` attribute says what runs); ``compiled`` falls
    back to ``graph`` (with a warning, and the reason in ``fallback``) when torch.compile fails
    here, e.g. a cluster node without a working Triton."""
    if mode == "eager":
        return EagerStep(model, opt, sched, train, cfg, device)
    if mode == "compiled":
        try:
            return StaticStep(model, opt, sched, train, cfg, device, compile_model=True, noise=noise)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the uncompiled graph is the same science
            if cfg.step_mode == "compiled":
                raise
            why = f"torch.compile failed ({first_line(e)})"
            log.warning("%s; using the uncompiled CUDA graph", why)
            opt.zero_grad(set_to_none=True)
            step = StaticStep(model, opt, sched, train, cfg, device, compile_model=False, noise=noise)
            step.fallback = why
            return step
    return StaticStep(model, opt, sched, train, cfg, device, compile_model=False, noise=noise)


def first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (just the type when the message is empty)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


def _set_scheduled_lr(opt: torch.optim.Optimizer, sched) -> None:
    """Each group's LR as the schedule has it now (float or tensor, as the group holds it)."""
    for g, base, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
        lr = base * f(sched.last_epoch)
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def _sync(device: torch.device) -> None:
    """Wait for this thread's stream only: cells trained side by side on other streams go on."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _ticking(bar) -> Callable[[], None]:
    """After each step: stop when asked (``STOP``), advance the progress bar."""
    if bar is None:
        return check_stop

    def tick() -> None:
        check_stop()
        bar.update()

    return tick


def _atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # On a terminal a live bar; in a batch job's log a line every 30 s instead of a flood.
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0, disable=None)
