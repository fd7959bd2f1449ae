"""The grid as MLflow runs: one parent per grid, one child per cell, run locally or on HTCondor.

Re-running the same grid resumes it: FINISHED cells are skipped; FAILED, KILLED and
never-started cells run again on their own child run id (so training resumes from its
checkpoint); no cell is ever created twice. Built on ``tracking``; the grid file and the DAG
are ``thesis_mlflow.grid.gridfile``'s. ``echo`` callbacks carry what a user should see (the steps pass
``click.echo``); everything else is logged.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from thesis_mlflow.errors import BadSetting, LeaseHeld, StepFailed, Unavailable
from thesis_mlflow.grid import packing
from thesis_mlflow.grid import runs as gridruns
from thesis_mlflow.grid.condor.submit import run_condor
from thesis_mlflow.grid.gridfile import Grid, by_configuration, load_grid
from thesis_mlflow.grid.jobenv import check_no_credentials
from thesis_mlflow.grid.local import LocalSpec
from thesis_mlflow.grid.local.submit import run_cells
from thesis_mlflow.grid.mps import shared_gpu
from thesis_mlflow.grid.processes import ChildProcess, run_processes
from thesis_mlflow.grid.rehearsal import Rehearsal
from thesis_mlflow.grid.runs import close_left_running, ensure_children, find_or_create_parent
from thesis_mlflow.grid.signals import signals_as_interrupt
from thesis_mlflow.grid.slurm import state as slurmstate
from thesis_mlflow.grid.slurm.injob import EARLY, MARK, near_end, requeue_self
from thesis_mlflow.grid.slurm.submit import job_dir as job_dir_of
from thesis_mlflow.grid.slurm.submit import require_slurm, run_slurm
from thesis_mlflow.grid.status import WATCHED, grid_status, publish, publish_after_cell
from thesis_mlflow.paths import ROOT, outputs, resolve
from thesis_mlflow.pipeline import upstream
from thesis_mlflow.pipeline.stack import SeedStack
from thesis_mlflow.spec import BinningSpec, CellSpec, VQSpec
from thesis_mlflow.tracking import leases, provenance, queries, views
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import are_done, is_done

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


def _log_echo(msg: str) -> None:
    log.info("%s", msg)


# --------------------------------------------------------------------------- runs


def prepare(g: Grid) -> dict[str, str]:
    """The upstream runs, once: binning per vect and VQ-VAE per vect where included. They do not
    depend on each other: two at a time, each in its own thread with its own run and log (the
    demo's four took ~20 s one after another on 2 cores). A failure is raised once all have ended."""
    raw = upstream.ensure_raw(g.data)
    specs = {}
    for vect in g.factors["vect"]:
        if "binned" in g.tokenizers:
            specs[f"binning_v{vect}"] = BinningSpec(input=str(raw), vect=vect, **g.binning)
        if "vqvae" in g.tokenizers:
            specs[f"vqvae_v{vect}"] = VQSpec(input=str(raw), vect=vect, **g.vqvae)
    # (one at a time under a given MLFLOW_RUN_ID: each step sets it aside and puts it back, which
    # two threads would interleave)
    with ThreadPoolExecutor(max_workers=1 if os.environ.get("MLFLOW_RUN_ID") else 2, thread_name_prefix="upstream") as pool:
        runs = {k: pool.submit(upstream.find_or_run, spec) for k, spec in specs.items()}
    return {k: f.result()[0] for k, f in runs.items()}


# --------------------------------------------------------------------------- running cells


def train_command(cell: CellSpec) -> list[str]:
    """The command one cell runs: identical for the local backend, a Condor node and a pack."""
    return [sys.executable, "-m", "steps.train", *cell.cli_args()]


def train_here(todo: list[tuple[CellSpec, str]], echo: Echo = _log_echo, side_by_side: bool = False,
               at_once: int | None = None, stack_seeds: bool = False) -> dict[str, str]:
    """Train ``todo`` (cell, child run id) in this process: the imports and set-up are paid once.

    ``stack_seeds``: the seeds of each configuration as one stacked model (``pipeline.stack``),
    each seed still in its own thread with its own child run, lease, log, checkpoint and resume.
    ``side_by_side`` (on a GPU): each cell (or stack) in a thread with its own CUDA stream, its own captured
    step (compiled one cell at a time), child run, checkpoint and resume: one process keeps the
    GPU busy without CUDA MPS. Otherwise they train one after another. ``at_once``: at most this
    many cells (stacks) side by side (the next starts as one ends). A cell that fails is marked
    FAILED (with its error and log) and the others go on. Returns {cell name: FINISHED / FAILED /
    ELSEWHERE}. Every cell draws from its own random stream, so side by side or stacked it
    trains as it would alone."""

    from thesis_mlflow.pipeline.cell import train_cell  # lazy: torch, only where cells train in this process (not for a Condor submission)

    result: dict[str, str] = {}

    def one(cell: CellSpec, rid: str, stack=None) -> None:
        try:
            train_cell(cell, rid, stack, on_end=publish_after_cell)
            result[cell.name] = "FINISHED"
        except LeaseHeld as e:  # trained by another process: not ours
            result[cell.name] = "ELSEWHERE"
            echo(f"{cell.name}: {e}")
        except Exception as e:  # noqa: BLE001 - one cell's failure stays its own (its run says why)
            result[cell.name] = "FAILED"
            log.error("%s failed: %s: %s", cell.name, type(e).__name__, e, exc_info=True)
        echo(f"{cell.name:<28} {result[cell.name]}")

    if stack_seeds:
        def stacked(seeds: list[tuple[CellSpec, str]]) -> None:
            stack = SeedStack(len(seeds), name=seeds[0][0].name.rsplit("-s", 1)[0])
            with ThreadPoolExecutor(max_workers=len(seeds), thread_name_prefix="seed") as pool:
                list(pool.map(lambda cr: one(*cr, stack), seeds))

        configs = list(by_configuration(todo).values())
        width = max(1, at_once or len(configs)) if side_by_side else 1
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="stack") as pool:
            _wait_or_stop([pool.submit(stacked, seeds) for seeds in configs])
        return result
    if not side_by_side:
        for cell, rid in todo:
            one(cell, rid)
        return result
    import torch

    def in_stream(cell: CellSpec, rid: str) -> None:
        with torch.cuda.stream(torch.cuda.Stream()):
            one(cell, rid)

    with ThreadPoolExecutor(max_workers=max(1, at_once or len(todo)), thread_name_prefix="cell") as pool:
        _wait_or_stop([pool.submit(in_stream, *cr) for cr in todo])
    return result


