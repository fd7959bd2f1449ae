"""SLURM's submission of a grid: the job scripts, their submission as a chain of jobs
(``sbatch``), and the jobs record ``grid status`` reads back. What SLURM knows of the jobs
afterwards: ``state``; the pack's side inside its job (time-limit warning, requeue): ``injob``.

A grid is three kinds of job, as on HTCondor: ``prepare`` (the upstream runs) -> one job per
pack of cells (``afterok``: a pack never trains on a failed or cancelled prepare; it is then
ended by SLURM, ``--kill-on-invalid-dep``) -> ``report`` (``afterany``: it runs whether or not
cells failed, like DAGMan's FINAL node). Every job is requeueable (a node failure or preemption
puts it back in the queue). A pack is warned ``signal_before_end_s`` before its time limit
(``USR1``, to the job's own process: the script ``exec``s Python): every cell stops at its next
step and ends KILLED with its checkpoint, and the pack asks SLURM to requeue it; the next start
resumes each cell from its checkpoint, so every epoch is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from thesis_mlflow.errors import BadSetting, Unavailable
from thesis_mlflow.grid.gridfile import Grid
from thesis_mlflow.grid.jobenv import allowed_names, base_env
from thesis_mlflow.grid.packing import compile_cache_env, thread_limits
from thesis_mlflow.grid.quoting import check_directive, check_path, check_slurm_word
from thesis_mlflow.grid.slurm import commands
from thesis_mlflow.grid.slurm.injob import MARK, TIME_LIMIT_SIGNAL
from thesis_mlflow.paths import ROOT, outputs
from thesis_mlflow.permissions import opened_dir, private_dir, private_files, read_in, write_in
from thesis_mlflow.spec import CellSpec

log = logging.getLogger(__name__)

JOBS_FILE = "jobs.json"  # what was submitted: read back by ``grid status`` and by the next ``grid run``


def job_dir(g: Grid) -> Path:
    """The grid's private folder of job scripts, the jobs record and logs (``slurm.job_dir``/<grid>)."""
    p = Path(g.slurm.job_dir).expanduser()
    return (p if p.is_absolute() else outputs() / p) / g.run_name


def log_path(folder: Path, job_name: str, job_id: str) -> Path:
    """Where SLURM writes a job's output and errors (``--output=%x-%j.out``; requeued attempts append)."""
    return Path(folder) / "logs" / f"{job_name}-{job_id}.out"


@dataclass
class Script:
    kind: str  # prepare, pack, report
    name: str  # the job's name: the grid's run name, then the kind (and the pack's number)
    path: Path
    text: str
    cells: dict[str, str] = field(default_factory=dict)  # a pack's cells: name -> run id


# The submitting shell's own defaults that may fill a key the grid file leaves null (and only
# then): written into the script, so the script alone says what the job asks for. Every other
# SBATCH_* variable is removed from sbatch's environment (``sbatch_environment``).
SHELL_DEFAULTS = {"partition": "SBATCH_PARTITION", "account": "SBATCH_ACCOUNT", "qos": "SBATCH_QOS"}


def shell_defaults(g: Grid, environ: dict | None = None) -> dict[str, tuple[str, str]]:
    """{key: (value, variable)} for each of ``SHELL_DEFAULTS`` the grid file leaves null and the
    environment sets, each value checked as the grid file's would be."""
    env = os.environ if environ is None else environ
    out = {}
    for key, var in SHELL_DEFAULTS.items():
        if getattr(g.slurm, key) is None and env.get(var):
            out[key] = (check_slurm_word(env[var], f"{var} (your shell's default for slurm.{key})"), var)
    return out


