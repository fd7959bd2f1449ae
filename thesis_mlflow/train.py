"""Training loop: AdamW, warm-up + cosine, clipping, per-epoch evaluation, exact resume.

MLflow-free: the caller passes ``on_epoch(epoch, metrics)`` and ``on_checkpoint(path)``
callbacks (the train step logs through them). Order each epoch: checkpoint first, then
metrics. A resumed run replays the metric history stored in the checkpoint through
``on_epoch`` so the caller can log exactly the epochs it has not logged yet.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from .features import Tensors

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 50  # fixed budget, no early stopping (the study compares at equal training)
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # cuda when present (bf16 autocast), else cpu
    eval_batch_size: int = 4096

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number; got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0 and grad_clip > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of auto, cpu, cuda; got {self.device!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


# --------------------------------------------------------------------------- metrics


def signal_scores(logits: torch.Tensor) -> torch.Tensor:
    """Signal (4t) probability: class 1 of the binary tasks, class 0 (label 1) of multiclass."""
    p = torch.softmax(logits.float(), dim=-1)
    return p[:, 1] if p.shape[1] == 2 else p[:, 0]


def rejection_at(is_signal: np.ndarray, scores: np.ndarray, eff: float) -> float:
    """Background rejection 1/eps_B at signal efficiency ``eff`` (bounded by 1/N_bkg)."""
    fpr, tpr, _ = roc_curve(is_signal, scores)
    eps_b = float(np.interp(eff, tpr, fpr))
    n_bkg = max(int((~is_signal.astype(bool)).sum()), 1)
    return 1.0 / max(eps_b, 1.0 / n_bkg)


def binary_metrics(is_signal: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    is_signal = is_signal.astype(bool)
    if is_signal.all() or (~is_signal).all():
        return {"auc": float("nan"), "rej50": float("nan"), "rej70": float("nan")}
    return {"auc": float(roc_auc_score(is_signal, scores)), "rej50": rejection_at(is_signal, scores, 0.5),
            "rej70": rejection_at(is_signal, scores, 0.7)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Tensors, device: torch.device, batch_size: int) -> dict:
    """Loss, accuracy, AUC and the per-event signal scores of one split."""
    model.eval()
    losses, scores, correct = 0.0, [], 0
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        with _autocast(device):
            logits = model(data.batch(sl, device))
        y = data.y[sl].to(device)
        losses += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        scores.append(signal_scores(logits).cpu())
    s = torch.cat(scores).numpy()
    n_cls = model.cfg.n_classes
    is_sig = (data.y.numpy() == (1 if n_cls == 2 else 0))
    return {"loss": losses / len(data), "acc": correct / len(data), "scores": s, "is_signal": is_sig, **binary_metrics(is_sig, s)}


def _autocast(device: torch.device):
    # bf16 on GPUs (no loss scaling needed); plain fp32 on the CPU, where it is deterministic.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


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
) -> list[dict]:
    """Train for ``cfg.epochs`` epochs (numbered 1..epochs); returns the metric history.

    ``resume_from``: a checkpoint written by this function; training continues at the next
    epoch with the saved model, optimizer, scheduler and RNG states, so the result equals
    an uninterrupted run.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, steps_per_epoch * cfg.epochs))
    history: list[dict] = []
    start = 1
    if resume_from is not None:
        ck = torch.load(resume_from, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        history = ck["history"]
        start = ck["epoch"] + 1
        log.info("resumed from epoch %d", ck["epoch"])
        for h in history:  # let the caller log what it lost (each epoch once)
            if on_epoch:
                on_epoch(h["epoch"], h["metrics"])
    train_dev = train.to(device)
    for epoch in range(start, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # per-epoch order, resume-proof
        perm = torch.randperm(len(train), generator=g).to(device)
        total, n_seen = 0.0, 0
        bar = _progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", progress)
        for i in range(0, len(train), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            with _autocast(device):
                logits = model(train_dev.batch(idx))
            loss = F.cross_entropy(logits.float(), train_dev.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n_seen += len(idx)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        ev = evaluate(model, val, device, cfg.eval_batch_size)
        metrics = {"train_loss": total / n_seen, "val_loss": ev["loss"], "val_auc": ev["auc"], "val_acc": ev["acc"],
                   "lr": opt.param_groups[0]["lr"], "events_per_s": n_seen / train_time}
        history.append({"epoch": epoch, "metrics": metrics})
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                    "numpy": np.random.get_state(), "python": random.getstate()},
            "history": history, "train_config": asdict(cfg), "model_config": model.config_dict(), **(extra_state or {}),
        }
        _atomic_save(state, checkpoint_path)
        if on_checkpoint:
            on_checkpoint(checkpoint_path)
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f (%.0f events/s)", epoch, cfg.epochs,
                 metrics["train_loss"], metrics["val_loss"], metrics["val_auc"], metrics["events_per_s"])
        if on_epoch:
            on_epoch(epoch, metrics)
    return history


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