def _wait_or_stop(futures) -> None:
    """Wait for the cells trained in threads; on Ctrl-C or a signal (``signals_as_interrupt``)
    tell every fit of the process to stop at its next step, wait for them (seconds: each run
    ends KILLED, its last checkpoint kept), lift the stop and re-raise."""
    try:
        wait(futures)
    except KeyboardInterrupt:
        from thesis_mlflow.learn.training import clear_stop, request_stop  # lazy: torch, only on an interrupt

        request_stop()
        try:
            wait(futures)
        finally:
            clear_stop()  # all of them stopped: the process (a notebook, a test session) may train again
        raise


# Whether ``auto`` stacks on a GPU: yes. The stacked step is compiled there (learn.stacked: one
# fused function per configuration, compiled once, not per seed), and the stacked probe reached
# 169-185k events/s on an H100 against ~100k for compiled cells side by side
# (benchmarks/RESULTS.md). The product's stacked path has not been timed on a GPU yet:
# benchmarks/gpu_check.sh measures it; ``--stack-seeds off`` keeps the per-cell path.
STACK_ON_GPU_BY_DEFAULT = True


def stacking(stack_seeds: str, on_gpu: bool) -> bool:
    """``--stack-seeds auto|on|off``: ``on`` stacks, ``off`` does not; ``auto`` stacks on a GPU
    (``STACK_ON_GPU_BY_DEFAULT``), never on a CPU (the stacked step runs eagerly there; cells
    train one after another in each worker)."""
    if stack_seeds not in STACK_SEEDS:
        raise BadSetting(f"stack_seeds must be one of {', '.join(STACK_SEEDS)}; got {stack_seeds!r}")
    return stack_seeds == "on" or (stack_seeds == "auto" and on_gpu and STACK_ON_GPU_BY_DEFAULT)


STACK_SEEDS = ("auto", "on", "off")


PACK_MODES = ("threads", "sequential", "processes")


