"""What HTCondor knows of a grid's cells, for ``grid status``: DAGMan's node status file
(``NODE_STATUS_FILE``, rewritten every minute: queued, held, retried), the jobs' event log (how
long a node is held, how often it was released with more memory), and which cells each node
trains (``nodes.json``, written with the DAG). MLflow knows what a cell's run did; it cannot know
that a job still waits for a slot or is on hold."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from thesis_mlflow.grid import jobs
from thesis_mlflow.grid.jobs import JobView

log = logging.getLogger(__name__)

STATUS_FILE = "nodes.status"
CELLS_FILE = "nodes.json"
SETTINGS_FILE = "status.json"  # what `grid status` needs of the grid file: the jobs' event log, the held limit

# DAGMan's NodeStatus codes (HTCondor manual, "Node Status File")
NOT_READY, READY, PRERUN, SUBMITTED, POSTRUN, DONE, ERROR, FUTILE = range(8)


@dataclass(frozen=True)
class NodeState:
    node: str
    status: int
    details: str = ""
    held: int = 0  # job procs on hold
    queued: int = 0  # job procs in the queue (idle or running)
    retries: int = 0
    held_since: float | None = None  # from the jobs' event log: when its current hold began
    memory_releases: int = 0  # times it was released with more memory after exceeding it
    held_limit_h: float | None = None  # the grid's condor.held_limit_h

    @property
    def state(self) -> str:
        """``held``, ``queued`` (idle, waiting for a slot), ``running``, ``done``, ``error`` or ``waiting``
        (not submitted yet: parents unfinished, or DAGMan's throttles)."""
        if self.status == SUBMITTED:
            if self.held:
                return "held"
            return "running" if self.details == "not_idle" else "queued"
        if self.status in (PRERUN, POSTRUN):
            return "running"
        if self.status == DONE:
            return "done"
        if self.status in (ERROR, FUTILE):
            return "error"
        return "waiting"

    def view(self) -> JobView:
        """This node as the grid's one model of a job (``grid.jobs``)."""
        phase = {"held": jobs.HELD, "queued": jobs.QUEUED, "running": jobs.RUNNING, "done": jobs.DONE, "error": jobs.ENDED}.get(self.state, jobs.WAITING)
        reason = self.details or ("node failed after its retries" if phase == jobs.ENDED else "")
        if phase == jobs.HELD and self.held_since is not None:
            hours = (time.time() - self.held_since) / 3600
            if self.held_limit_h is not None and hours > self.held_limit_h:
                reason = (f"held for {hours:.0f} h, longer than condor.held_limit_h = {self.held_limit_h:g} h: nothing will release it; "
                          f"condor_release it (after fixing the cause) or condor_rm it. {reason}").strip()
        if self.memory_releases:
            reason = f"{reason} (released {self.memory_releases}x with more memory)".strip()
        return JobView("HTCondor", phase, self.node, reason, jobs.FAILED if phase == jobs.ENDED else None, self.retries)


def read_node_status(path: Path) -> dict[str, NodeState]:
    """The nodes of a node status file (ClassAds, one per node); {} when unreadable (not written
    yet, or half-written while DAGMan replaces it: the next refresh has it)."""
    import classad2

    try:
        text = Path(path).read_text()
        ads = list(classad2.parseAds(text))
    except (OSError, ValueError, classad2.ClassAdException) as e:
        log.debug("node status file %s not readable: %s", path, e)
        return {}
    out = {}
    for ad in ads:
        if ad.get("Type") != "NodeStatus":
            continue
        out[str(ad["Node"])] = NodeState(str(ad["Node"]), int(ad.get("NodeStatus", NOT_READY)), str(ad.get("StatusDetails", "")),
                                         int(ad.get("JobProcsHeld", 0)), int(ad.get("JobProcsQueued", 0)), int(ad.get("RetryCount", 0)))
    return out


def hold_history(event_log: Path) -> dict[str, tuple[float | None, int]]:
    """{DAG node: (when its current hold began or None, times released after exceeding its
    memory)} from the jobs' event log (the submit files' ``log``; DAGMan notes each job's node)."""
    import htcondor2

    node_of: dict[int, str] = {}
    out: dict[str, list] = {}
    try:
        events = list(htcondor2.JobEventLog(str(event_log)).events(0))
    except (OSError, htcondor2.HTCondorException, RuntimeError) as e:
        log.debug("event log %s not readable: %s", event_log, e)
        return {}
    for e in events:
        if e.type == htcondor2.JobEventType.SUBMIT:
            m = re.search(r"DAG Node: (\S+)", str(e.get("LogNotes", "")))
            if m:
                node_of[e.cluster] = m.group(1)
            continue
        node = node_of.get(e.cluster)
        if node is None:
            continue
        h = out.setdefault(node, [None, 0, False])
        if e.type == htcondor2.JobEventType.JOB_HELD:
            h[0], h[2] = float(e.timestamp), (e.get("HoldReasonCode") == 34 or (e.get("HoldReasonCode") == 3 and e.get("HoldReasonSubCode") == 34))
        elif e.type == htcondor2.JobEventType.JOB_RELEASED:
            h[1] += 1 if h[2] else 0
            h[0], h[2] = None, False
    return {k: (v[0], v[1]) for k, v in out.items()}


def cell_states(dag_dir: Path) -> dict[str, NodeState]:
    """{cell name: the state of the node that trains it} for a DAG written by ``write_dag``,
    with how long a held node has been held and how often it was released with more memory."""
    dag_dir = Path(dag_dir)
    try:
        cells_by_node = json.loads((dag_dir / CELLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    nodes = read_node_status(dag_dir / STATUS_FILE)
    try:
        settings = json.loads((dag_dir / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        settings = {}
    if settings.get("event_log"):
        holds = hold_history(Path(settings["event_log"]))
        nodes = {n: replace(st, held_since=holds.get(n, (None, 0))[0], memory_releases=holds.get(n, (None, 0))[1],
                            held_limit_h=settings.get("held_limit_h")) for n, st in nodes.items()}
    return {cell: nodes[node] for node, cells in cells_by_node.items() if node in nodes for cell in cells}


def cell_views(dag_dir: Path) -> tuple[dict[str, JobView], str | None]:
    """{cell name: its node as the grid's one model of a job} and no note (the files are read, no daemon asked): the same face as SLURM's ``state.cell_views``."""
    return {cell: n.view() for cell, n in cell_states(dag_dir).items()}, None