def sbatch_environment(environ: dict | None = None) -> dict[str, str]:
    """sbatch's environment: the caller's, less every ``SBATCH_*`` and ``SLURM_*`` input variable
    (``SBATCH_EXPORT=ALL`` or ``SBATCH_OUTPUT`` in a shell's start-up file would override the
    script's own ``#SBATCH`` lines) except ``SLURM_CONF``, which says which cluster to talk to."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not k.startswith(("SBATCH_", "SLURM_")) or k == "SLURM_CONF"}


def _sbatch_lines(g: Grid, name: str, folder: Path, gpus: int, signal: bool, export: list[str],
                  defaults: dict[str, tuple[str, str]]) -> list[str]:
    s = g.slurm
    lines = [f"--job-name={name}", f"--output={folder / 'logs' / '%x-%j.out'}", "--open-mode=append", "--requeue",
             f"--time={s.time}", f"--cpus-per-task={s.cpus_per_job}", f"--mem={s.mem}"]
    if signal:
        lines.append(f"--signal=B:{TIME_LIMIT_SIGNAL}@{s.signal_before_end_s}")
    if gpus:
        lines.append(f"--gres=gpu:{s.gpu_type}:{gpus}" if s.gpu_type else f"--gres=gpu:{gpus}")
    for k in ("partition", "account", "qos"):
        v = getattr(s, k) or defaults.get(k, (None, None))[0]
        if v:
            lines.append(f"--{k}={v}")
    # only these variables from the submitting shell (and SLURM's own); never the whole environment
    lines.append(f"--export={','.join(export)}" if export else "--export=NONE")
    lines += list(s.extra)
    return [f"#SBATCH {x}" for x in lines]


def _script(g: Grid, kind: str, name: str, folder: Path, argv: list[str], env: dict, export: list[str], gpus: int, signal: bool,
            about: str, defaults: dict[str, tuple[str, str]]) -> str:
    python = g.slurm.python or sys.executable
    # every value below is a checked name, or quoted for the shell (shlex); the #SBATCH values
    # hold no blank or quote (quoting.check_directive), and nothing here holds a newline
    body = ["#!/bin/bash", f"# {about} (written by thesis-mlflow grid run; {shlex.quote(str(g.source))})",
            *_sbatch_lines(g, name, folder, gpus, signal, export, defaults),
            "set -u", f"cd {shlex.quote(str(ROOT))}", *(f"export {k}={shlex.quote(str(v))}" for k, v in env.items()),
            f'echo "{MARK} job $SLURM_JOB_ID ({kind}) attempt $((${{SLURM_RESTART_COUNT:-0}} + 1)) started on $(hostname) at $(date -Is)"',
            # exec: the job's own process is Python, which SLURM's warning before the time limit (B:USR1)
            # reaches; until Python notes it (its first lines) the warning must not end the job
            *(["trap '' USR1"] if signal else []),
            f"exec {shlex.quote(python)} {shlex.join(argv)}", ""]
    return "\n".join(body)


def write_scripts(g: Grid, runs: dict[CellSpec, str], tracking_uri: str, experiment_id: str, grid_file: Path, stack_seeds: str = "auto",
                  environ: dict | None = None) -> list[Script]:
    """The grid's job scripts, in its private folder (0700, each file 0600, written through the
    folder's descriptor, never through a link): prepare, one per pack of ``runs`` (cell -> child
    run id), report. Nothing secret is in them: the tracking URI is refused when it holds a login,
    and the environment is an allow-list (``slurm.export``)."""
    s = g.slurm
    export = allowed_names(s.export, "slurm.export", environ)
    defaults = shell_defaults(g, environ)
    # the job's threads held to its cores: where SLURM does not bind a job to them (task/none, no
    # cgroup), torch would start one thread per core of the node in every job (two 1-core packs on
    # a 2-core node each ran 3-4x slower in the thesis grid's rehearsal)
    env = {**base_env(tracking_uri, experiment_id, compile_cache_env() if s.gpus_per_job else None), **thread_limits(s.cpus_per_job)}
    for k, v in env.items():
        check_path(v, f"the jobs' {k}")
    check_path(str(ROOT), "the project's folder")
    check_path(str(grid_file), "the grid file's path")
    folder = check_directive(str(job_dir(g)), "slurm.job_dir (as a full path)")
    folder = private_dir(folder, "SLURM job folder")
    private_dir(folder / "logs", "SLURM log folder")
    scale = g.load_args()
    out = []
    packs = g.packs(list(runs), per_job=s.cells_per_job)
    specs = [("prepare", f"{g.run_name}-prepare", ["-m", "steps.grid", "prepare", str(grid_file), *scale], {}, s.gpus_per_job, False,
              f"{g.run_name}: the upstream runs (binning, VQ-VAE)")]
    for i, p in enumerate(packs):
        cells = {c.name: runs[c] for c in p}
        argv = ["-m", "steps.grid", "pack", str(grid_file), *scale, "--runs", ",".join(f"{k}={v}" for k, v in cells.items()),
                "--stack-seeds", stack_seeds, "--slurm-requeues", str(s.max_requeues)] + (["--device", "cuda"] if s.gpus_per_job else [])
        specs.append(("pack", f"{g.run_name}-pack-{i:03d}", argv, cells, s.gpus_per_job, True,
                      f"{g.run_name}: pack {i + 1} of {len(packs)}: {', '.join(cells)}"))
    specs.append(("report", f"{g.run_name}-report", g.closing_argv(grid_file, "slurm"), {}, 0, False,
                  f"{g.run_name}: the {'forecast' if g.rehearsal else 'report'}, whether or not cells failed"))
    with opened_dir(folder, "SLURM job folder") as fd:
        for kind, name, argv, cells, gpus, signal, about in specs:
            text = _script(g, kind, name, folder, argv, env, export, gpus, signal, about, defaults)
            write_in(fd, f"{name}.sh", text)  # a job script is code SLURM runs as us: never half written, never through a link
            out.append(Script(kind, name, folder / f"{name}.sh", text, cells))
    return out


# --------------------------------------------------------------------------- the jobs record


def read_jobs(folder: Path) -> list[dict]:
    """The submissions recorded in a grid's job folder (oldest first); [] when none. Only a
    private folder is read: a jobs record others could write would point status at their jobs."""
    path = Path(folder) / JOBS_FILE
    if not os.path.lexists(path):
        return []
    try:
        with opened_dir(folder, "SLURM job folder") as fd:
            text = read_in(fd, JOBS_FILE)
        return list(json.loads(text or "{}").get("submissions", []))
    except (OSError, ValueError, AttributeError) as e:
        raise BadSetting(f"{path} is not a jobs record written by thesis-mlflow ({e}); move it away to start the grid's SLURM record anew") from e


def _record(folder: Path, submission: dict) -> None:
    subs = read_jobs(folder) + [submission]
    with opened_dir(folder, "SLURM job folder") as fd:
        write_in(fd, JOBS_FILE, json.dumps({"submissions": subs}, indent=1))


# --------------------------------------------------------------------------- submission


def require_slurm() -> None:
    """``sbatch`` must be here and the controller must answer, or nothing is submitted."""
    if not shutil.which("sbatch") or not shutil.which("squeue"):
        raise Unavailable("SLURM's sbatch/squeue are not on the PATH here: submit from a login node of the SLURM cluster "
                          "(or print the job scripts with --dry-run)")
    out = commands.run(["squeue", "-h", "-u", commands.user(), "-o", "%i"], check=False)
    if out.returncode != 0:
        raise Unavailable(f"SLURM's controller did not answer squeue: {commands.last_line(out)}")


def sbatch(script: Script, dependency: str | None = None, kill_on_invalid_dep: bool = False) -> str:
    """Submit one script; returns its job id. The script's text goes to sbatch on its standard
    input (the text written and checked here, not whatever the path holds by then), with an
    environment without the caller's ``SBATCH_*`` overrides (``sbatch_environment``). The umask
    is the job's (SLURM hands it on): its log is 0600."""
    cmd = ["sbatch", "--parsable"]
    if dependency:
        cmd.append(f"--dependency={dependency}")
    if kill_on_invalid_dep:
        cmd.append("--kill-on-invalid-dep=yes")
    with private_files():
        out = commands.run(cmd, stdin=script.text, env=sbatch_environment())
    return out.stdout.strip().split(";")[0]


