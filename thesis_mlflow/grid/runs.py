"""A grid's runs in MLflow: one parent per grid, one child per cell, and what is written on them.

Everything the driver, ``grid status`` and the report do to a grid's parent and children goes
through here: finding or creating them once (also when several drivers start together),
closing a run a dead process left RUNNING, the parent's progress and its end. ``leases``
decides who works on a run; ``tracking`` holds the client and the step runs.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from mlflow.entities import Metric, Param, RunTag

from thesis_mlflow.grid.gridfile import Grid, load_grid
from thesis_mlflow.grid.rehearsal import TAG as REHEARSAL_TAG
from thesis_mlflow.paths import ROOT
from thesis_mlflow.spec import CellSpec
from thesis_mlflow.tracking import leases, provenance, queries
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)
DAG_DIR_TAG = "condor.dag_dir"  # on a Condor grid's parent: the folder of its DAG and node status file
SLURM_DIR_TAG = "slurm.job_dir"  # on a SLURM grid's parent: the folder of its job scripts, jobs record and logs
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI


# --------------------------------------------------------------------------- parent and children


def rehearsal_tags(g: Grid) -> dict[str, str]:
    """``grid.rehearsal`` on a rehearsal's parent and children (none on a real grid's)."""
    return {REHEARSAL_TAG: "true"} if g.rehearsal else {}


def find_parent(grid_name: str, exp_id: str):
    """The grid's parent run (the oldest with its ``grid.name``), or None."""
    runs = tracking.client().search_runs([exp_id], queries.grid_filter(grid_name, "grid"),
                                         order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def find_or_create_parent(g: Grid, exp_id: str):
    """The grid's parent run: found by its ``grid.name`` tag, else created once, also when several
    drivers (or a driver and ``mlflow run . -e grid``) start together (a claim decides which).

    Under ``mlflow run . -e grid`` the run MLflow made for us becomes the parent the first
    time; on a resume it is only linked to the existing parent, so no grid has two.
    """
    run = find_parent(g.run_name, exp_id)
    c = tracking.client()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if run is not None:
        if env_run and env_run != run.info.run_id:
            c.set_tag(env_run, "grid.resumed_parent", run.info.run_id)
        return run
    tags = {"step": "grid", "grid.name": g.run_name, "grid.scale": g.scale, **rehearsal_tags(g)}
    if env_run:
        rid = env_run
        for k, v in {**tags, "mlflow.runName": f"grid-{g.run_name}"}.items():
            c.set_tag(rid, k, v)
    else:
        found, claim = leases.find_or_claim("grid", {"grid": g.run_name}, f"grid-{g.run_name}", find=lambda exp: find_parent(g.run_name, exp))
        if found is not None:
            return found
        rid = claim.run_id
        for k, v in tags.items():
            c.set_tag(rid, k, v)
        claim.release()  # the run is the parent now; the driver takes its own lease on it

    # which code drives the grid (its cells record their own) and what the grid is: one batch
    params = {"grid_file": str(g.source), "scale_name": g.scale, "n_cells": len(g.cells()), "seeds": ",".join(map(str, g.seeds)),
              "tokenizers": ",".join(g.tokenizers)}
    c.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in provenance.provenance_tags("grid").items()])
    code = provenance.code_state()
    if code.dirty:
        c.log_text(rid, code.diff, provenance.DIFF_ARTIFACT)
    if g.source:
        c.log_artifact(rid, str(g.source), "grid")
    return c.get_run(rid)


def children_by_cell(parent_id: str, exp_id: str) -> dict[str, object]:
    """Existing child runs by ``grid.cell`` tag (oldest first wins: never two runs for a cell)."""
    runs = tracking.client().search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time ASC"],
                                         max_results=5000)
    out = {}
    for r in runs:
        out.setdefault(r.data.tags.get("grid.cell"), r)
    return out


