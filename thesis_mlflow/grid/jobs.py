"""One model of a grid's batch jobs, whichever scheduler runs them (HTCondor's DAGMan, SLURM).

MLflow knows what a cell's run did; only the scheduler knows that the job that trains it is
still waiting for a slot, was put on hold, was requeued, ran out of time or memory, lost its
node, was cancelled, or can never start because a job it depends on failed. Each backend reads
its scheduler into one ``JobView`` per cell (each backend's ``state.cell_views``, ``grid.backends``);
``refine`` joins them with the runs' states for ``grid status`` and the parent's progress, the
same way for both.
"""

from __future__ import annotations

from dataclasses import dataclass

# A job's phase, as the grid sees it
WAITING = "waiting"  # not submitted yet, or held back by a dependency that can still be met
QUEUED = "queued"  # submitted, waiting for resources (``reason``: the scheduler's word)
RUNNING = "running"
REQUEUED = "requeued"  # stopped and put back in the queue (time limit, preemption, node failure, an admin): it will run again
HELD = "held"  # stopped until someone acts (HTCondor hold, SLURM user/admin hold): needs the user
DONE = "done"  # ended by itself, exit 0
ENDED = "ended"  # ended for good without finishing (``cause`` says how)

ACTIVE = (WAITING, QUEUED, RUNNING, REQUEUED)  # the scheduler will still run it: a new submission must not train its cells again

# Why a job ended for good (``JobView.cause``)
TIMED_OUT = "timed out"
OUT_OF_MEMORY = "out of memory"
NODE_FAILURE = "node failure"
CANCELLED = "cancelled"
NEVER = "dependency never satisfied"
FAILED = "failed"  # a non-zero exit of its own: the cell's run records why
PREEMPTED = "preempted"


@dataclass(frozen=True)
class JobView:
    """What the scheduler knows of the job that trains one cell."""

    scheduler: str  # "HTCondor", "SLURM": named in messages
    phase: str  # one of the phases above
    job: str = ""  # the job's id (SLURM) or DAG node (HTCondor)
    reason: str = ""  # the scheduler's own words: a pending reason, a hold reason, how it ended
    cause: str | None = None  # with ENDED: one of the causes above
    retries: int = 0  # times the scheduler ran it again (DAGMan retries, SLURM requeues)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def label(self) -> str:
        """A short column for ``grid status``: ``12 pending (Resources)``, ``12 timed out``."""
        what = {QUEUED: "pending", WAITING: "waiting"}.get(self.phase, self.cause if self.phase == ENDED and self.cause else self.phase)
        why = f" ({self.reason})" if self.reason and self.phase in (QUEUED, WAITING, HELD) else ""
        return f"{self.job} {what}{why}".strip()
