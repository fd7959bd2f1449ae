"""``grid rehearse`` and ``grid forecast`` (attached to ``steps.grid``'s group): every cell of a
scale at its real sizes for a few steps, through the real backend, and the forecast of the full run.

    thesis-mlflow grid rehearse configs/grids/binning_vs_direct.yaml --scale full --backend slurm --wait
"""

from __future__ import annotations

import sys

import click

from steps._common import choice, user_errors


def rehearsal_options(f):
    """The rehearsal's sizes: on ``rehearse`` as the user gives them, and on the jobs' own commands
    (``prepare``, ``pack``, ``forecast``), which load the same rehearsed grid."""
    f = click.option("--rehearse-eval-events", "eval_events", type=click.IntRange(min=100), default=2000, show_default=True,
                     help="Events per validation and test split (evaluation is timed per event and extrapolated).")(f)
    f = click.option("--rehearse-epochs", "rehearse_epochs", type=click.IntRange(min=2), default=2, show_default=True,
                     help="Epochs per rehearsed cell: the first carries the warm-up, the last is the steady pace.")(f)
    return f


def rehearsal_of(steps, epochs, eval_events):
    from thesis_mlflow.grid.rehearsal import Rehearsal

    return Rehearsal(steps=steps, epochs=epochs, eval_events=eval_events) if steps else None


@click.command("rehearse", help="Rehearse a grid at its real sizes (a few steps per cell) through the backend the real run uses, "
               "then forecast the full run's time, memory, disk and requeues. Exits 1 when a pack cannot finish.")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True, help="The scale to rehearse (defined in the grid file).")
@click.option("--backend", type=choice("local", "condor", "slurm"), default="local", show_default=True)
@click.option("--steps", "steps", type=click.IntRange(min=1), default=20, show_default=True, help="Training steps per epoch per cell.")
@rehearsal_options
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="local: cells at once.")
@click.option("--wait", is_flag=True, help="condor, slurm: wait for the jobs, then print the forecast (local always waits).")
@click.option("--stack-seeds", type=choice("auto", "on", "off"), default="auto", show_default=True)
@click.option("--allow-dirty", is_flag=True, envvar="THESIS_MLFLOW_ALLOW_DIRTY", help="Run code with uncommitted changes.")
@user_errors
def rehearse_cmd(grid_file, scale, backend, steps, rehearse_epochs, eval_events, jobs, wait, stack_seeds, allow_dirty) -> None:
    from thesis_mlflow.forecast.rehearse import rehearse

    r = rehearse(grid_file, scale, backend.lower(), rehearsal_of(steps, rehearse_epochs, eval_events), jobs, wait, echo=click.echo,
                 stack_seeds=stack_seeds.lower(), allow_dirty=allow_dirty)
    if r.forecast is not None:
        sys.exit(r.forecast.exit_code)


@click.command("forecast", help="The forecast from a finished rehearsal (the rehearsal's last job runs it).")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True)
@click.option("--backend", type=choice("local", "condor", "slurm"), default="local", show_default=True)
@click.option("--rehearse", "steps", type=click.IntRange(min=1), default=20, show_default=True, help="The rehearsal's steps per epoch.")
@rehearsal_options
@click.option("--stack-seeds", type=choice("auto", "on", "off"), default="auto", show_default=True)
@user_errors
def forecast_cmd(grid_file, scale, backend, steps, rehearse_epochs, eval_events, stack_seeds) -> None:
    from thesis_mlflow.forecast.rehearse import forecast_grid

    fc = forecast_grid(grid_file, scale, backend.lower(), rehearsal_of(steps, rehearse_epochs, eval_events), echo=click.echo,
                       stack_seeds=stack_seeds.lower())
    sys.exit(fc.exit_code)
