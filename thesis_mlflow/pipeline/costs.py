"""What one attempt of a cell cost, measured where it ran and logged as ``cost.*`` metrics on its run.

Every cell logs them, real or rehearsed: a rehearsal (``thesis-mlflow grid rehearse``) turns a
rehearsed cell's into a forecast of the full run, and the forecast benchmark compares that forecast
with the same metrics of cells that ran for real. Only what the cell itself can see is here; the
artifacts' sizes are read back from the store (``forecast.measured``).

- ``cost.setup_s``: from the cell's start to its first training step's epoch (inputs built,
  upstream files fetched, model made; a resume's checkpoint download too)
- ``cost.inputs_s_per_1k``: building the inputs (reading the events, encoding them with the VQ-VAE)
  per 1,000 events: the part of the setup that grows with the events
- ``cost.epoch_train_s``: the training part of the last epoch trained here, steps only (the
  first epoch of an attempt carries warm-up, compile and capture: it is not the steady pace)
- ``cost.steps_per_epoch``: the steps of that epoch
- ``cost.warmup_s``: how much longer the attempt's first epoch took, from the start of training to
  its end, than a steady one: building, compiling and capturing the step and the first epoch's
  warm-up; a fixed cost per attempt (with one epoch: the training part's excess only, 0)
- ``cost.eval_s_per_1k``: seconds per 1,000 events evaluated (the final train and test passes)
- ``cost.tracking_s_per_epoch`` and ``cost.tracking_calls_per_epoch``: time in, and number of,
  tracking calls per epoch (metrics, checkpoint upload, log upload)
- ``cost.peak_rss_mb``: the process's peak resident memory so far (a pack's process holds all its
  cells: the pack's peak); on CUDA also ``cost.cuda_peak_mb`` (``max_memory_allocated``)
- ``cost.train_mb_per_1k``: the training tensors' memory per 1,000 events (to extrapolate the data
  a full-size cell holds)
- ``cost.wall_s``: the attempt's wall time, start to end
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

PREFIX = "cost."


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def cuda_peak_mb() -> float | None:
    """The largest memory PyTorch's allocator held on this process's GPU, MiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / (1 << 20)


@dataclass
class CostMeter:
    """One attempt of one cell, timed from its construction. Thread-safe enough for its use: each
    cell (thread) has its own meter."""

    start: float = field(default_factory=lambda: time.perf_counter())  # looked up at each call: a test may set the clock
    fit_start: float | None = None
    epoch_train_s: list[float] = field(default_factory=list)  # this attempt's epochs, training steps only
    epoch_ends: list[float] = field(default_factory=list)  # when each of them was logged (perf_counter)
    steps_per_epoch: int = 0
    tracking_s: float = 0.0
    tracking_calls: int = 0
    eval_s: float = 0.0
    eval_events: int = 0
    train_bytes_per_event: float = 0.0
    inputs_s: float = 0.0
    input_events: int = 0

    def inputs(self, seconds: float, events: int) -> None:
        """The inputs were built: ``events`` events of every split in ``seconds``."""
        self.inputs_s, self.input_events = seconds, events

    def fitting(self) -> None:
        """Training starts now (inputs built, the model made)."""
        if self.fit_start is None:
            self.fit_start = time.perf_counter()

    def epoch(self, events: int, events_per_s: float, batch_size: int) -> None:
        """An epoch trained here, as fit reports it (events and their rate)."""
        if events_per_s > 0:
            self.epoch_train_s.append(events / events_per_s)
            self.epoch_ends.append(time.perf_counter())
            self.steps_per_epoch = -(-events // batch_size)

    def tracking(self, calls: int = 1):
        """Time spent logging (``calls`` tracking calls inside)."""
        return self._timed("tracking_s", "tracking_calls", calls)

    def evaluating(self, events: int):
        """Time spent evaluating ``events`` events."""
        return self._timed("eval_s", "eval_events", events)

    @contextmanager
    def _timed(self, seconds: str, count: str, n: int) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, seconds, getattr(self, seconds) + time.perf_counter() - t)
            setattr(self, count, getattr(self, count) + n)

    def metrics(self) -> dict[str, float]:
        """The ``cost.*`` metrics of this attempt (only those it measured)."""
        now = time.perf_counter()
        out = {"wall_s": now - self.start, "peak_rss_mb": peak_rss_mb()}
        if self.fit_start is not None:
            out["setup_s"] = self.fit_start - self.start
        n = len(self.epoch_train_s)
        if n:
            out["epoch_train_s"] = self.epoch_train_s[-1]
            out["steps_per_epoch"] = float(self.steps_per_epoch)
            if n > 1 and self.fit_start is not None:  # whole epochs (training, validation, checkpoint, logging)
                ends = self.epoch_ends
                steady = (ends[-1] - ends[0]) / (n - 1)
                out["warmup_s"] = max(0.0, (ends[0] - self.fit_start) - steady)
            else:
                out["warmup_s"] = 0.0
            out["tracking_s_per_epoch"] = self.tracking_s / n
            out["tracking_calls_per_epoch"] = self.tracking_calls / n
        if self.eval_events:
            out["eval_s_per_1k"] = 1000 * self.eval_s / self.eval_events
        if self.input_events:
            out["inputs_s_per_1k"] = 1000 * self.inputs_s / self.input_events
        if self.train_bytes_per_event:
            out["train_mb_per_1k"] = 1000 * self.train_bytes_per_event / (1 << 20)
        cuda = cuda_peak_mb()
        if cuda is not None:
            out["cuda_peak_mb"] = cuda
        return {PREFIX + k: float(v) for k, v in out.items()}


def tensor_bytes(tens) -> int:
    """Bytes held by a ``features.Tensors`` (its inputs and labels)."""
    total = 0
    for v in (*tens.inputs.values(), tens.y):
        total += v.element_size() * v.nelement()
    return total