def require_cuda(what: str) -> None:
    """Fail at once, naming what this node shows, when ``what`` asked for a GPU and none is
    visible (a driver mismatch, a job that got no device): never days of training on the CPU."""
    import torch

    if not torch.cuda.is_available():
        raise Unavailable(f"{what} asked for a GPU (--device cuda) but none is visible here: torch {torch.__version__} built for "
                          f"CUDA {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                          f"{torch.cuda.device_count()} device(s); nothing was trained")


def run_pack(grid_file: str, scale: str, runs: str, echo: Echo = _log_echo, mps: str = "auto", mode: str = "threads",
             at_once: int | None = None, device: str = "auto", stack_seeds: str = "auto", slurm_requeues: int | None = None,
             rehearsal: Rehearsal | None = None) -> dict[str, str]:
    """A Condor or SLURM pack job (and the local worker): train its cells (``name=run_id,...``); the
    finished ones are skipped, so a retried or requeued job trains only what is left, each cell
    resuming from its checkpoint. ``mode`` ``threads``: in this process (side by side on a GPU, one CUDA
    stream each, ``at_once`` at a time; one after another on a CPU); ``sequential``: one after
    another; ``processes``: one process per cell sharing the GPU, under MPS where it works.
    ``stack_seeds`` (``on``; ``auto``: see ``stacking``): in ``threads`` mode, the seeds of each configuration as one
    stacked model (``pipeline.stack``). ``slurm_requeues`` (a SLURM pack): SLURM's warning before
    the time limit (SIGUSR1) stops every cell at its next step (KILLED, checkpoint kept) and the
    job asks to be requeued, at most this many times (``slurm.requeue_self``). Raises when a cell
    is not finished (DAGMan then retries; SLURM records the job as failed)."""
    if mode not in PACK_MODES:
        raise BadSetting(f"mode must be one of {', '.join(PACK_MODES)}; got {mode!r}")
    if device == "cuda":
        require_cuda("this pack")
    g = load_grid(resolve(grid_file), scale, base_dir=ROOT, rehearsal=rehearsal)
    by_name = {c.name: c for c in g.cells()}
    pairs = [p.split("=", 1) for p in runs.split(",") if p]
    bad = [p[0] for p in pairs if len(p) != 2 or p[0] not in by_name]
    if bad or not pairs:
        raise BadSetting(f"--runs must be cell=run_id pairs of cells of {g.run_name}; unknown or malformed: {bad or [runs]}")
    tracking.current_experiment_id()  # created once here, before cells side by side would race to create it
    before = {rid: queries.require_run(rid, "train") for _, rid in pairs}
    todo = [(by_name[name], rid) for name, rid in pairs if not is_done(before[rid])]
    on_gpu = device == "cuda" or packing.gpu_count() > 0
    if on_gpu:  # a pack on a GPU node trains on the GPU or fails loudly, never on the CPU by default
        todo = [(replace(cell, device="cuda") if cell.device == "auto" else cell, rid) for cell, rid in todo]
    stack = mode == "threads" and stacking(stack_seeds, on_gpu)
    side = on_gpu and mode == "threads" and len(todo) > 1
    how = ("seeds of a configuration stacked, " if stack else "") + (
        "side by side on the GPU, one CUDA stream each" if side else "one process per cell" if mode == "processes" else "one after another")
    echo(f"pack of {len(pairs)} cells: {len(pairs) - len(todo)} finished, {len(todo)} to train" + (f" ({how})" if todo else ""))
    status = {}
    if todo and slurm_requeues is not None and (EARLY.time_limit or near_end(g.slurm.signal_before_end_s)):
        echo(f"{MARK} SLURM's time-limit warning came while the pack was setting up: nothing trained in this attempt")
        requeue_self(False, slurm_requeues, echo)  # raises when it will not
        return {name: "REQUEUED" for name, _ in pairs}
    if todo:
        with signals_as_interrupt(time_limit=slurm_requeues is not None) as caught:
            try:
                if mode == "processes":
                    status = run_cells_processes(g, todo, echo, mps)
                else:
                    status = train_here(todo, echo, side_by_side=side, at_once=at_once, stack_seeds=stack)
            except KeyboardInterrupt:
                if not caught.time_limit:
                    raise
                now = {rid: queries.get_run(rid) for _, rid in todo}
                progressed = any(int(now[rid].data.metrics.get("epoch", 0)) > int(before[rid].data.metrics.get("epoch", 0)) or is_done(now[rid])
                                 for _, rid in todo)
                requeue_self(progressed, slurm_requeues or 0, echo)  # raises when it will not
                return {name: "REQUEUED" for name, _ in pairs}
    failed = [name for name, rid in pairs if not is_done(queries.get_run(rid))]
    if failed:
        raise StepFailed(f"{len(failed)} of {len(pairs)} cells not finished: {', '.join(failed)} (a retry resumes them)")
    echo(f"{MARK} DONE: all {len(pairs)} cells of the pack finished")
    return status


def run_cells_processes(g: Grid, todo: list[tuple[CellSpec, str]], echo: Echo, mps: str) -> dict[str, str]:
    """The pack as one process per cell sharing the GPU (under a private MPS daemon when one can
    be started and a CUDA client can use it): the fallback to threads, where MPS measures faster."""
    exp_id = tracking.current_experiment_id()
    result: dict[str, str] = {}
    logs = outputs() / "outputs" / "grids" / g.run_name / "logs"

    def on_done(job: ChildProcess, code: int, seconds: float) -> None:
        rid = job.env["MLFLOW_RUN_ID"]
        if code != 0 and code != LeaseHeld.exit_code:
            close_left_running(rid, job.pid)
        result[job.key] = "ELSEWHERE" if code == LeaseHeld.exit_code else queries.get_run(rid).info.status
        echo(f"{job.key:<28} {result[job.key]}  ({seconds:.0f} s)")

    with shared_gpu(mps, len(todo)) as gpu_env:
        base = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MLFLOW_EXPERIMENT_ID": exp_id, "PYTHONUNBUFFERED": "1", WATCHED: "1",
                **packing.thread_env(len(todo)), **gpu_env}
        jobs = [ChildProcess(cell.name, train_command(cell), {**base, "MLFLOW_RUN_ID": rid}, logs / f"{cell.name}.log", ROOT)
                for cell, rid in todo]
        run_processes(jobs, len(todo), on_done)
    return result


