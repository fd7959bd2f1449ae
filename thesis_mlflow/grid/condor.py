"""What HTCondor knows of a grid's cells: DAGMan's node status file, read back per cell.

MLflow knows what a cell's run did (running, finished, failed); it cannot know that a job is
still waiting for a GPU slot, or was put on hold (memory exceeded, a missing file) and will
never start, or how often DAGMan retried it. DAGMan writes that into the node status file the
DAG names (``NODE_STATUS_FILE``, rewritten every minute); ``write_dag`` also writes which
cells each node trains (``nodes.json``). ``grid status`` reads both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATUS_FILE = "nodes.status"
CELLS_FILE = "nodes.json"
UPDATE_S = 60  # how often DAGMan rewrites the status file: fresh enough for a grid of hours, no load on the submit node

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


def write_cells_by_node(dag_dir: Path, cells_by_node: dict[str, list[str]]) -> None:
    (Path(dag_dir) / CELLS_FILE).write_text(json.dumps(cells_by_node, indent=1))


def cell_states(dag_dir: Path) -> dict[str, NodeState]:
    """{cell name: the state of the node that trains it} for a DAG written by ``write_dag``."""
    dag_dir = Path(dag_dir)
    try:
        cells_by_node = json.loads((dag_dir / CELLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    nodes = read_node_status(dag_dir / STATUS_FILE)
    return {cell: nodes[node] for node, cells in cells_by_node.items() if node in nodes for cell in cells}
