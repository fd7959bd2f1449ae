"""The commands a grid's jobs run (``python -m steps.grid prepare|pack``, attached to ``steps.grid``'s
group): the upstream runs once, and a pack of cells on one node. Their command lines are written by
the backends (``grid.local.submit.worker_command``, the SLURM scripts, the DAG)."""

from __future__ import annotations

import click

from steps._common import choice, user_errors
from steps.rehearse import rehearsal_of, rehearsal_options

STACK_HELP = ("Train the seeds of each configuration as one stacked model (each seed keeps its own run, stream, checkpoint "
              "and metrics). auto: stacked on a GPU (one compiled step per configuration), not on a CPU.")
MPS_HELP = "Several cells on one GPU: run them under a private CUDA MPS daemon (auto: where one can be started)."

REHEARSE = click.option("--rehearse", "rehearse_steps", type=click.IntRange(min=1), default=None, hidden=True,
                        help="A rehearsal's job: the grid as rehearsed with this many steps per epoch (grid rehearse sets it).")


@click.command("prepare", help="Run the upstream steps (binning, VQ-VAE) of a grid once; the DAG's first node.")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True)
@REHEARSE
@rehearsal_options
@user_errors
def prepare_cmd(grid_file, scale, rehearse_steps, rehearse_epochs, eval_events) -> None:
    from thesis_mlflow.grid.driver import prepare
    from thesis_mlflow.grid.gridfile import load_grid
    from thesis_mlflow.paths import ROOT, resolve
    from thesis_mlflow.tracking import runs as tracking

    g = load_grid(resolve(grid_file), scale, base_dir=ROOT, rehearsal=rehearsal_of(rehearse_steps, rehearse_epochs, eval_events))
    tracking.ensure_experiment()
    for k, v in prepare(g).items():
        click.echo(f"{k}: run {v}")


@click.command("pack", help="Train several cells on this node (a Condor pack node, a local worker); finished cells are skipped.")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True)
@REHEARSE
@rehearsal_options
@click.option("--runs", required=True, help="The pack's cells and their child runs: name=run_id,name=run_id,...")
@click.option("--mode", type=choice("threads", "sequential", "processes"), default="threads", show_default=True,
              help="threads: in this process, side by side on the GPU (one CUDA stream each) or one after another on a CPU; "
                   "sequential: one after another; processes: one process per cell sharing the GPU (under MPS when it works).")
@click.option("--at-once", type=click.IntRange(min=1), default=None, help="threads: at most this many cells side by side [default: all].")
@click.option("--mps", type=choice("auto", "on", "off"), default="auto", show_default=True, help=MPS_HELP)
@click.option("--device", type=choice("auto", "cpu", "cuda"), default="auto", show_default=True,
              help="cuda: train on the GPU or fail at once when none is visible (the DAG sets it when the job asks for GPUs).")
@click.option("--stack-seeds", type=choice("auto", "on", "off"), default="auto", show_default=True, help=STACK_HELP)
@click.option("--slurm-requeues", type=click.IntRange(min=0), default=None,
              help="A SLURM job: on SLURM's warning before the time limit (SIGUSR1) stop every cell at its checkpoint and requeue "
                   "the job, at most this many times (its job script sets it).")
@user_errors
def pack_cmd(grid_file, scale, rehearse_steps, rehearse_epochs, eval_events, runs, mode, at_once, mps, device, stack_seeds,
             slurm_requeues) -> None:
    if slurm_requeues is not None:  # before the heavy imports: SLURM's warning may come while they run
        from thesis_mlflow.grid.slurm.injob import watch_time_limit

        watch_time_limit()
    from thesis_mlflow.grid.driver import run_pack

    try:
        run_pack(grid_file, scale, runs, echo=click.echo, mps=mps.lower(), mode=mode.lower(), at_once=at_once, device=device.lower(),
                 stack_seeds=stack_seeds.lower(), slurm_requeues=slurm_requeues,
                 rehearsal=rehearsal_of(rehearse_steps, rehearse_epochs, eval_events))  # a failed cell: StepFailed, exit 1 (DAGMan retries)
    finally:
        if slurm_requeues is not None:
            import signal

            # Python's shutdown puts its own handlers back to the default, which for USR1 ends the
            # process: a warning during the last second of a finished pack made SLURM call it FAILED
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
