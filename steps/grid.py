"""``grid``: launch the whole study as one parent run with one child run per cell.

    thesis-mlflow grid run configs/grids/binning_vs_direct.yaml --backend local --scale demo --jobs 2
    thesis-mlflow grid run configs/grids/binning_vs_direct.yaml --backend condor [--dry-run]
    thesis-mlflow grid status configs/grids/binning_vs_direct.yaml --scale demo

The commands the jobs themselves run (``prepare``, ``pack``) are ``steps.gridjobs``'s; ``rehearse``
and ``forecast`` are ``steps.rehearse``'s: all reached as ``python -m steps.grid <command>``.
"""

from __future__ import annotations

import sys
import time

import click

from steps._common import choice, user_errors
from steps.gridjobs import MPS_HELP, STACK_HELP, pack_cmd, prepare_cmd
from steps.rehearse import forecast_cmd, rehearse_cmd


@click.group("grid", help="Run the grid of cells as parent/child MLflow runs (local, HTCondor or SLURM).")
def main() -> None:
    pass


@main.command("run")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--backend", type=choice("local", "condor", "slurm"), default="local", show_default=True,
              help="local: this machine; condor: a DAG for HTCondor; slurm: a chain of sbatch jobs (docs/cluster.md).")
@click.option("--scale", default="full", show_default=True, help="A scale defined in the grid file (demo, full).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="local: cells at once (packed on the GPU).")
@click.option("--mps", type=choice("auto", "on", "off"), default="auto", show_default=True, help=MPS_HELP)
@click.option("--stack-seeds", type=choice("auto", "on", "off"), default="auto", show_default=True, help=STACK_HELP)
@click.option("--dry-run", is_flag=True, help="condor: write and print the DAG and submit files; slurm: the job scripts and sbatch "
              "commands; local: print the commands. Nothing is submitted.")
@click.option("--allow-dirty", is_flag=True, envvar="THESIS_MLFLOW_ALLOW_DIRTY",
              help="Run code with uncommitted changes (refused otherwise); the diff is recorded on the grid's parent run.")
@user_errors
def run_cmd(grid_file, backend, scale, jobs, mps, stack_seeds, dry_run, allow_dirty) -> None:
    from thesis_mlflow.grid.driver import run_grid

    s = run_grid(grid_file, backend.lower(), scale, jobs, dry_run, echo=click.echo, mps=mps.lower(), allow_dirty=allow_dirty,
                 stack_seeds=stack_seeds.lower())
    if backend == "local" and not dry_run and not s.complete:
        sys.exit(1)


@main.command("status", help="The state of a grid at a glance; exits 1 when a cell failed or is held (for scripts).")
@click.argument("grid")
@click.option("--scale", default=None, help="With a grid file: the scale (default full). A grid name (e.g. binning_vs_direct-demo) needs none.")
@click.option("--watch", type=click.FloatRange(min=1), default=None, help="Refresh every N seconds until every cell is finished or failed.")
@user_errors
def status_cmd(grid, scale, watch) -> None:
    from thesis_mlflow.grid.status import FAILED, FINISHED, grid_status

    while True:
        st = grid_status(grid, scale)
        text = st.render(with_logs=watch is None)
        if watch is None:
            click.echo(text)
            break
        click.echo("\033[2J\033[H" + text)  # redraw in place
        n = st.counts()
        if n[FINISHED] + n[FAILED] == len(st.cells):
            break
        time.sleep(watch)
    sys.exit(st.exit_code)


for _cmd in (prepare_cmd, pack_cmd, rehearse_cmd, forecast_cmd):  # what the jobs run; the rehearsal
    main.add_command(_cmd)

if __name__ == "__main__":
    main()
