"""``thesis-mlflow grid rehearse``: run every cell of a scale at its real sizes for a few steps,
through the backend the real run will use, and forecast what the full run will cost.

The rehearsal is a grid of its own (``grid.rehearsal``: ``<grid>-rehearsal``, see
``grid.rehearsal``); its cells log their ``cost.*`` metrics like every cell; the forecast reads
them back (``forecast.measured``), computes (``forecast.arithmetic``), prints warnings first and
logs a CSV and a page on the rehearsal's parent run. Exit status 1 when a pack cannot finish.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from thesis_mlflow.errors import StepFailed
from thesis_mlflow.forecast.arithmetic import Forecast, forecast
from thesis_mlflow.forecast.measured import Measured, limits, measured
from thesis_mlflow.forecast.page import cell_rows, csv_text, html_page, pack_rows, text
from thesis_mlflow.grid import runs as gridruns
from thesis_mlflow.grid.driver import GridRun, run_grid, stacking
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.grid.packing import gpu_count
from thesis_mlflow.grid.rehearsal import Rehearsal
from thesis_mlflow.grid.status import FAILED, FINISHED, grid_status
from thesis_mlflow.paths import ROOT, resolve
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
ARTIFACTS = "forecast"  # on the rehearsal's parent: forecast/packs.csv, cells.csv, forecast.html, forecast.txt


def _log_echo(msg: str) -> None:
    log.info("%s", msg)


@dataclass
class Rehearsed:
    run: GridRun
    forecast: Forecast | None  # None: submitted, not waited for


def rehearse(grid_file: str, scale: str = "full", backend: str = "local", rehearsal: Rehearsal | None = None, jobs: int = 1,
             wait: bool = False, echo: Echo = _log_echo, stack_seeds: str = "auto", poll_s: float = 15.0,
             allow_dirty: bool | None = None) -> Rehearsed:
    """Rehearse ``grid_file``'s ``scale`` on ``backend``. The local backend waits; a scheduler's
    jobs are submitted and, with ``wait``, waited for; then the forecast (``forecast_grid``)."""
    rehearsal = rehearsal or Rehearsal()
    echo(f"rehearsal: {rehearsal.steps} steps per epoch for {rehearsal.epochs} epochs per cell, evaluation on "
         f"{rehearsal.eval_events} events per split, everything else at the scale's sizes")
    run = run_grid(grid_file, backend, scale, jobs, False, echo=echo, stack_seeds=stack_seeds, rehearsal=rehearsal, allow_dirty=allow_dirty)
    if backend != "local":
        g = load_grid(resolve(grid_file), scale, base_dir=ROOT, rehearsal=rehearsal)
        if not wait:
            echo(f"submitted: its last job prints and logs the forecast; or wait here with --wait (grid status {g.run_name})")
            return Rehearsed(run, None)
        _wait(g.run_name, echo, poll_s)
    return Rehearsed(run, forecast_grid(grid_file, scale, backend, rehearsal, echo, stack_seeds, jobs))


def _wait(name: str, echo: Echo, poll_s: float) -> None:
    # each poll reads the grid file its parent logged: MLflow would draw a download bar for it every time
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    last = None
    while True:
        st = grid_status(name)
        n = st.counts()
        line = f"rehearsal {name}: {n[FINISHED]} finished, {n[FAILED]} failed of {len(st.cells)}"
        if line != last:
            echo(line)
            last = line
        if st.cells and n[FINISHED] + n[FAILED] == len(st.cells):
            return
        time.sleep(poll_s)


def forecast_grid(grid_file: str, scale: str, backend: str, rehearsal: Rehearsal, echo: Echo = _log_echo,
                  stack_seeds: str = "auto", jobs: int = 1) -> Forecast:
    """The forecast of ``grid_file``'s full run on ``backend`` from its rehearsal's runs: printed,
    and logged on the rehearsal's parent (a CSV per table, a page, the text)."""
    path = resolve(grid_file)
    real = load_grid(path, scale, base_dir=ROOT)
    reh = load_grid(path, scale, base_dir=ROOT, rehearsal=rehearsal)
    exp = tracking.reach_store()
    gpu = gpu_count() > 0 or (backend == "slurm" and real.slurm.gpus_per_job > 0) or (
        backend == "condor" and real.condor.request_gpus > 0)
    m: Measured = measured(reh, real, backend, exp, stacked=stacking(stack_seeds, gpu), jobs=jobs)
    if not m.costs:
        raise StepFailed(f"no cell of {reh.run_name} was measured ({'; '.join(m.missing[:3])}): nothing to forecast from")
    fc = forecast(m.costs, m.sizes, limits(real, backend, gpu), m.upstream)
    echo(text(fc, m.missing))
    parent = gridruns.find_parent(reh.run_name, exp)
    if parent is not None:
        c = tracking.client()
        pid = parent.info.run_id
        c.log_text(pid, csv_text(pack_rows(fc)), f"{ARTIFACTS}/packs.csv")
        c.log_text(pid, csv_text(cell_rows(fc)), f"{ARTIFACTS}/cells.csv")
        c.log_text(pid, html_page(fc, real.run_name, m.missing), f"{ARTIFACTS}/forecast.html")
        c.log_text(pid, text(fc, m.missing), f"{ARTIFACTS}/forecast.txt")
        for k, v in {"forecast.node_hours": fc.node_hours, "forecast.gpu_hours": fc.gpu_hours, "forecast.wall_s": fc.wall_s,
                     "forecast.disk_mb": fc.disk_mb, "forecast.requeues": sum(p.requeues or 0 for p in fc.packs),
                     "forecast.exit_code": fc.exit_code}.items():
            c.log_metric(pid, k, float(v))
        echo(f"forecast logged on the rehearsal's parent run {pid} ({ARTIFACTS}/forecast.html)")
    return fc
