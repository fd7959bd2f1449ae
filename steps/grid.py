"""``grid``: launch the whole study as one parent run with one child run per cell.

    thesis-mlflow grid run configs/grids/binning_vs_direct.yaml --backend local --scale demo --jobs 2
    thesis-mlflow grid run configs/grids/binning_vs_direct.yaml --backend condor [--dry-run]
    thesis-mlflow grid status configs/grids/binning_vs_direct.yaml --scale demo

Re-running the same grid resumes it: FINISHED cells are skipped; FAILED, KILLED and
never-started cells run again on their own child run id (so training resumes from its
checkpoint); no cell is ever created twice.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from steps._common import ROOT, choice, resolve, user_errors
from thesis_mlflow import tracking
from thesis_mlflow.grid import Cell, Grid, load_grid, write_dag

log = logging.getLogger("steps.grid")


# --------------------------------------------------------------------------- runs


def find_parent(g: Grid, exp_id: str):
    runs = tracking.client().search_runs([exp_id], f"tags.step = 'grid' and tags.`grid.name` = '{tracking.quote(g.run_name)}'",
                                         order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def find_or_create_parent(g: Grid, exp_id: str):
    """The grid's parent run: found by its ``grid.name`` tag, else created once.

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
        rid = c.create_run(exp_id, run_name=f"grid-{g.run_name}", tags=tags).info.run_id
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


def ensure_children(g: Grid, parent, exp_id: str) -> dict[Cell, object]:
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
            for k, v in cell.params().items():
                c.log_param(run.info.run_id, k, str(v).lower() if isinstance(v, bool) else str(v))
            c.update_run(run.info.run_id, status="SCHEDULED")  # waiting, not running
            run = c.get_run(run.info.run_id)
        out[cell] = run
    return out


def is_done(run) -> bool:
    return run.info.status == "FINISHED" and "test_auc" in run.data.metrics


def prepare(g: Grid) -> dict[str, str]:
    """The upstream runs, once: binning per vect and VQ-VAE per vect where included."""
    from steps.binning import find_or_run_binning
    from steps.train import ensure_raw
    from steps.vqvae import defaults, find_or_run_vqvae

    raw = ensure_raw(g.data)
    done = {}
    for vect in g.factors["vect"]:
        if "binned" in g.tokenizers:
            done[f"binning_v{vect}"] = find_or_run_binning(str(raw), vect=vect, **{k: g.binning[k] for k in g.binning})[0]
        if "vqvae" in g.tokenizers:
            done[f"vqvae_v{vect}"] = find_or_run_vqvae(defaults(input=str(raw), vect=vect, **g.vqvae))[0]
    return done


# --------------------------------------------------------------------------- local backend


def train_command(g: Grid, cell: Cell) -> list[str]:
    """The command one cell runs: identical for the local backend and a Condor job."""
    return [sys.executable, "-m", "steps.train", *g.train_args(cell)]


def run_local(g: Grid, todo: list[tuple[Cell, str]], jobs: int, exp_id: str, echo=click.echo) -> dict[str, str]:
    """Run cells with at most ``jobs`` at once; returns {cell name: final status}."""
    logs = ROOT / "outputs" / "grids" / g.run_name / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    base_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MLFLOW_EXPERIMENT_ID": exp_id,
                "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    c = tracking.client()
    pending = list(todo)
    running: dict[subprocess.Popen, tuple[Cell, str, float, object]] = {}
    result: dict[str, str] = {}
    n_total, n_done = len(todo), 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell, rid = pending.pop(0)
                fh = open(logs / f"{cell.name}.log", "ab")
                p = subprocess.Popen(train_command(g, cell), cwd=ROOT, env={**base_env, "MLFLOW_RUN_ID": rid}, stdout=fh, stderr=subprocess.STDOUT)
                running[p] = (cell, rid, time.perf_counter(), fh)
            time.sleep(0.2)
            for p in [p for p in running if p.poll() is not None]:
                cell, rid, t0, fh = running.pop(p)
                fh.close()
                run = c.get_run(rid)
                if p.returncode != 0 and run.info.status in ("RUNNING", "SCHEDULED"):
                    c.set_terminated(rid, "FAILED")  # killed before it could say so itself
                    run = c.get_run(rid)
                n_done += 1
                status = run.info.status if p.returncode == 0 else "FAILED"
                result[cell.name] = status
                auc = run.data.metrics.get("test_auc")
                what = f"AUC {auc:.4f}" if auc is not None else f"see {logs / (cell.name + '.log')}"
                echo(f"[{n_done}/{n_total}] {cell.name:<28} {status:<8} {what}  ({time.perf_counter() - t0:.0f} s)")
    except KeyboardInterrupt:
        for p, (_cell, rid, _, fh) in running.items():
            p.terminate()
            p.wait(timeout=30)
            fh.close()
            c.set_terminated(rid, "KILLED")
        raise
    return result


