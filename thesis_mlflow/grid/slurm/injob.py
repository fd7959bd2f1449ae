"""The SLURM pack's side inside its job: the mark its log lines carry, SLURM's warning before the
time limit (``USR1``, ``TIME_LIMIT_SIGNAL``), whether the job is already within it (``near_end``),
and the pack's own requeue once its cells have stopped at their checkpoints (``requeue_self``).
(Catching the signal itself: ``grid.signals.signals_as_interrupt``, shared with the local backend's
Ctrl-C.)"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from thesis_mlflow.errors import StepFailed
from thesis_mlflow.grid.signals import Caught
from thesis_mlflow.grid.slurm import commands

log = logging.getLogger(__name__)

MARK = "thesis-mlflow:"  # the start of the lines a job writes about itself into its log (read back when SLURM has forgotten the job)
TIME_LIMIT_SIGNAL = "USR1"


def near_end(signal_before_end_s: int) -> bool:
    """Whether this SLURM job is already within its warning time of its end (a warning sent in the
    instant between the script's exec and Python noting it would otherwise be missed)."""
    import datetime

    job = os.environ.get("SLURM_JOB_ID")
    text = commands.query(["squeue", "-h", "-j", job, "-o", "%e"], timeout_s=30) if job else None
    try:
        end = datetime.datetime.fromisoformat((text or "").strip())
    except ValueError:
        return False  # no end time (unlimited, or SLURM did not answer): the warning, if any, still comes
    return (end - datetime.datetime.now()).total_seconds() <= signal_before_end_s


def requeue_self(progressed: bool, max_requeues: int, echo: Callable[[str], None] = log.info) -> None:
    """SLURM warned this pack of its time limit and its cells have stopped at their checkpoints:
    ask SLURM to put the job back in the queue, where it resumes them. Refused (``StepFailed``,
    the job then ends) after ``max_requeues`` requeues, saying when the last attempt got no epoch
    done (``progressed``: then the time limit is too short for one epoch). An attempt without
    progress is still requeued below the cap: SLURM may send its warning up to 60 s early."""
    job = os.environ.get("SLURM_JOB_ID")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if not job:
        raise StepFailed("stopped by SIGUSR1 outside a SLURM job: nothing to requeue; the runs resume at the next start")
    if restarts >= max_requeues:
        why = ("; no cell finished an epoch in this attempt: slurm.time is too short for one epoch of this pack"
               if not progressed else "; its cells stopped at their checkpoints")
        raise StepFailed(f"{MARK} TIME LIMIT: job {job} reached its time limit after {restarts} requeue(s) (slurm.max_requeues = "
                         f"{max_requeues}){why}: raise slurm.time (or lower slurm.cells_per_job) and run `grid run` again")
    echo(f"{MARK} REQUEUE: job {job} near its time limit: its cells stopped at their checkpoints; requeued "
         f"({restarts + 1} of at most {max_requeues}), the next attempt resumes them")
    sys.stdout.flush()
    import signal

    # SLURM answers a requeue with SIGTERM to this job: the cells have already stopped, so this
    # process exits by itself instead of dying with a traceback in the middle of the request
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    commands.run(["scontrol", "requeue", job])


EARLY = Caught()  # SLURM's time-limit warning when it came while a pack was still setting up


def watch_time_limit() -> None:
    """Note SLURM's warning before the time limit (SIGUSR1) from the first moment of a pack job,
    while it still sets up (importing torch and MLflow takes seconds, more on a busy node): its
    default action would end the process, and SLURM sends it once. ``driver.run_pack`` reads ``EARLY``."""
    import signal

    def note(signum, frame):
        EARLY.signum = signum

    signal.signal(signal.SIGUSR1, note)