# --------------------------------------------------------------------------- the grid


@dataclass
class GridRun:
    """What a ``grid run`` did: the cells it launched and, for a local pass, how they ended."""

    launched: list[str] = field(default_factory=list)  # cell names started in this pass (none on a dry run)
    parent: str | None = None  # the parent run's id
    status: dict[str, str] = field(default_factory=dict)  # local: cell name -> FINISHED, FAILED, KILLED, NOT RUN or ELSEWHERE
    n_finished: int | None = None  # local: cells finished after this pass (all passes together)
    n_cells: int | None = None
    dag: Path | None = None  # condor: the DAG file written
    job_dir: Path | None = None  # slurm: the folder of the job scripts, the jobs record and logs
    submitted: dict | None = None  # slurm: the job ids submitted in this pass (None: none)

    @property
    def complete(self) -> bool:
        """Every cell finished (a local pass); ``grid run`` exits 1 otherwise."""
        return self.n_cells is not None and self.n_finished == self.n_cells


def run_grid(grid_file: str, backend: str, scale: str, jobs: int, dry_run: bool, echo: Echo = _log_echo, mps: str = "auto",
             allow_dirty: bool | None = None, stack_seeds: str = "auto", rehearsal: Rehearsal | None = None) -> GridRun:
    """Run (or resume) a grid. ``allow_dirty``: run code with uncommitted changes (its diff is then
    recorded on the parent); default from ``THESIS_MLFLOW_ALLOW_DIRTY``, else refused. ``rehearsal``:
    the grid's rehearsal (``grid.rehearsal``), under its own parent."""
    stacking(stack_seeds, False)  # a bad value refused before anything starts
    local = None if backend in ("condor", "slurm") else LocalSpec(jobs, mps)  # the same (every other backend runs here)
    path = resolve(grid_file)
    g = load_grid(path, scale, base_dir=ROOT, rehearsal=rehearsal)
    if allow_dirty is None:
        allow_dirty = os.environ.get("THESIS_MLFLOW_ALLOW_DIRTY", "") == "1"
    if backend in ("condor", "slurm"):
        check_no_credentials(tracking.tracking_uri())  # before the store is contacted: a login in the URI would reach every job
    if not dry_run:
        provenance.check_clean(allow_dirty)  # before any run is created
        if backend == "slurm":
            require_slurm()  # no parent or child for a scheduler that is not there
    cells = g.cells()
    t0 = time.perf_counter()
    exp_id = tracking.reach_store()  # the experiment, created once before any parallel job touches the store
    echo(f"grid {g.run_name}: {len(cells)} cells ({', '.join(g.tokenizers)}; seeds {g.seeds}), backend {backend}")
    if dry_run and backend in ("condor", "slurm"):
        parent = gridruns.find_parent(g.run_name, exp_id)
        existing = gridruns.children_by_cell(parent.info.run_id, exp_id) if parent else {}
        runs = {c: (existing[c.tag].info.run_id if c.tag in existing else "RUN_ID_CREATED_AT_SUBMIT") for c in cells}
        if backend == "slurm":
            return GridRun(job_dir=run_slurm(g, runs, exp_id, path, True, echo, stack_seeds)[0])
        return GridRun(dag=run_condor(g, runs, exp_id, path, True, echo, stack_seeds))
    if dry_run:
        for c in cells:
            echo(shlex.join(train_command(c)))
        return GridRun()
    parent = find_or_create_parent(g, exp_id)
    pid = parent.info.run_id
    # one driver per grid at a time (a second `grid run` refuses at once, naming the first)
    with leases.acquire_run(pid, f"grid {g.run_name} (parent run {pid})").kept():
        return _drive(g, cells, parent, exp_id, backend, path, local, echo, t0, stack_seeds)


