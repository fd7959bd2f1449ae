"""HTCondor's submission of a grid: the DAG and submit files (``write_dag``, through the
``htcondor2`` bindings; a job's environment an allow-list, never a secret) and their submission
(``run_condor``). What DAGMan knows of the cells afterwards: ``state``; the settings: ``settings``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from thesis_mlflow.grid.condor.settings import CondorSpec, memory_mb
from thesis_mlflow.grid.condor.state import CELLS_FILE, SETTINGS_FILE, STATUS_FILE
from thesis_mlflow.grid.gridfile import Grid
from thesis_mlflow.grid.jobenv import base_env, check_no_credentials, getenv_value
from thesis_mlflow.grid.packing import compile_cache_env
from thesis_mlflow.grid.quoting import check_path, condor_arguments, condor_environment, condor_words
from thesis_mlflow.paths import ROOT, outputs
from thesis_mlflow.permissions import private_dir, private_files
from thesis_mlflow.spec import CellSpec

log = logging.getLogger(__name__)

# HTCondor's hold for exceeding the job's memory (code 34; 3/34 on newer pools), now and at the last hold
MEMORY_HOLD = "(HoldReasonCode =?= 34 && HoldReasonSubCode =?= 0) || (HoldReasonCode =?= 3 && HoldReasonSubCode =?= 34)"
LAST_MEMORY_HOLD = MEMORY_HOLD.replace("HoldReason", "LastHoldReason")
UPDATE_S = 60  # how often DAGMan rewrites the status file: fresh enough for a grid of hours, no load on the submit node


def write_cells_by_node(dag_dir: Path, cells_by_node: dict[str, list[str]]) -> None:
    """Which cells each DAG node trains (``state.CELLS_FILE``), read back by ``grid status``."""
    (Path(dag_dir) / CELLS_FILE).write_text(json.dumps(cells_by_node, indent=1))


def memory_settings(c: CondorSpec) -> dict:
    """``request_memory`` and ``periodic_release`` for a job held for exceeding its memory: with
    ``condor.memory_max`` set, each start asks for ``request_memory x memory_multiplier^starts``
    after such a hold (never more than the cap) and the hold is released while the next request
    stays within the cap (as LSST's batch layer does); at the cap the job stays held, and
    ``grid status`` says so. Without ``memory_max``: the fixed request, no release."""
    base = memory_mb(c.request_memory)
    if not c.memory_max:
        return {"request_memory": str(c.request_memory)}
    cap, mult = memory_mb(c.memory_max), float(c.memory_multiplier)
    grown = f"min({{int({base} * pow({mult:g}, NumJobStarts)), {cap}}})"
    return {"request_memory": f"ifThenElse({LAST_MEMORY_HOLD}, {grown}, {base})",
            "periodic_release": f"(JobStatus == 5) && ({MEMORY_HOLD}) && ({base} * pow({mult:g}, NumJobStarts - 1) < {cap})"}


# --------------------------------------------------------------------------- DAG and submit files


def _under_outputs(path: str) -> Path:
    """``dag_dir`` / ``log_dir`` as given, relative ones under the project (``paths.outputs``)."""
    p = Path(path)
    return p if p.is_absolute() else outputs() / p


def submit_description(grid: Grid, args: str, env: str, log_name: str, project_dir: Path, python: str):
    """One submit description (``htcondor2.Submit``) with the grid's condor settings. ``args`` and
    ``env`` are in HTCondor's new syntax (``quoting.condor_arguments``, ``condor_environment``)."""
    import htcondor2

    c = grid.condor
    log_dir = _under_outputs(c.log_dir)
    initialdir = Path(c.initialdir)
    if not initialdir.is_absolute():
        initialdir = (project_dir / initialdir).resolve()
    sub = {
        "universe": "vanilla",
        "executable": python,
        "arguments": args,
        "initialdir": str(initialdir),
        "environment": env,
        "getenv": getenv_value(c.getenv),
        "output": str(log_dir / f"{log_name}.out"),
        "error": str(log_dir / f"{log_name}.err"),
        "log": str(log_dir / f"{grid.run_name}.log"),
        "request_cpus": str(c.request_cpus),
        **memory_settings(c),
        "request_disk": str(c.request_disk),
        "+JobCategory": f'"{c.job_category}"',
        "+UseOS": f'"{c.use_os}"',
        "should_transfer_files": "NO",  # shared filesystem, as on Stoomboot
        "stream_output": "True",
        "stream_error": "True",
    }
    if c.request_gpus:
        sub["request_gpus"] = str(c.request_gpus)
    return htcondor2.Submit(sub)


def write_dag(grid: Grid, run_ids: dict[CellSpec, str], tracking_uri: str, experiment_id: str, project_dir: Path, grid_file: Path,
              out_dir: Path | None = None, stack_seeds: str = "auto") -> Path:
    """Write the DAGMan workflow: prepare -> train nodes (with retries) -> report.

    A train node is one cell (``python -m steps.train``, the local backend's command) or, with
    ``condor.cells_per_job`` K > 1, a pack of whole configurations (at most K cells) trained on
    the job's GPU, each configuration's seeds stacked (``python -m steps.grid pack``, with
    ``--stack-seeds``): a retried pack runs only its cells not yet finished, each
    resuming from its own checkpoint. The report is DAGMan's FINAL node: it runs even when some
    cells failed for good, and the report shows them as missing.
    """

    check_no_credentials(tracking_uri)
    getenv_value(grid.condor.getenv)  # refused before anything is written
    python = check_path(grid.condor.python or sys.executable, "the jobs' Python")

    # DAGMan re-reads the submit files at every retry: a groupmate able to edit one would run code
    # as us, with our login. The folders are ours alone (0700; one open to others, or below a folder
    # another user could swap, is refused, naming it) and every file is written 0600.
    out_dir = private_dir(Path(out_dir or (_under_outputs(grid.condor.dag_dir) / grid.run_name)), "DAG folder")
    private_dir(_under_outputs(grid.condor.log_dir), "Condor log folder")
    with private_files():
        return _write_dag(grid, run_ids, tracking_uri, experiment_id, project_dir, grid_file, out_dir, python, stack_seeds)


def _write_dag(grid: Grid, run_ids: dict, tracking_uri: str, experiment_id: str, project_dir: Path, grid_file: Path, out_dir: Path,
               python: str, stack_seeds: str = "auto") -> Path:
    from htcondor2 import dags


    base = base_env(tracking_uri, experiment_id, compile_cache_env())  # every job reads and fills one compile cache
    env = condor_environment(base)  # prepare, packs and report alike (one cell's node adds its run id)

    # DAGMan's own view of each node (queued, held, retried), read back by `grid status`
    dag = dags.DAG(node_status_file=dags.NodeStatusFile(out_dir / STATUS_FILE, update_time=UPDATE_S))
    check_path(str(project_dir), "the project's folder")
    prep_args = condor_arguments(["-m", "steps.grid", "prepare", str(grid_file), *grid.load_args()])
    prepare = dag.layer(name="prepare", submit_description=submit_description(grid, prep_args, env, "prepare", project_dir, python),
                        retries=int(grid.condor.retries))
    cells = list(run_ids)
    k = int(grid.condor.cells_per_job)
    gpu = bool(grid.condor.request_gpus)  # a job that asked for a GPU trains on it or fails at once, never on the CPU
    if k == 1:
        write_cells_by_node(out_dir, {f"train:{i}": [c.name] for i, c in enumerate(cells)})
        prepare.child_layer(
            name="train",
            submit_description=submit_description(grid, condor_arguments(["-m", "steps.train"], raw_tail="$(args)"),
                                                  condor_environment({**base, "MLFLOW_RUN_ID": "$(run_id)"}), "$(cell)",
                                                  project_dir, python),
            vars=[{"cell": c.name, "run_id": run_ids[c],
                   "args": condor_words(grid.train_args(replace(c, device="cuda") if gpu and c.device == "auto" else c)),
                   **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in c.factors().items()}} for c in cells],
            retries=int(grid.condor.retries),
        )
    else:
        args = condor_arguments(["-m", "steps.grid", "pack", str(grid_file), *grid.load_args(), "--runs", "RUNS", "--stack-seeds",
                                 stack_seeds, *(["--device", "cuda"] if gpu else [])]).replace(" RUNS ", " $(runs) ")
        packs = grid.packs(cells)
        write_cells_by_node(out_dir, {f"pack:{i}": [c.name for c in p] for i, p in enumerate(packs)})
        prepare.child_layer(
            name="pack",
            submit_description=submit_description(grid, args, env, "pack-$(pack)", project_dir, python),
            vars=[{"pack": f"{i:03d}", "cells": " ".join(c.name for c in p), "runs": ",".join(f"{c.name}={run_ids[c]}" for c in p)}
                  for i, p in enumerate(packs)],
            retries=int(grid.condor.retries),
        )
    rep_args = condor_arguments(grid.closing_argv(grid_file, "condor"))
    report_sub = submit_description(grid, rep_args, env, "report", project_dir, python)
    dag.final(name="report", submit_description=report_sub)
    log_dir = _under_outputs(grid.condor.log_dir)
    (out_dir / SETTINGS_FILE).write_text(json.dumps({"event_log": str(log_dir / f"{grid.run_name}.log"),
                                                     "held_limit_h": grid.condor.held_limit_h}))
    dag_file = dags.write_dag(dag, out_dir, dag_file_name=f"{grid.run_name}.dag")
    # htcondor2.dags writes submit files for layers only; the FINAL node's is written here.
    (out_dir / "report.sub").write_text(str(report_sub))
    return dag_file


# --------------------------------------------------------------------------- submission


def schedd_available() -> bool:
    try:
        import htcondor2

        htcondor2.Schedd()
        return True
    except Exception:  # no pool here, or no daemon answering
        return False


def run_condor(g: Grid, runs: dict[CellSpec, str], exp_id: str, grid_file: Path, dry_run: bool, echo: Callable[[str], None] = log.info,
               stack_seeds: str = "auto") -> Path:
    """Write the grid's DAG and submit it (through the bindings, or print how where no schedd answers)."""
    from thesis_mlflow.tracking import runs as tracking  # lazy: MLflow, only to submit (writing the DAG needs none)

    dag_file = write_dag(g, runs, tracking.tracking_uri(), exp_id, ROOT, grid_file, stack_seeds=stack_seeds)
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
