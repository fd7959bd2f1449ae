"""The forecast of a full run from what a rehearsal measured: pure arithmetic, no MLflow, no scheduler.

Per cell (``CellCost`` -> ``CellForecast``), from the real scale's sizes (``FullSize``):

    step_s    = epoch_train_s / steps_per_epoch             (the rehearsal's steady epoch)
    epoch_s   = ceil(n_train / batch) x step_s + n_val x eval_s_per_1k / 1000 + tracking_s_per_epoch
    final_s   = (n_train + n_test) x eval_s_per_1k / 1000  (the train and test passes at the end)
    setup     = setup_s + (full events - rehearsed events) x inputs_s_per_1k / 1000
    cell_s    = setup + warmup_s + epochs x epoch_s + final_s

The prepare job (``Upstream``): each binning run as measured (it is the real one), each VQ-VAE
pre-training as its fixed part (reading the file) plus its training extrapolated per object and
epoch; two at a time, as ``grid.driver.prepare`` runs them. It cannot resume: longer than an attempt
means it never finishes.

A pack (one job) runs its cells side by side (a GPU job: the rehearsal measured them side by side,
so their pace already holds the contention) or one after another (a CPU job, a local worker);
``attempts`` walks a pack through its scheduler's time limit: each attempt pays the setup and
warm-up again, keeps only whole epochs (checkpoints), and one that cannot finish a single epoch
means the pack can never finish. Memory: the pack's measured peak plus the data a full-size cell
holds beyond the rehearsal's (extrapolated per event). Disk: checkpoints measured, score files and
logs extrapolated per event and per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EARLY_WARNING_S = 60  # SLURM may send its warning up to a minute before it is due (its check runs every 30-60 s)


@dataclass(frozen=True)
class CellCost:
    """What the rehearsal measured for one cell (its run's ``cost.*`` metrics and artifact sizes)."""

    cell: str
    pack: int  # index of the real grid's pack (job) the cell belongs to
    stack: str  # cells with the same stack key train as one stacked model (their seeds); else the cell's name
    setup_s: float
    warmup_s: float
    epoch_train_s: float  # one steady epoch of the rehearsal, training only
    steps_per_epoch: int  # of that epoch
    eval_s_per_1k: float
    tracking_s_per_epoch: float
    tracking_calls_per_epoch: float
    peak_rss_mb: float  # the pack process's peak when the cell ended
    train_mb_per_1k: float  # the training tensors' memory per 1,000 events
    checkpoint_mb: float  # measured: its size does not depend on the data
    scores_mb: float  # measured at the rehearsal's test events
    log_mb: float  # measured after the rehearsal's epochs
    n_train: int  # the rehearsal's events
    n_eval: int
    epochs: int
    cuda_peak_mb: float | None = None
    inputs_s_per_1k: float = 0.0  # building the inputs per 1,000 events (0: not measured, runs of an earlier version)


@dataclass(frozen=True)
class Upstream:
    """An upstream run of the rehearsal (binning or VQ-VAE pre-training) and what it measured."""

    name: str
    wall_s: float  # the run, start to end
    train_s: float = 0.0  # of which training (VQ-VAE)
    scale: float = 1.0  # full-size training / rehearsed training (objects x epochs)

    @property
    def full_s(self) -> float:
        return self.wall_s - self.train_s + self.train_s * self.scale


@dataclass(frozen=True)
class FullSize:
    """The real scale's sizes for one cell."""

    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class Limits:
    """What a pack's job gets: the time per attempt (None: no limit known), warning, requeues and memory."""

    backend: str
    time_s: int | None = None
    signal_before_end_s: int = 0
    max_requeues: int | None = None
    memory_mb: int | None = None  # the job's memory request (None: not known)
    memory_key: str = ""  # the grid file's key that sets it, for the warning
    side_by_side: bool = False  # the pack's cells train at once (a GPU job), else one after another
    gpus_per_job: int = 0


@dataclass(frozen=True)
class CellForecast:
    cell: str
    pack: int
    step_s: float
    epoch_s: float
    cell_s: float
    setup_s: float
    final_s: float
    data_mb: float  # extra data a full-size cell holds beyond the rehearsal's (extrapolated)
    disk_mb: float  # checkpoint + scores + log at full size
    calls_per_min: float  # tracking calls per minute while it trains


@dataclass
class PackForecast:
    pack: int
    cells: list[str]
    wall_s: float  # without time limits
    epoch_s: float  # the pack's progress unit: one epoch of its cells (side by side) or of the slowest cell
    attempts: int | None  # None: it cannot finish (an attempt finishes no epoch)
    memory_mb: float
    warnings: list[str] = field(default_factory=list)
    fatal: bool = False

    @property
    def requeues(self) -> int | None:
        return None if self.attempts is None else self.attempts - 1


@dataclass
class Forecast:
    cells: list[CellForecast]
    packs: list[PackForecast]
    limits: Limits
    disk_mb: float
    node_hours: float
    gpu_hours: float
    wall_s: float  # all packs at once (as many nodes as packs)
    peak_calls_per_min: float
    extrapolated: dict[str, str]  # quantity -> how it was extrapolated
    warnings: list[str] = field(default_factory=list)
    prepare_s: float | None = None  # the prepare job (binning, VQ-VAE), when its runs were measured
    prepare_fatal: bool = False

    @property
    def exit_code(self) -> int:
        """1 when a pack cannot finish (memory over its request, or no epoch fits an attempt)."""
        return 1 if self.prepare_fatal or any(p.fatal for p in self.packs) else 0


EXTRAPOLATED = {
    "step time": "measured: the steady epoch of the rehearsal (after warm-up), per step",
    "epoch time": "extrapolated: steps of the full training set x step time + validation at the measured rate per event",
    "evaluation": "measured on the rehearsal's sample of events, per 1,000 events",
    "setup": "measured, its inputs part (reading, binning or encoding the events) extrapolated per event",
    "prepare": "binning measured (the real one); VQ-VAE: reading measured, training extrapolated per object and epoch",
    "memory": "measured peak of the pack's process + the full-size data per cell (extrapolated per event)",
    "checkpoint": "measured (its size does not depend on the data)",
    "score files": "extrapolated per test event",
    "logs": "extrapolated per epoch",
}


def cell_forecast(c: CellCost, full: FullSize) -> CellForecast:
    step_s = c.epoch_train_s / max(1, c.steps_per_epoch)
    per_event = c.eval_s_per_1k / 1000
    epoch_s = math.ceil(full.n_train / full.batch_size) * step_s + full.n_val * per_event + c.tracking_s_per_epoch
    final_s = (full.n_train + full.n_test) * per_event
    more_events = max(0, full.n_train + full.n_val + full.n_test - c.n_train - 2 * c.n_eval)
    setup_s = c.setup_s + more_events * c.inputs_s_per_1k / 1000
    cell_s = setup_s + c.warmup_s + full.epochs * epoch_s + final_s
    # the training tensors beyond the rehearsal's, and the evaluation splits' (same width per event)
    extra_events = max(0, full.n_train - c.n_train) + 2 * max(0, max(full.n_val, full.n_test) - c.n_eval)
    data_mb = extra_events * c.train_mb_per_1k / 1000
    scores_mb = c.scores_mb * full.n_test / max(1, c.n_eval)
    log_mb = c.log_mb * full.epochs / max(1, c.epochs)
    calls = c.tracking_calls_per_epoch / (epoch_s / 60) if epoch_s > 0 else 0.0
    return CellForecast(c.cell, c.pack, step_s, epoch_s, cell_s, setup_s + c.warmup_s, final_s, data_mb,
                        c.checkpoint_mb + scores_mb + log_mb, calls)


@dataclass(frozen=True)
class _Unit:
    """What a pack runs as one: a cell, a stack of seeds, or (side by side) every cell of the pack."""

    setup_s: float
    epoch_s: float
    epochs: int
    final_s: float


def attempts(units: list[_Unit], usable_s: float | None) -> int | None:
    """Attempts a pack needs to run ``units`` one after another within ``usable_s`` per attempt
    (None: no limit, one attempt). Each attempt pays a unit's setup again and keeps whole epochs
    only. None when an attempt would finish nothing: the pack can never finish."""
    if usable_s is None:
        return 1
    n, i, done = 1, 0, 0  # attempt, unit, epochs of that unit done
    t = 0.0
    started = False
    progressed = False
    while i < len(units):
        u = units[i]
        if not started:
            t += u.setup_s
            started = True
        while done < u.epochs and t + u.epoch_s <= usable_s:
            t += u.epoch_s
            done += 1
            progressed = True
        if done == u.epochs and t + u.final_s <= usable_s:
            t += u.final_s
            i, done, started = i + 1, 0, False
            progressed = True
            continue
        if not progressed:
            return None
        n, t, started, progressed = n + 1, 0.0, False, False
    return n


def prepare_s(upstream: list[Upstream]) -> float:
    """The prepare job's wall time: its runs two at a time, longest first."""
    slots = [0.0, 0.0]
    for u in sorted(upstream, key=lambda u: -u.full_s):
        slots[slots.index(min(slots))] += u.full_s
    return max(slots)


def forecast(costs: list[CellCost], sizes: dict[str, FullSize], limits: Limits, upstream: list[Upstream] | None = None) -> Forecast:
    """The full run's forecast from the rehearsal's ``costs``, each cell's full ``sizes`` and the
    rehearsal's ``upstream`` runs (the prepare job)."""
    cells = {c.cell: cell_forecast(c, sizes[c.cell]) for c in costs}
    by_pack: dict[int, list[CellCost]] = {}
    for c in costs:
        by_pack.setdefault(c.pack, []).append(c)
    usable = None
    if limits.time_s is not None:
        usable = limits.time_s - limits.signal_before_end_s - (EARLY_WARNING_S if limits.backend == "slurm" else 0)
    packs = []
    for i in sorted(by_pack):
        members = by_pack[i]
        stacks: dict[str, list[CellCost]] = {}
        for c in members:
            stacks.setdefault(c.stack, []).append(c)

        def unit(group: list[CellCost]) -> _Unit:
            fs = [cells[c.cell] for c in group]
            return _Unit(max(f.setup_s for f in fs), max(f.epoch_s for f in fs), max(sizes[c.cell].epochs for c in group),
                         max(f.final_s for f in fs))

        units = [unit(g) for g in stacks.values()]
        if limits.side_by_side:
            units = [unit(members)]
        wall = sum(u.setup_s + u.epochs * u.epoch_s + u.final_s for u in units)
        n_attempts = attempts(units, usable)
        if n_attempts:  # each further attempt sets up again (the epoch it was in is redone: not counted, at most one each)
            wall += (n_attempts - 1) * max(u.setup_s for u in units)
        held = [cells[c.cell].data_mb for c in members]
        memory = max(c.peak_rss_mb for c in members) + (sum(held) if limits.side_by_side else max(held))
        p = PackForecast(i, [c.cell for c in members], wall, max(u.epoch_s for u in units), n_attempts, memory)
        _judge(p, limits, usable)
        packs.append(p)
    node_hours = sum(p.wall_s for p in packs) / 3600
    peak_calls = sum(f.calls_per_min for f in cells.values())  # every pack at once: the grid's peak
    fc = Forecast(list(cells.values()), packs, limits, sum(f.disk_mb for f in cells.values()), node_hours,
                  node_hours * limits.gpus_per_job, max((p.wall_s for p in packs), default=0.0), peak_calls, dict(EXTRAPOLATED))
    fc.warnings = sorted((w for p in packs for w in p.warnings), key=lambda w: "can never" not in w and "killed" not in w)
    if upstream:
        fc.prepare_s = prepare_s(upstream)
        if usable is not None and fc.prepare_s > usable:  # no checkpoint: a requeued prepare starts again
            fc.prepare_fatal = True
            fc.warnings.insert(0, f"the prepare job needs {hms(fc.prepare_s)} ({', '.join(u.name for u in upstream)}), more than an "
                                  f"attempt's usable {hms(usable)} under time {hms(limits.time_s or 0)}: it can never finish")
    return fc


def _judge(p: PackForecast, limits: Limits, usable: float | None) -> None:
    """The pack's warnings, fatal ones first: memory over the request, an epoch longer than an attempt, requeues."""
    n = len(p.cells)
    if limits.memory_mb is not None and p.memory_mb > limits.memory_mb:
        p.fatal = True
        p.warnings.append(f"pack {p.pack}: {n} cells need {p.memory_mb / 1024:.1f} GB at peak > {limits.memory_key} "
                          f"{limits.memory_mb / 1024:.1f} GB: the job would be killed (raise {limits.memory_key} or lower cells_per_job)")
    if p.attempts is None:
        p.fatal = True
        if usable is not None and usable <= 0:
            p.warnings.append(f"pack {p.pack}: time {hms(limits.time_s or 0)} leaves nothing to train in once SLURM's warning "
                              f"({limits.signal_before_end_s} s before the end, up to {EARLY_WARNING_S} s early) is taken: it can never finish")
        else:
            p.warnings.append(f"pack {p.pack}: one epoch takes {hms(p.epoch_s)}, more than an attempt's usable {hms(usable or 0)} "
                              f"(time {hms(limits.time_s or 0)} less the warning): it can never finish")
    elif p.attempts > 1:
        over = limits.max_requeues is not None and p.requeues > limits.max_requeues
        if over:
            p.fatal = True
        p.warnings.append(f"pack {p.pack} needs {hms(p.wall_s)}: with time {hms(limits.time_s or 0)} it will be requeued "
                          f"{p.requeues} time{'s' if p.requeues != 1 else ''}"
                          + (f", more than max_requeues {limits.max_requeues}: it would be left unfinished" if over else ""))


def hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
