"""A grid's state at a glance: ``thesis-mlflow grid status <grid name or file>``.

One query for the grid's child runs (their latest metrics hold the progress: ``epoch`` and
``events_per_s`` are logged every epoch), so it stays fast for 108 cells. Cells are counted by
state (not created, not started, running, finished, failed), running cells show epoch k/N and
events/s, the grid gets an ETA from the measured rates, and failed cells are grouped by their
``error.class`` / ``error.message`` tags with the last lines of one log per group. The same
counts go to the parent run as metrics and a description (the runs table shows progress).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from thesis_mlflow.errors import BadInput
from thesis_mlflow.grid import jobs
from thesis_mlflow.grid import runs as gridruns
from thesis_mlflow.grid.backends import BATCH, Backend
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.paths import ROOT, resolve
from thesis_mlflow.secret import mask
from thesis_mlflow.spec import CellSpec
from thesis_mlflow.tracking import provenance, queries
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import finished
from thesis_mlflow.tracking.runlog import ERROR_CLASS, ERROR_MESSAGE

log = logging.getLogger(__name__)

NOT_CREATED, NOT_STARTED, RUNNING, FINISHED, FAILED = "not created", "not started", "running", "finished", "failed"
# from the scheduler (grid.jobs): a job waiting for a slot, one put back in the queue (it will run
# again: not a failure), one on hold (it needs the user)
QUEUED, REQUEUED, HELD = "queued", "requeued", "held"
ORDER = (FINISHED, RUNNING, QUEUED, REQUEUED, NOT_STARTED, NOT_CREATED, HELD, FAILED)
# Set by a local driver for its worker processes: the driver updates the parent's progress itself
WATCHED = "THESIS_MLFLOW_DRIVER_PUBLISHES"


@dataclass(frozen=True)
class CellState:
    cell: str
    state: str
    run_id: str | None = None
    epoch: int = 0
    epochs: int = 0
    events_per_s: float | None = None
    n_train_events: int | None = None
    test_auc: float | None = None
    error_class: str | None = None
    error_message: str | None = None
    retries: int = 0  # the scheduler's retries of the job that trains this cell (DAGMan retries, SLURM requeues)
    job: str | None = None  # the scheduler's word on that job: "13 pending (Resources)", "13 timed out"
    killed: bool = False  # its run ended KILLED: stopped by a signal (eviction, requeue, time limit), not failed by itself
    code: str | None = None  # the commit that trained it (``-dirty``: with uncommitted changes); None before it started

    def seconds_left(self, fallback_epoch_s: float | None) -> float | None:
        """Training seconds this cell still needs, from its own rate (or the grid's)."""
        left = max(self.epochs - self.epoch, 0)
        if self.state in (FINISHED, FAILED, HELD) or left == 0:
            return 0.0
        if self.events_per_s and self.n_train_events:
            return left * self.n_train_events / self.events_per_s
        return left * fallback_epoch_s if fallback_epoch_s else None


@dataclass
class GridStatus:
    grid: str
    cells: list[CellState]
    parent_id: str | None = None
    taken: float = field(default_factory=time.time)
    notes: list[str] = field(default_factory=list)  # said under the table (a scheduler that did not answer)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ORDER}
        for c in self.cells:
            out[c.state] += 1
        return out

    @property
    def exit_code(self) -> int:
        """Non-zero when a cell failed or is held: either needs the user."""
        n = self.counts()
        return 1 if n[FAILED] or n[HELD] else 0

    def eta_s(self) -> float | None:
        """Seconds until every cell not failed is finished, at the measured rates and with as
        many cells at once as run now (one when none does)."""
        rates = [c.n_train_events / c.events_per_s for c in self.cells if c.events_per_s and c.n_train_events]
        epoch_s = sum(rates) / len(rates) if rates else None
        left = [c.seconds_left(epoch_s) for c in self.cells]  # 0 for a held job: it waits for the user, not the clock
        if any(x is None for x in left):
            return None
        parallel = max(1, self.counts()[RUNNING])
        return sum(left) / parallel

    def code_versions(self) -> dict[str, list[CellState]]:
        """The code versions that trained the cells (cells not started yet have none)."""
        out: dict[str, list[CellState]] = {}
        for c in self.cells:
            if c.code:
                out.setdefault(c.code, []).append(c)
        return out

    def failed_groups(self) -> dict[tuple[str, str], list[CellState]]:
        """Failed and held cells grouped by (error class, message): what needs the user, once per cause."""
        groups: dict[tuple[str, str], list[CellState]] = {}
        for c in self.cells:
            if c.state in (FAILED, HELD):
                groups.setdefault((c.error_class or "unknown", c.error_message or "no error recorded (killed?)"), []).append(c)
        return groups

    def line(self) -> str:
        """law-style status line: counts by state and the ETA."""
        n = self.counts()
        eta = self.eta_s()
        parts = [f"{n[s]} {s}" for s in ORDER if n[s]]
        when = "" if eta is None or not (n[RUNNING] or n[NOT_STARTED] or n[NOT_CREATED]) else f"; ETA {_duration(eta)}"
        return f"{self.grid}: {len(self.cells)} cells: " + ", ".join(parts) + when

    def markdown(self) -> str:
        """The parent run's description: counts and the failures."""
        rows = ["| state | cells |", "|---|---|", *(f"| {s} | {v} |" for s, v in self.counts().items() if v)]
        for (cls, msg), cells in self.failed_groups().items():
            rows.append(f"\n**{cls}** ({len(cells)}): {msg}  \n" + ", ".join(c.cell for c in cells))
        return f"{self.line()}\n\n" + "\n".join(rows) + f"\n\n_updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.taken))}_"

    def render(self, log_lines: int = 5, with_logs: bool = True) -> str:
        batch = any(c.job for c in self.cells)  # a batch grid: the scheduler's word on each cell's job
        out = [f"{'cell':<28} {'state':<12} {'epoch':>7} {'events/s':>9} {'test_auc':>8} {'retries':>7}  " + ("job" if batch else "error")]
        for c in self.cells:
            ep = f"{c.epoch}/{c.epochs}" if c.epochs else str(c.epoch or "-")
            rate = f"{c.events_per_s:,.0f}" if c.events_per_s and c.state == RUNNING else "-"
            auc = f"{c.test_auc:.4f}" if c.test_auc is not None else "-"
            last = (f"{c.job or '-':<26} {c.error_class or ''}" if batch else c.error_class or "").rstrip()
            out.append(f"{c.cell:<28} {c.state:<12} {ep:>7} {rate:>9} {auc:>8} {c.retries or '-':>7}  {last}")
        out.append("")
        out.append(self.line())
        out += self.notes
        versions = self.code_versions()
        if len(versions) > 1:  # a grid whose cells ran different code looks like one experiment: say so
            out.append("MIXED CODE: " + ", ".join(f"{v} ({len(cs)} cells: {', '.join(c.cell for c in cs[:3])}"
                                                   + (" ..." if len(cs) > 3 else "") + ")" for v, cs in versions.items()))
        for (cls, msg), cells in self.failed_groups().items():
            out.append(f"\n{cells[0].state.upper()} {cls}: {msg}\n  {len(cells)} cell(s): {', '.join(c.cell for c in cells)}")
            if with_logs and cells[0].run_id:
                tail = last_log_lines(cells[0].run_id, log_lines)
                if tail:
                    out.append(f"  last lines of {cells[0].cell}'s logs/train.log:")
                    out += [f"    {ln}" for ln in tail]
        return "\n".join(out)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def last_log_lines(run_id: str, n: int) -> list[str]:
    try:
        path = queries.artifact_path(run_id, "logs/train.log")
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except Exception:  # noqa: BLE001 - no log uploaded (killed before its first epoch)
        return []


def _expected(grid_arg: str, scale: str | None):
    """(grid run name, expected cells or None) from a grid file, or from a grid name (then the
    cells come from the grid file its parent run logged)."""
    path = resolve(grid_arg)
    if path.is_file():
        g = load_grid(path, scale or "full", base_dir=ROOT)
        return g.run_name, g.cells()
    return grid_arg, None


# What a batch job last heard from its scheduler about the grid's jobs, per job folder:
# (monotonic time, views, note). A cell ending inside a pack refreshes the parent's progress; the
# scheduler (squeue, sacct, DAGMan's files) is asked at most once a minute per process for it:
# cluster admins limit scheduler queries from compute nodes.
_SCHEDULER_SEEN: dict[tuple[str, str], tuple[float, dict, str | None]] = {}
_SEEN_LOCK = threading.Lock()
SCHEDULER_EVERY_S = 60.0
_now = time.monotonic  # the clock of that minute (a test turns it)


def _scheduler_views(backend: Backend, folder: Path, max_age_s: float) -> tuple[dict[str, jobs.JobView], str | None]:
    key = (backend.name, str(folder))
    with _SEEN_LOCK:
        seen = _SCHEDULER_SEEN.get(key)
        if seen is not None and _now() - seen[0] < max_age_s:
            return seen[1], seen[2]
        views, note = backend.cell_views(folder)
        _SCHEDULER_SEEN[key] = (_now(), views, note)
        return views, note


def grid_status(grid_arg: str, scale: str | None = None, scheduler_max_age_s: float = 0) -> GridStatus:
    """The status of a grid given by its YAML file (with ``scale``) or its name (``grid.name`` tag).
    ``scheduler_max_age_s``: the scheduler's view of the jobs may be that old (a job's own refresh)."""
    name, cells = _expected(grid_arg, scale)
    exp_id = tracking.current_experiment_id()
    parent = gridruns.find_parent(name, exp_id)
    if parent is None and cells is None:
        raise BadInput(f"no grid {name!r} in experiment {tracking.experiment_name()!r} at {mask(tracking.tracking_uri())} "
                         "(give its YAML file, or the name its runs carry in the grid.name tag)")
    runs = {}
    if parent is not None:
        runs = gridruns.children_by_cell(parent.info.run_id, exp_id)
        if cells is None:
            cells = gridruns.expected_cells_of(parent)
    if cells is None:  # the runs that exist are all that is known

        cells = []
        for tag in runs:
            kv = dict(p.split("=", 1) for p in (tag or "").split(",") if "=" in p)
            cells.append(CellSpec(tokenizer=kv["tokenizer"], pooling=kv["pooling"], met=kv["met"] == "true", vect=int(kv["vect"]),
                                  seed=int(kv["seed"])))
    out = [_cell_state(cell, runs.get(cell.tag)) for cell in cells]
    notes = []
    tags = parent.data.tags if parent is not None else {}
    for backend in BATCH:  # the scheduler that ran the grid's jobs (its folder is on the parent)
        if tags.get(backend.folder_tag):
            views, note = _scheduler_views(backend, Path(tags[backend.folder_tag]), scheduler_max_age_s)
            out = with_jobs(out, views)
            notes += [note] if note else []
    return GridStatus(name, out, parent.info.run_id if parent else None, notes=notes)


def with_jobs(cells: list[CellState], views: dict[str, jobs.JobView]) -> list[CellState]:
    """MLflow's states refined by the scheduler's (``grid.jobs``: one ``JobView`` per cell name,
    from DAGMan or SLURM). The run knows what training did; the scheduler knows what MLflow
    cannot: a job still waiting for a slot (queued), put back in the queue (requeued: its run
    ended KILLED and will resume), on hold (held: its run would stay RUNNING or SCHEDULED
    forever), or ended for good without finishing (failed, with the scheduler's cause: timed out,
    out of memory, node failure, cancelled, a dependency never satisfied) when the run recorded
    no error of its own."""
    out = []
    for c in cells:
        v = views.get(c.cell)
        if v is None:
            out.append(c)
            continue
        c = replace(c, retries=v.retries, job=v.label())
        stopped = c.state == FAILED and c.killed  # stopped by a signal, not an error: the next attempt resumes it
        state, cls, msg = c.state, c.error_class, c.error_message
        if c.state == FINISHED:
            pass
        elif v.phase == jobs.HELD:
            state, cls, msg = HELD, cls or f"held by {v.scheduler}", msg or (v.reason or "see the scheduler's hold reason")
        elif v.phase == jobs.REQUEUED and (c.state != FAILED or stopped):
            state, cls, msg = REQUEUED, None, None
        elif v.phase in (jobs.QUEUED, jobs.WAITING) and (c.state in (NOT_STARTED, NOT_CREATED) or stopped):
            state, cls, msg = (QUEUED if v.phase == jobs.QUEUED or stopped else c.state), None, None
        elif v.phase == jobs.RUNNING and stopped:
            state, cls, msg = RUNNING, None, None  # a requeued job started again; its run resumes in a moment
        elif v.phase == jobs.ENDED and (c.state != FAILED or stopped):
            cause = v.cause if v.cause and v.cause != jobs.FAILED else f"{v.scheduler} job failed"
            state, cls, msg = FAILED, ("DAGMan" if v.scheduler == "HTCondor" else cause), v.reason or "the job failed after its retries"
        out.append(replace(c, state=state, error_class=cls, error_message=msg))
    return out


def _cell_state(cell, r) -> CellState:
    if r is None:
        return CellState(cell.name, NOT_CREATED, epochs=cell.epochs)
    m, p, t = r.data.metrics, r.data.params, r.data.tags
    status = r.info.status
    if finished(status, m):
        state = FINISHED
    elif status in ("FAILED", "KILLED", "FINISHED"):  # FINISHED without its test metric: ended before its evaluation
        state = FAILED
    elif status == "RUNNING":
        state = RUNNING
    else:
        state = NOT_STARTED
    return CellState(cell.name, state, r.info.run_id, int(m.get("epoch", 0)), int(p.get("epochs", cell.epochs) or cell.epochs),
                     m.get("events_per_s"), int(p["n_train_events"]) if p.get("n_train_events") else None, m.get("test_auc"),
                     t.get(ERROR_CLASS) or (status if state == FAILED and status == "KILLED" else None), t.get(ERROR_MESSAGE),
                     code=provenance.code_label(t) if state != NOT_STARTED else None, killed=status == "KILLED")


def publish_after_cell(run_id: str) -> None:
    """A grid cell ended (finished or not, on any backend): its parent's progress, recomputed
    from MLflow. On Condor no driver is watching, so the cells keep the runs table current; under
    a local driver (``WATCHED`` set) the driver does it and the cell leaves it alone."""
    if os.environ.get(WATCHED):
        return
    r = queries.get_run(run_id)
    name = r.data.tags.get("grid.name")
    if name and r.data.tags.get("mlflow.parentRunId"):
        publish(grid_status(name, scheduler_max_age_s=SCHEDULER_EVERY_S))


def publish(st: GridStatus, step: int | None = None) -> None:
    """The counts as metrics of the parent run (``cells_finished``, ``cells_running``,
    ``cells_failed``, ``cells_not_started``) and the status as its description."""
    if st.parent_id is None:
        return
    n = st.counts()
    vals = {"cells_finished": n[FINISHED], "cells_running": n[RUNNING], "cells_failed": n[FAILED] + n[HELD],
            "cells_not_started": n[NOT_STARTED] + n[NOT_CREATED] + n[QUEUED] + n[REQUEUED]}
    gridruns.publish_progress(st.parent_id, vals, st.markdown(), step)