# --------------------------------------------------------------------------- condor backend


def schedd_available() -> bool:
    try:
        import htcondor2

        htcondor2.Schedd()
        return True
    except Exception:  # no pool here, or no daemon answering
        return False


def run_condor(g: Grid, runs: dict[Cell, str], exp_id: str, grid_file: Path, dry_run: bool, echo=click.echo) -> Path:
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


# --------------------------------------------------------------------------- commands


def run_grid(grid_file: str, backend: str, scale: str, jobs: int, dry_run: bool, echo=click.echo) -> dict:
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
            echo(shlex.join(train_command(g, c)))
        return {"launched": []}
    parent = find_or_create_parent(g, exp_id)
    pid = parent.info.run_id
    c = tracking.client()
    if parent.info.status != "RUNNING":
        c.update_run(pid, status="RUNNING")
    children = ensure_children(g, parent, exp_id)
    todo = [(cell, r.info.run_id) for cell, r in children.items() if not is_done(r)]
    echo(f"parent run {pid}: {len(cells) - len(todo)} cells finished, {len(todo)} to run")
    summary = {"parent": pid, "launched": [cell.name for cell, _ in todo]}
    if backend == "condor":
        summary["dag"] = str(run_condor(g, {cell: rid for cell, rid in todo}, exp_id, path, False, echo))
        return summary
    if todo:
        echo("preparing upstream runs (binning, VQ-VAE) ...")
        for k, v in prepare(g).items():
            echo(f"  {k}: run {v}")
        summary["status"] = run_local(g, todo, jobs, exp_id, echo)
    final = ensure_children(g, c.get_run(pid), exp_id)
    n_done = sum(is_done(r) for r in final.values())
    c.log_metric(pid, "n_finished", n_done)
    c.set_terminated(pid, "FINISHED" if n_done == len(cells) else "FAILED")
    echo(f"grid {g.run_name}: {n_done}/{len(cells)} cells finished in {time.perf_counter() - t0:.0f} s")
    echo(tracking.ui_hint(exp_id))
    summary["n_finished"] = n_done
    return summary


def status_rows(grid_file: str, scale: str) -> list[dict]:
    g = load_grid(resolve(grid_file), scale, base_dir=ROOT)
    exp_id = tracking.ensure_experiment()
    parent = find_parent(g, exp_id)
    existing = find_children(parent.info.run_id, exp_id) if parent else {}
    c = tracking.client()
    rows = []
    for cell in g.cells():
        r = existing.get(cell.tag)
        if r is None:
            rows.append({"cell": cell.name, "state": "NOT CREATED", "epoch": "-", "test_auc": "-"})
            continue
        hist = c.get_metric_history(r.info.run_id, "val_auc")
        auc = r.data.metrics.get("test_auc")
        rows.append({"cell": cell.name, "state": r.info.status, "epoch": max((m.step for m in hist), default=0),
                     "test_auc": f"{auc:.4f}" if auc is not None else "-", "run_id": r.info.run_id})
    return rows


@click.group("grid", help="Run the grid of cells as parent/child MLflow runs (local or HTCondor).")
def main() -> None:
    pass


@main.command("run")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--backend", type=choice("local", "condor"), default="local", show_default=True)
@click.option("--scale", default="full", show_default=True, help="A scale defined in the grid file (demo, full).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="local: cells at once.")
@click.option("--dry-run", is_flag=True, help="condor: write and print the DAG and submit files; local: print the commands.")
@user_errors
def run_cmd(grid_file, backend, scale, jobs, dry_run) -> None:
    s = run_grid(grid_file, backend.lower(), scale, jobs, dry_run)
    if backend == "local" and not dry_run and s.get("n_finished", 0) < len(load_grid(resolve(grid_file), scale, base_dir=ROOT).cells()):
        sys.exit(1)


@main.command("status")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True)
@user_errors
def status_cmd(grid_file, scale) -> None:
    rows = status_rows(grid_file, scale)
    click.echo(f"{'cell':<28} {'state':<12} {'epoch':>5} {'test_auc':>8}")
    for r in rows:
        click.echo(f"{r['cell']:<28} {r['state']:<12} {r['epoch']!s:>5} {r['test_auc']:>8}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    click.echo("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


@main.command("prepare", help="Run the upstream steps (binning, VQ-VAE) of a grid once; the DAG's first node.")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--scale", default="full", show_default=True)
@user_errors
def prepare_cmd(grid_file, scale) -> None:
    g = load_grid(resolve(grid_file), scale, base_dir=ROOT)
    tracking.ensure_experiment()
    for k, v in prepare(g).items():
        click.echo(f"{k}: run {v}")


if __name__ == "__main__":
    main()
