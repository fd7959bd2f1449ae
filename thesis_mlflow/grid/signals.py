"""A batch job's signals as Ctrl-C: SIGTERM and SIGHUP (a scheduler removing, evicting, cancelling
or requeueing a job, a closed terminal) and, in a SLURM pack, SIGUSR1 (its warning before the time
limit: ``slurm.injob``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Caught:
    """Which signal interrupted the work (``signals_as_interrupt``): ``time_limit`` when it was
    SLURM's warning before the job's time limit (SIGUSR1), which asks for a requeue, not an end."""

    signum: int | None = None

    @property
    def time_limit(self) -> bool:
        import signal

        return self.signum == signal.SIGUSR1


@contextmanager
def signals_as_interrupt(time_limit: bool = False) -> Iterator[Caught]:
    """SIGTERM and SIGHUP (Condor removing or evicting a job, SLURM cancelling, preempting or
    requeueing one, a closed terminal) act as Ctrl-C: ``processes.run_processes`` then stops its children, marks
    their runs, and the MPS daemon and temporary folders are cleaned up on the way out, instead of
    being left behind. ``time_limit``: SIGUSR1 too (SLURM's warning before a job's time limit,
    ``--signal=B:USR1@N``). Yields which signal came first."""
    import signal

    caught = Caught()

    def interrupt(signum, frame):
        if caught.signum is None:
            caught.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    which = (signal.SIGTERM, signal.SIGHUP) + ((signal.SIGUSR1,) if time_limit else ())
    old = {s: signal.signal(s, interrupt) for s in which}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)
