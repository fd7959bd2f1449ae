"""The training schedule, pure and small: the learning rate per optimizer step (linear
warm-up, then cosine to zero) on the host and on the device. (Each epoch's event order is the
run's random stream's: ``streams.RunStream.epoch_order``.)

Both LR functions are the same formula: ``lr_lambda`` for ``LambdaLR`` (eager loop, the
checkpoint's scheduler state), ``lr_factor`` on a float64 device tensor inside a captured CUDA
graph. Tests pin them to values at named steps, not only to each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


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