def submit(g: Grid, scripts: list[Script], echo: Callable[[str], None] = log.info) -> dict:
    """Submit the chain: prepare, the packs after it (``afterok``), the report after them all
    (``afterany``). All or nothing: when one ``sbatch`` fails, the jobs of this submission are
    cancelled before the error is raised. Returns the submission as recorded in ``jobs.json``."""
    folder = job_dir(g)
    submitted: list[str] = []
    sub = {"at": time.time(), "user": commands.user(), "packs": []}
    try:
        by_kind = {s.kind: s for s in scripts if s.kind != "pack"}
        prep = sbatch(by_kind["prepare"])
        submitted.append(prep)
        sub["prepare"], sub["prepare_name"] = prep, by_kind["prepare"].name
        for s in (s for s in scripts if s.kind == "pack"):
            jid = sbatch(s, f"afterok:{prep}", kill_on_invalid_dep=True)
            submitted.append(jid)
            sub["packs"].append({"job": jid, "name": s.name, "cells": s.cells})
        after = ":".join([p["job"] for p in sub["packs"]] or [prep])
        rep = sbatch(by_kind["report"], f"afterany:{after}")
        submitted.append(rep)
        sub["report"], sub["report_name"] = rep, by_kind["report"].name
    except Exception:
        if submitted:
            commands.run(["scancel", *submitted], check=False)
            log.error("submission failed: cancelled the %d job(s) it had submitted (%s)", len(submitted), " ".join(submitted))
        raise
    _record(folder, sub)
    echo(f"submitted to SLURM: prepare {prep}, {len(sub['packs'])} pack job(s) "
         f"{sub['packs'][0]['job']}..{sub['packs'][-1]['job']}, report {rep}" if sub["packs"] else f"submitted prepare {prep}, report {rep}")
    echo(f"follow it with: thesis-mlflow grid status {g.run_name}   (or squeue --me -n <job name>; logs in {folder / 'logs'})")
    return sub