def ensure_children(g: Grid, parent, exp_id: str) -> dict[CellSpec, object]:
    """One child run per cell, created once, with readable name, cell tags and factor params."""
    c = tracking.client()
    pid = parent.info.run_id
    existing = children_by_cell(pid, exp_id)
    new = [cell for cell in g.cells() if cell.tag not in existing]
    t0 = int(time.time() * 1000)

    def create(i: int, cell: CellSpec) -> str:  # three calls per new cell (a grid of 108 on a shared server: ~300, not ~900)
        # start times one ms apart in the grid's order: the UI lists the children as the grid file does,
        # although they are created side by side
        rid = c.create_run(exp_id, start_time=t0 + i, run_name=cell.name,
                           tags={"mlflow.parentRunId": pid, "grid.name": g.run_name, "grid.cell": cell.tag, "step": "train",
                                 **rehearsal_tags(g)}).info.run_id
        c.log_batch(rid, params=[Param(k, tracking.fmt(v)) for k, v in cell.factors().items()])
        c.update_run(rid, status="SCHEDULED")  # waiting, not running
        return rid

    # side by side: each call waits on the server (36 cells one after another: ~6 s of the demo, ~1 s so)
    with ThreadPoolExecutor(max_workers=min(8, len(new) or 1), thread_name_prefix="create") as pool:
        created = list(pool.map(create, range(len(new)), new))
    if created:  # read back in one query, as they are now
        existing = children_by_cell(pid, exp_id)
        missing = set(created) - {r.info.run_id for r in existing.values()}
        existing.update({(r := c.get_run(rid)).data.tags["grid.cell"]: r for rid in missing})
    return {cell: existing[cell.tag] for cell in g.cells()}


def ended_children(exp_id: str, grid_name: str) -> dict[str, object]:
    """The grid's child runs that have ended (FINISHED, FAILED, KILLED), by run id: one query."""
    runs = tracking.client().search_runs([exp_id], queries.grid_filter(grid_name), max_results=5000)
    return {r.info.run_id: r for r in runs if r.info.status in ("FINISHED", "FAILED", "KILLED")}


def close_left_running(rid: str, pid: int, status: str = "FAILED") -> None:
    """A child process ``pid`` ended without closing run ``rid`` (killed, crashed): release its
    lease for the next attempt and close the run as ``status`` if it was left RUNNING."""
    leases.release_dead(rid, pid)
    c = tracking.client()
    if c.get_run(rid).info.status == "RUNNING":
        c.set_terminated(rid, status)


def mark_running(parent) -> None:
    """A pass of the driver starts: the parent is RUNNING (again, on a resumed grid)."""
    if parent.info.status != "RUNNING":
        tracking.client().update_run(parent.info.run_id, status="RUNNING")


def end_parent(parent_id: str, n_done: int, n_cells: int, close: bool = True) -> None:
    """The driver's pass is over: cells finished as a metric; with ``close`` (no cell is trained
    elsewhere any more) the parent ends, FINISHED when every cell is."""
    c = tracking.client()
    c.log_metric(parent_id, "n_finished", n_done)
    if close:
        c.set_terminated(parent_id, "FINISHED" if n_done == n_cells else "FAILED")


def set_dag_dir(parent_id: str, dag_dir) -> None:
    tracking.client().set_tag(parent_id, DAG_DIR_TAG, str(dag_dir))


def set_slurm_dir(parent_id: str, job_dir) -> None:
    tracking.client().set_tag(parent_id, SLURM_DIR_TAG, str(job_dir))


def close_parent(data, n_missing: int) -> None:
    """A parent left RUNNING by a Condor submission is closed once no cell is queued or running
    (the report is the DAG's final node): FINISHED when nothing is missing, else FAILED."""
    parent = data.parent
    if parent is None or parent.info.status != "RUNNING":
        return
    if data.runs["status"].isin(["RUNNING", "SCHEDULED"]).any():
        return
    tracking.client().set_terminated(parent.info.run_id, "FINISHED" if n_missing == 0 else "FAILED")


# --------------------------------------------------------------------------- what the parent knows


def grid_of(parent):
    """The grid its parent run logged (its grid file at the run's scale), or None if unreadable."""
    try:
        files = queries.artifact_paths(parent.info.run_id, "grid", parent.info.artifact_uri)
        path = queries.artifact_path(parent.info.run_id, files[0])
        return load_grid(path, parent.data.params.get("scale_name", parent.data.tags.get("grid.scale", "full")), base_dir=ROOT)
    except Exception as e:  # noqa: BLE001 - an unreadable grid file: the runs that exist are what is known
        log.warning("could not read the grid file of parent %s (%s)", parent.info.run_id, e)
        return None


def expected_cells_of(parent) -> list | None:
    """The cells a grid asked for, from the grid file its parent run logged (None if unreadable)."""
    g = grid_of(parent)
    return g.cells() if g is not None else None


def publish_progress(parent_id: str, counts: dict[str, int], note: str, step: int | None = None) -> None:
    """``counts`` as metrics of the parent (step = seconds since it started, so the charts show
    progress over time across resumed passes) and ``note`` as its description."""
    c = tracking.client()
    ts = int(time.time() * 1000)
    if step is None:
        step = max(0, (ts - c.get_run(parent_id).info.start_time) // 1000)
    c.log_batch(parent_id, metrics=[Metric(k, float(v), ts, step) for k, v in counts.items()])
    c.set_tag(parent_id, NOTE_TAG, note)
