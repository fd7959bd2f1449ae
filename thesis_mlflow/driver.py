"""The grid as MLflow runs: one parent per grid, one child per cell, run locally or on HTCondor.

Re-running the same grid resumes it: FINISHED cells are skipped; FAILED, KILLED and
never-started cells run again on their own child run id (so training resumes from its
checkpoint); no cell is ever created twice. Built on ``tracking``; the grid file and the DAG
are ``thesis_mlflow.grid``'s. ``echo`` callbacks carry what a user should see (the steps pass
``click.echo``); everything else is logged.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import leases, packing, tracking, views
from .done import is_done
from .errors import LeaseHeld
from .grid import Grid, load_grid, write_dag
from .paths import ROOT, resolve
from .spec import CellSpec

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


def _log_echo(msg: str) -> None:
    log.info("%s", msg)


# --------------------------------------------------------------------------- runs


def find_parent(g: Grid, exp_id: str):
    runs = tracking.client().search_runs([exp_id], tracking.grid_filter(g.run_name, "grid"),
                                         order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def find_or_create_parent(g: Grid, exp_id: str):
    """The grid's parent run: found by its ``grid.name`` tag, else created once, also when several
    drivers (or a driver and ``mlflow run . -e grid``) start together (a claim decides which).

    Under ``mlflow run . -e grid`` the run MLflow made for us becomes the parent the first
    time; on a resume it is only linked to the existing parent, so no grid has two.
    """
    run = find_parent(g, exp_id)
    c = tracking.client()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if run is not None:
        if env_run and env_run != run.info.run_id:
            c.set_tag(env_run, "grid.resumed_parent", run.info.run_id)
        return run
    tags = {"step": "grid", "grid.name": g.run_name, "grid.scale": g.scale}
    if env_run:
        rid = env_run
        for k, v in {**tags, "mlflow.runName": f"grid-{g.run_name}"}.items():
            c.set_tag(rid, k, v)
    else:
        found, claim = leases.find_or_claim("grid", {"grid": g.run_name}, f"grid-{g.run_name}", find=lambda exp: find_parent(g, exp))
        if found is not None:
            return found
        rid = claim.run_id
        for k, v in tags.items():
            c.set_tag(rid, k, v)
        claim.release()  # the run is the parent now; the driver takes its own lease on it
    c.log_param(rid, "grid_file", str(g.source))
    c.log_param(rid, "scale_name", g.scale)
    c.log_param(rid, "n_cells", len(g.cells()))
    c.log_param(rid, "seeds", ",".join(map(str, g.seeds)))
    c.log_param(rid, "tokenizers", ",".join(g.tokenizers))
    if g.source:
        c.log_artifact(rid, str(g.source), "grid")
    return c.get_run(rid)


def find_children(parent_id: str, exp_id: str) -> dict[str, object]:
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
    existing = find_children(pid, exp_id)
    out = {}
    for cell in g.cells():
        run = existing.get(cell.tag)
        if run is None:
            run = c.create_run(exp_id, run_name=cell.name, tags={"mlflow.parentRunId": pid, "grid.name": g.run_name, "grid.cell": cell.tag,
                                                                 "step": "train"})
            for k, v in cell.factors().items():
                c.log_param(run.info.run_id, k, tracking.fmt(v))
            c.update_run(run.info.run_id, status="SCHEDULED")  # waiting, not running
            run = c.get_run(run.info.run_id)
        out[cell] = run
    return out


def prepare(g: Grid) -> dict[str, str]:
    """The upstream runs, once: binning per vect and VQ-VAE per vect where included."""
    from . import upstream

    raw = upstream.ensure_raw(g.data)
    done = {}
    for vect in g.factors["vect"]:
        if "binned" in g.tokenizers:
            done[f"binning_v{vect}"] = upstream.find_or_run_binning(str(raw), vect=vect, **g.binning)[0]
        if "vqvae" in g.tokenizers:
            done[f"vqvae_v{vect}"] = upstream.find_or_run_vqvae(upstream.VQSpec(input=str(raw), vect=vect, **g.vqvae))[0]
    return done


# --------------------------------------------------------------------------- running cells


def train_command(cell: CellSpec) -> list[str]:
    """The command one cell runs: identical for the local backend, a Condor node and a pack."""
    return [sys.executable, "-m", "steps.train", *cell.cli_args()]


def run_cells(g: Grid, todo: list[tuple[CellSpec, str]], parallel: int, exp_id: str, echo: Echo = _log_echo,
              mps: str = "auto", on_progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Train ``todo`` (cell, child run id) with ``parallel`` processes at once on this node;
    returns {cell name: final status}. Several processes share the node's GPU (under a private
    MPS daemon where one can be started, ``packing.shared_gpu``); each limits its CPU threads."""
    logs = ROOT / "outputs" / "grids" / g.run_name / "logs"
    c = tracking.client()
    parallel = max(1, min(parallel, len(todo) or 1))
    n_gpus = packing.gpu_count()
    result: dict[str, str] = {}
    n_total, n_done = len(todo), 0

    def on_done(job: packing.Job, code: int, seconds: float) -> None:
        nonlocal n_done
        rid = job.env["MLFLOW_RUN_ID"]
        run = c.get_run(rid)
        if code == LeaseHeld.exit_code:  # another process trains this cell (a second grid run, a DAG job): not ours to mark
            n_done += 1
            result[job.key] = "ELSEWHERE"
            holder = leases.holder_of(run)
            echo(f"[{n_done}/{n_total}] {job.key:<28} {'ELSEWHERE':<8} trained by another process ({holder.describe() if holder else 'see ' + str(job.log)})")
            return
        if code != 0:
            leases.release_dead(rid, job.pid)  # the next attempt need not wait for its beat to go stale
            if run.info.status in ("RUNNING", "SCHEDULED"):
                c.set_terminated(rid, "FAILED")  # killed before it could say so itself
            run = c.get_run(rid)
        n_done += 1
        status = run.info.status if code == 0 else "FAILED"
        result[job.key] = status
        auc = run.data.metrics.get("test_auc")
        what = f"AUC {auc:.4f}" if auc is not None else f"see {job.log}"
        echo(f"[{n_done}/{n_total}] {job.key:<28} {status:<8} {what}  ({seconds:.0f} s)")
        if on_progress:
            on_progress(n_done)

    def on_interrupt(job: packing.Job) -> None:
        leases.release_dead(job.env["MLFLOW_RUN_ID"], job.pid)
        c.set_terminated(job.env["MLFLOW_RUN_ID"], "KILLED")

    with packing.signals_as_interrupt(), packing.shared_gpu(mps, parallel) as gpu_env:
        base = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MLFLOW_EXPERIMENT_ID": exp_id, "PYTHONUNBUFFERED": "1",
                **packing.thread_env(parallel), **gpu_env}
        jobs = []
        for i, (cell, rid) in enumerate(todo):
            env = {**base, "MLFLOW_RUN_ID": rid}
            if n_gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
                env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)  # spread over the node's GPUs
            jobs.append(packing.Job(cell.name, train_command(cell), env, logs / f"{cell.name}.log", ROOT))
        packing.run_jobs(jobs, parallel, on_done, on_interrupt)
    return result


