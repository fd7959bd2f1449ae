"""The local backend's submission: the grid's cells shared among worker processes on this node
(``run_cells``), each a ``steps.grid pack`` over its share (``worker_command``), whole
configurations per worker (``split_over_workers``). Nothing is queued: the workers are this
process's children, their cells reported as they end."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from thesis_mlflow.grid import packing
from thesis_mlflow.grid import runs as gridruns
from thesis_mlflow.grid.gridfile import Grid, by_configuration
from thesis_mlflow.grid.local.settings import LocalSpec
from thesis_mlflow.grid.mps import shared_gpu
from thesis_mlflow.grid.processes import ChildProcess, run_processes
from thesis_mlflow.grid.runs import close_left_running
from thesis_mlflow.grid.signals import signals_as_interrupt
from thesis_mlflow.grid.status import WATCHED
from thesis_mlflow.paths import ROOT, outputs
from thesis_mlflow.spec import CellSpec
from thesis_mlflow.tracking import leases, queries
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import is_done

log = logging.getLogger(__name__)


def split_over_workers(todo: list[tuple[CellSpec, str]], workers: int) -> list[list[tuple[CellSpec, str]]]:
    """``todo`` shared among ``workers``: whole configurations (a configuration's seeds in one
    worker, where they can be stacked), round robin so that similar configurations spread."""
    configs = list(by_configuration(todo).values())
    return [[cr for seeds in configs[i::workers] for cr in seeds] for i in range(workers)]


def worker_command(g: Grid, cells: list[tuple[CellSpec, str]], mode: str, at_once: int = 1, stack_seeds: str = "auto") -> list[str]:
    """A worker process of the local backend: ``steps.grid pack`` over its share of the cells."""
    runs = ",".join(f"{c.name}={rid}" for c, rid in cells)
    return [sys.executable, "-m", "steps.grid", "pack", str(g.source), *g.load_args(), "--runs", runs, "--mode", mode,
            "--at-once", str(at_once), "--stack-seeds", stack_seeds]


def run_cells(g: Grid, todo: list[tuple[CellSpec, str]], spec: LocalSpec, exp_id: str, echo: Callable[[str], None],
              on_progress: Callable[[int], None] | None = None, stack_seeds: str = "auto") -> dict[str, str]:
    """Train ``todo`` (cell, child run id) with ``LocalSpec.jobs`` worker processes at once on this node;
    returns {cell name: final status}. Each worker imports and sets up once and trains its share
    of the cells one after another (each still its own child run, checkpoint and resume); the
    workers share the node's GPU (under a private MPS daemon where one can be started and
    ``LocalSpec.mps`` allows it, ``shared_gpu``) and split its CPU threads. Results are reported as the
    cells end."""
    logs = outputs() / "outputs" / "grids" / g.run_name / "logs"
    parallel = max(1, min(spec.jobs, len(todo) or 1))
    n_gpus = packing.gpu_count()
    result: dict[str, str] = {}
    n_total = len(todo)
    if n_gpus:  # one worker per GPU, its cells side by side on CUDA streams (no MPS needed)
        workers, mode, at_once = min(n_gpus, parallel), "threads", -(-parallel // min(n_gpus, parallel))
    else:  # CPU: `parallel` workers, each training its cells one after another
        workers, mode, at_once = parallel, "sequential", 1
    groups = split_over_workers(todo, workers)
    started = time.perf_counter()

    def report(cell: CellSpec, run, status: str, where: str) -> None:
        result[cell.name] = status
        auc = run.data.metrics.get("test_auc") if run is not None else None
        what = f"AUC {auc:.4f}" if auc is not None else f"see {where}"
        echo(f"[{len(result)}/{n_total}] {cell.name:<28} {status:<8} {what}  ({time.perf_counter() - started:.0f} s)")
        if on_progress:
            on_progress(len(result))

    def ends() -> dict:
        return gridruns.ended_children(exp_id, g.run_name)

    before = {rid: r.info.end_time for rid, r in ends().items()}  # failed in an earlier pass: not ended in this one

    def poll() -> None:  # cells that ended meanwhile, reported as they end (one query)
        ended = {rid: r for rid, r in ends().items() if before.get(rid) != r.info.end_time}
        for cell, rid in todo:
            if cell.name not in result and rid in ended:
                r = ended[rid]
                report(cell, r, "FINISHED" if is_done(r) else r.info.status, str(logs))

    def on_done(job: ChildProcess, code: int, seconds: float) -> None:
        poll()
        for cell, rid in job.cells:
            if cell.name in result:
                continue
            run = queries.get_run(rid)
            holder = leases.holder_of(run)
            if holder is not None and holder.pid != job.pid and leases.pid_alive(holder) is not False:
                result[cell.name] = "ELSEWHERE"  # another process trains it (a second grid run, a DAG job): not ours to mark
                echo(f"[{len(result)}/{n_total}] {cell.name:<28} ELSEWHERE trained by another process ({holder.describe()})")
                continue
            close_left_running(rid, job.pid)  # the worker died with it
            report(cell, queries.get_run(rid), "FAILED" if run.info.status != "SCHEDULED" else "NOT RUN", str(job.log))

    def on_interrupt(job: ChildProcess) -> None:
        for _, rid in job.cells:
            close_left_running(rid, job.pid, "KILLED")

    with signals_as_interrupt(), shared_gpu(spec.mps if mode != "threads" else "off", workers) as gpu_env:
        base = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MLFLOW_EXPERIMENT_ID": exp_id, "PYTHONUNBUFFERED": "1", WATCHED: "1",
                **packing.thread_env(workers), **gpu_env, **(packing.compile_cache_env() if n_gpus else {})}
        base.pop("MLFLOW_RUN_ID", None)
        jobs = []
        for i, group in enumerate(groups):
            env = dict(base)
            if n_gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
                env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)  # one worker per GPU
            job = ChildProcess(f"worker-{i}", worker_command(g, group, mode, at_once, stack_seeds), env, logs / f"worker-{i}.log", ROOT)
            job.cells = group
            jobs.append(job)
        run_processes(jobs, workers, on_done, on_interrupt, on_poll=poll)
    return result