# --------------------------------------------------------------------------- a grid's submission


def run_slurm(g: Grid, runs: dict[CellSpec, str], exp_id: str, grid_file: Path, dry_run: bool, echo: Callable[[str], None] = log.info,
              stack_seeds: str = "auto", busy: dict[str, str] | None = None) -> tuple[Path, dict | None]:
    """Write the grid's job scripts for ``runs`` (cell -> child run id) and submit them, leaving
    out cells whose latest pack job SLURM will still run (a second ``grid run`` while the first's
    jobs wait or train submits nothing for them). ``dry_run``: print the scripts and the sbatch
    commands, submit nothing. ``busy``: {cell name: job id} of the cells SLURM will still run
    (``state.active_cells``, read by the caller: that module reads this one's record). Returns
    the job folder and the submission (None: nothing submitted)."""
    from thesis_mlflow.tracking import runs as tracking  # lazy: MLflow, only to submit (writing the scripts needs none)

    folder = job_dir(g)
    if not dry_run:  # (``run_grid`` checked ``require_slurm`` before it created any run)
        busy = busy or {}
        if busy:
            echo(f"{len(busy)} cell(s) already in SLURM jobs that will still run them (" + ", ".join(sorted(set(busy.values()), key=int))
                 + "): not submitted again")
        runs = {c: rid for c, rid in runs.items() if c.name not in busy}
        if not runs:
            echo("nothing to submit")
            return folder, None
    scripts = write_scripts(g, runs, tracking.tracking_uri(), exp_id, grid_file, stack_seeds)
    defaults = shell_defaults(g)
    for key, (value, var) in defaults.items():
        echo(f"slurm.{key} is null in the grid file: {key} {value} from {var} in your environment (written into the scripts)")
    ignored = sorted(k for k in os.environ if k.startswith("SBATCH_") and k not in {v for _, v in defaults.values()})
    if ignored:
        echo(f"ignored from your environment (the scripts' #SBATCH lines decide): {', '.join(ignored)}")
    if dry_run:
        for s in scripts:
            echo(f"--- {s.path}\n{s.text}")
        packs = [s for s in scripts if s.kind == "pack"]
        q = shlex.quote
        echo("would submit (nothing was; each script on sbatch's standard input, without your SBATCH_* variables):\n"
             f"  PREPARE=$(sbatch --parsable < {q(str(scripts[0].path))})\n"
             + "".join(f"  P{i}=$(sbatch --parsable --dependency=afterok:$PREPARE --kill-on-invalid-dep=yes < {q(str(s.path))})\n"
                       for i, s in enumerate(packs))
             + f"  sbatch --dependency=afterany:{':'.join(f'$P{i}' for i in range(len(packs))) or '$PREPARE'} < {q(str(scripts[-1].path))}")
        return folder, None
    if tracking.tracking_uri().startswith("sqlite"):
        echo("warning: jobs would log to a SQLite file: start `thesis-mlflow serve` and export MLFLOW_TRACKING_URI=http://HOST:PORT")
    return folder, submit(g, scripts, echo)