# The parent's progress is a whole status query (every child, its metrics, its scores): ~0.7 s,
# mostly the server's work, at 36 cells. Published after every cell it came to ~26 s of the
# demo grid's 140 s on 2 cores, beside the cells; the runs table is current enough at this pace.
PUBLISH_EVERY_S = 10.0


def _publish(g: Grid) -> None:
    """The grid's progress on its parent run (metrics and description), for the runs table."""
    try:
        publish(grid_status(str(g.source) if g.source else g.run_name, g.scale))
    except Exception as e:  # noqa: BLE001 - progress display must not stop the grid
        log.warning("could not update the parent's progress: %s", e)


def _drive(g: Grid, cells: list[CellSpec], parent, exp_id: str, backend: str, path: Path, local: LocalSpec | None, echo: Echo,
           t0: float, stack_seeds: str = "auto") -> GridRun:
    pid = parent.info.run_id
    gridruns.mark_running(parent)
    children = ensure_children(g, parent, exp_id)
    todo = [(cell, r.info.run_id) for (cell, r), done in zip(children.items(), are_done(children.values()), strict=True) if not done]
    echo(f"parent run {pid}: {len(cells) - len(todo)} cells finished, {len(todo)} to run")
    views.echo_views(g.run_name, exp_id, echo)
    summary = GridRun(launched=[cell.name for cell, _ in todo], parent=pid, n_cells=len(cells))
    if backend == "condor":
        summary.dag = run_condor(g, {cell: rid for cell, rid in todo}, exp_id, path, False, echo, stack_seeds)
        gridruns.set_dag_dir(pid, summary.dag.parent)  # where `grid status` finds DAGMan's node status file
        return summary
    if backend == "slurm":
        gridruns.set_slurm_dir(pid, job_dir_of(g))  # where `grid status` finds the jobs record, before any job can end
        summary.job_dir, summary.submitted = run_slurm(g, {cell: rid for cell, rid in todo}, exp_id, path, False, echo, stack_seeds,
                                                       busy=slurmstate.active_cells(job_dir_of(g)))
        summary.launched = [c for p in (summary.submitted or {}).get("packs", []) for c in p["cells"]]
        return summary
    if todo:
        echo("preparing upstream runs (binning, VQ-VAE) ...")
        for k, v in prepare(g).items():
            echo(f"  {k}: run {v}")
        last = [-PUBLISH_EVERY_S]

        def progress(_n: int) -> None:  # while cells end, at most every PUBLISH_EVERY_S; once more when all have
            if time.monotonic() - last[0] >= PUBLISH_EVERY_S:
                last[0] = time.monotonic()
                _publish(g)

        summary.status = run_cells(g, todo, local, exp_id, echo, on_progress=progress, stack_seeds=stack_seeds)
        _publish(g)
    final = ensure_children(g, parent, exp_id)
    n_done = sum(are_done(final.values()))
    elsewhere = [k for k, v in summary.status.items() if v == "ELSEWHERE"]
    gridruns.end_parent(pid, n_done, len(cells), close=not elsewhere)  # cells trained by other processes: it stays RUNNING for them
    echo(f"grid {g.run_name}: {n_done}/{len(cells)} cells finished in {time.perf_counter() - t0:.0f} s"
         + (f"; {len(elsewhere)} being trained by other processes" if elsewhere else ""))
    echo(queries.ui_hint(exp_id))
    views.echo_views(g.run_name, exp_id, echo)
    summary.n_finished = n_done
    return summary