def run_pack(grid_file: str, scale: str, runs: str, echo: Echo = _log_echo, mps: str = "auto") -> dict[str, str]:
    """A Condor pack node: train its cells (``name=run_id,...``) at once; the finished ones are
    skipped, so a retried node trains only what is left, each cell resuming from its checkpoint.
    Raises when a cell failed (DAGMan then retries the node)."""
    g = load_grid(resolve(grid_file), scale, base_dir=ROOT)
    by_name = {c.name: c for c in g.cells()}
    pairs = [p.split("=", 1) for p in runs.split(",") if p]
    bad = [p[0] for p in pairs if len(p) != 2 or p[0] not in by_name]
    if bad or not pairs:
        raise ValueError(f"--runs must be cell=run_id pairs of cells of {g.run_name}; unknown or malformed: {bad or [runs]}")
    c = tracking.client()
    exp_id = tracking.current_experiment_id()
    todo = [(by_name[name], rid) for name, rid in pairs if not is_done(tracking.require_run(rid, "train"))]
    if packing.gpu_count() > 0:  # a pack on a GPU node trains on the GPU or fails loudly, never on the CPU by default
        todo = [(replace(cell, device="cuda") if cell.device == "auto" else cell, rid) for cell, rid in todo]
    echo(f"pack of {len(pairs)} cells: {len(pairs) - len(todo)} finished, {len(todo)} to train")
    status = run_cells(g, todo, len(todo), exp_id, echo, mps) if todo else {}
    failed = [name for name, rid in pairs if not is_done(c.get_run(rid))]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(pairs)} cells not finished: {', '.join(failed)} (a retry resumes them)")
    return status


# --------------------------------------------------------------------------- condor backend


def schedd_available() -> bool:
    try:
        import htcondor2

        htcondor2.Schedd()
        return True
    except Exception:  # no pool here, or no daemon answering
        return False


def run_condor(g: Grid, runs: dict[CellSpec, str], exp_id: str, grid_file: Path, dry_run: bool, echo: Echo = _log_echo) -> Path:
    dag_file = write_dag(g, runs, tracking.tracking_uri(), exp_id, ROOT, grid_file)
    echo(f"DAG written: {dag_file}")
    for f in sorted(dag_file.parent.iterdir()):
        echo(f"  {f}")
    if dry_run:
        echo(dag_file.read_text())
        for f in sorted(dag_file.parent.glob("*.sub")):
            echo(f"--- {f.name}\n{f.read_text()}")
        return dag_file
    if tracking.tracking_uri().startswith("sqlite"):
        echo("warning: jobs would log to a SQLite file: start `thesis-mlflow serve` and export MLFLOW_TRACKING_URI=http://HOST:PORT")
    cmd = f"condor_submit_dag -batch-name {g.run_name} {dag_file.name}"
    howto = f"cd {shlex.quote(str(dag_file.parent))} && {cmd}"
    if not schedd_available():
        echo(f"no schedd answered here; submit on the cluster with:\n  {howto}")
        return dag_file
    import htcondor2

    cwd = os.getcwd()
    try:
        os.chdir(dag_file.parent)  # DAGMan resolves the node submit files against its own directory
        sub = htcondor2.Submit.from_dag(dag_file.name, {"batch-name": g.run_name})
        cluster = htcondor2.Schedd().submit(sub)
        echo(f"submitted DAG {dag_file.name} as cluster {cluster.cluster()}; follow it with condor_q -dag -nobatch")
    except Exception as e:  # e.g. condor_dagman not on PATH on this host
        echo(f"submitting through the bindings failed ({e}); submit with:\n  {howto}")
    finally:
        os.chdir(cwd)
    return dag_file


# --------------------------------------------------------------------------- the grid


def run_grid(grid_file: str, backend: str, scale: str, jobs: int, dry_run: bool, echo: Echo = _log_echo, mps: str = "auto") -> dict:
    path = resolve(grid_file)
    g = load_grid(path, scale, base_dir=ROOT)
    cells = g.cells()
    t0 = time.perf_counter()
    exp_id = tracking.current_experiment_id()  # created once, before any parallel job touches the store
    echo(f"grid {g.run_name}: {len(cells)} cells ({', '.join(g.tokenizers)}; seeds {g.seeds}), backend {backend}")
    if dry_run and backend == "condor":
        parent = find_parent(g, exp_id)
        existing = find_children(parent.info.run_id, exp_id) if parent else {}
        runs = {c: (existing[c.tag].info.run_id if c.tag in existing else "RUN_ID_CREATED_AT_SUBMIT") for c in cells}
        run_condor(g, runs, exp_id, path, True, echo)
        return {"launched": [], "dag": True}
    if dry_run:
        for c in cells:
            echo(shlex.join(train_command(c)))
        return {"launched": []}
    parent = find_or_create_parent(g, exp_id)
    pid = parent.info.run_id
    # one driver per grid at a time (a second `grid run` refuses at once, naming the first)
    with leases.acquire_run(pid, f"grid {g.run_name} (parent run {pid})").kept():
        return _drive(g, cells, parent, exp_id, backend, path, jobs, echo, mps, t0)


def _publish(g: Grid, step: int) -> None:
    """The grid's progress on its parent run (metrics and description), for the runs table."""
    from . import status

    try:
        status.publish(status.grid_status(str(g.source) if g.source else g.run_name, g.scale), step)
    except Exception as e:  # noqa: BLE001 - progress display must not stop the grid
        log.warning("could not update the parent's progress: %s", e)


def _drive(g: Grid, cells: list[CellSpec], parent, exp_id: str, backend: str, path: Path, jobs: int, echo: Echo, mps: str, t0: float) -> dict:
    pid = parent.info.run_id
    c = tracking.client()
    if parent.info.status != "RUNNING":
        c.update_run(pid, status="RUNNING")
    children = ensure_children(g, parent, exp_id)
    todo = [(cell, r.info.run_id) for cell, r in children.items() if not is_done(r)]
    echo(f"parent run {pid}: {len(cells) - len(todo)} cells finished, {len(todo)} to run")
    views.echo_views(g.run_name, exp_id, echo)
    summary = {"parent": pid, "launched": [cell.name for cell, _ in todo]}
    if backend == "condor":
        summary["dag"] = str(run_condor(g, {cell: rid for cell, rid in todo}, exp_id, path, False, echo))
        return summary
    if todo:
        echo("preparing upstream runs (binning, VQ-VAE) ...")
        for k, v in prepare(g).items():
            echo(f"  {k}: run {v}")
        summary["status"] = run_cells(g, todo, jobs, exp_id, echo, mps, on_progress=lambda n: _publish(g, n))
    final = ensure_children(g, c.get_run(pid), exp_id)
    n_done = sum(is_done(r) for r in final.values())
    elsewhere = [k for k, v in summary.get("status", {}).items() if v == "ELSEWHERE"]
    c.log_metric(pid, "n_finished", n_done)
    if not elsewhere:  # cells still trained by other processes: the parent stays RUNNING for them
        c.set_terminated(pid, "FINISHED" if n_done == len(cells) else "FAILED")
    echo(f"grid {g.run_name}: {n_done}/{len(cells)} cells finished in {time.perf_counter() - t0:.0f} s"
         + (f"; {len(elsewhere)} being trained by other processes" if elsewhere else ""))
    echo(tracking.ui_hint(exp_id))
    views.echo_views(g.run_name, exp_id, echo)
    summary["n_finished"] = n_done
    summary["n_cells"] = len(cells)
    return summary
