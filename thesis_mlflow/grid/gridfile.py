"""Grid definition: YAML -> cells (``CellSpec``) -> the exact commands a cell runs, and the HTCondor DAG.

MLflow-free: the driver (``thesis_mlflow.grid.driver``) creates the runs and hands their ids in here.
A ``demo`` and a ``full`` scale are selections of one YAML file (``scales:``), not copies.
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from thesis_mlflow.errors import BadSetting, MissingInput
from thesis_mlflow.spec import CODEBOOK_SIZE, DEFAULT_DATA, FACTORS, POOLINGS, TASKS, TOKENIZERS, VQVAE_EPOCHS, CellSpec

TOP_KEYS = {"name", "description", "factors", "binned_ambre_path", "data", "task", "binning", "scales", "condor"}
TRAIN_KEYS = {"epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "dropout", "d_model", "n_layers", "n_heads", "d_ff",
              "max_train_events", "max_eval_events", "device", "step_mode"}
VQVAE_KEYS = {"epochs", "codebook_size", "max_events"}
BINNING_KEYS = {"n_bins", "phi", "fit_on"}
# Defaults like the user's Stoomboot train.sub: 1 GPU, 16 GB, el9, category "long", shared FS.
CONDOR_DEFAULTS = {
    "request_gpus": 1, "request_cpus": 2, "request_memory": "16GB", "request_disk": "32GB", "job_category": "long", "use_os": "el9",
    "getenv": True, "log_dir": "condor/logs", "initialdir": ".", "retries": 3, "python": None, "dag_dir": "condor",
    # cells trained at once in one GPU job (each its own process, child run and checkpoint); 1 = one job per cell
    "cells_per_job": 1,
}


PER_CELL = {"request_cpus": 1, "request_memory_gb": 4}  # one core and ~3-4 GB (a CUDA context, the data) per packed cell


def pack_resources(condor: dict, given: dict) -> dict:
    """CPUs and memory of a pack job scale with ``cells_per_job`` unless the YAML sets them."""
    k = int(condor.get("cells_per_job") or 1)
    out = {}
    if k > 1 and "request_cpus" not in given:
        out["request_cpus"] = max(int(CONDOR_DEFAULTS["request_cpus"]), PER_CELL["request_cpus"] * k)
    if k > 1 and "request_memory" not in given:
        out["request_memory"] = f"{max(16, PER_CELL['request_memory_gb'] * k)}GB"
    return out


@dataclass
class Grid:
    name: str
    scale: str
    factors: dict
    seeds: list
    data: str
    task: str
    binned_ambre: dict  # vect -> path of the colleague's file
    binning: dict
    train: dict
    vqvae: dict
    condor: dict = field(default_factory=dict)
    source: Path | None = None

    @property
    def run_name(self) -> str:
        """``grid.name`` tag: the YAML name, suffixed by the scale unless it is ``full``."""
        return self.name if self.scale == "full" else f"{self.name}-{self.scale}"

    @property
    def tokenizers(self) -> list[str]:
        toks = list(self.factors["tokenizer"])
        if self.binned_ambre and "binned_ambre" not in toks:
            toks.append("binned_ambre")
        return toks

    def cells(self) -> list[CellSpec]:
        """Every cell of the grid at this scale, each a complete, validated train spec."""
        base = {"task": self.task, "data": self.data, **self.train, **self.binning}
        vq = {"vqvae_epochs": self.vqvae.get("epochs", VQVAE_EPOCHS), "codebook_size": self.vqvae.get("codebook_size", CODEBOOK_SIZE),
              "vqvae_max_events": self.vqvae.get("max_events", 0)}
        out = []
        for seed, tok, pool, met, vect in itertools.product(self.seeds, self.tokenizers, self.factors["pooling"], self.factors["met"],
                                                            self.factors["vect"]):
            if tok == "binned_ambre" and vect not in self.binned_ambre:
                continue  # the colleague's file exists for these vects only
            out.append(CellSpec(tokenizer=tok, pooling=pool, met=bool(met), vect=int(vect), seed=int(seed), **base,
                                **(vq if tok == "vqvae" else {}), binned_path=self.binned_ambre.get(vect, "") if tok == "binned_ambre" else ""))
        return out

    def train_args(self, cell: CellSpec) -> list[str]:
        """Arguments of ``python -m steps.train`` for one cell: the same locally and on Condor."""
        return cell.cli_args()

    def packs(self, cells: list[CellSpec] | None = None) -> list[list[CellSpec]]:
        """``cells`` (default: all) grouped ``condor.cells_per_job`` at a time, one GPU job each.

        The seeds of one configuration go next to each other (configurations in grid order): they
        share a compiled graph, so a pack compiles ~k/3 graphs and reads the rest from Inductor's
        cache instead of compiling k (measured on an H100: ~48 s a cold compile, ~5 s from the cache)."""
        k = int(self.condor.get("cells_per_job", 1))
        cells = self.cells() if cells is None else cells
        by_config: dict[CellSpec, list[CellSpec]] = {}  # insertion order: configurations in grid order
        for c in cells:
            by_config.setdefault(replace(c, seed=0), []).append(c)
        cells = [c for seeds in by_config.values() for c in sorted(seeds, key=lambda c: c.seed)]
        return [cells[i : i + k] for i in range(0, len(cells), k)]


def _check(keys, allowed, where):
    bad = set(keys) - set(allowed)
    if bad:
        raise BadSetting(f"{where}: unknown keys {sorted(bad)}; allowed: {sorted(allowed)}")


def load_grid(path: str | Path, scale: str = "full", base_dir: str | Path | None = None) -> Grid:
    """Read and validate a grid YAML; every mistake is named before anything runs.

    Relative data paths are made absolute against ``base_dir`` (the project directory, where
    the jobs run), so the driver, local jobs and Condor jobs all read the same file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"grid file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BadSetting(f"{path}: not valid YAML ({e})") from e
    _check(doc, TOP_KEYS, str(path))
    if not doc.get("name"):
        raise BadSetting(f"{path}: 'name' is required")
    scales = doc.get("scales") or {}
    if scale not in scales:
        raise BadSetting(f"{path}: scale {scale!r} not defined; defined scales: {', '.join(scales) or 'none'}")
    sc = scales[scale] or {}
    _check(sc, {"seeds", "train", "vqvae"}, f"{path}: scales.{scale}")
    f = doc.get("factors") or {}
    _check(f, FACTORS, f"{path}: factors")
    allowed = {"tokenizer": [t for t in TOKENIZERS if t != "binned_ambre"], "pooling": list(POOLINGS), "met": [True, False], "vect": [4, 5]}
    factors = {}
    for k in FACTORS:
        levels = f.get(k, allowed[k])
        if not isinstance(levels, list) or not levels:
            raise BadSetting(f"{path}: factors.{k} must be a non-empty list")
        for lv in levels:
            if lv not in allowed[k]:
                raise BadSetting(f"{path}: factors.{k} has level {lv!r}; allowed: {allowed[k]} (binned_ambre comes from binned_ambre_path)")
        factors[k] = levels
    seeds = sc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise BadSetting(f"{path}: scales.{scale}.seeds must be a list of integers >= 0")
    ambre = doc.get("binned_ambre_path")
    if ambre is None:
        ambre = {}
    elif isinstance(ambre, str):
        ambre = {4: ambre}  # the colleague's file is a 4-vector binning unless said otherwise
    elif isinstance(ambre, dict):
        ambre = {int(k): str(v) for k, v in ambre.items() if v}
        if set(ambre) - {4, 5}:
            raise BadSetting(f"{path}: binned_ambre_path keys must be 4 and/or 5")
    else:
        raise BadSetting(f"{path}: binned_ambre_path must be a path or a mapping {{4: path, 5: path}}")
    task = doc.get("task", "4t_vs_bg")
    if task not in TASKS:
        raise BadSetting(f"{path}: task must be one of {', '.join(TASKS)}; got {task!r}")
    train = dict(sc.get("train") or {})
    _check(train, TRAIN_KEYS, f"{path}: scales.{scale}.train")
    vq = dict(sc.get("vqvae") or {})
    _check(vq, VQVAE_KEYS, f"{path}: scales.{scale}.vqvae")
    binning = dict(doc.get("binning") or {})
    _check(binning, BINNING_KEYS, f"{path}: binning")
    given = doc.get("condor") or {}
    condor = {**CONDOR_DEFAULTS, **given}
    _check(condor, CONDOR_DEFAULTS, f"{path}: condor")
    condor.update(pack_resources(condor, given))
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def absolute(p: str) -> str:
        p = Path(p).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    ambre = {k: absolute(v) for k, v in ambre.items()}
    k = condor["cells_per_job"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BadSetting(f"{path}: condor.cells_per_job must be an integer >= 1; got {k!r}")
    g = Grid(name=str(doc["name"]), scale=scale, factors=factors, seeds=seeds, data=absolute(doc.get("data", DEFAULT_DATA)),
             task=task, binned_ambre=ambre, binning=binning, train=train, vqvae=vq, condor=condor, source=path)
    try:
        g.cells()  # every cell is a valid train spec, or nothing runs
    except (TypeError, ValueError) as e:
        raise BadSetting(f"{path}: scales.{scale}: {e}") from e
    return g


# --------------------------------------------------------------------------- HTCondor


# `getenv = True` would copy the submitter's whole environment into the job ad, which every user
# of the pool can read (condor_q -l): a password or token there is public. Jobs get what they
# need to find Python and the project; MLflow credentials come from ~/.mlflow/credentials.
GETENV_ALLOW = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_*", "HOME", "USER", "LOGNAME", "LANG", "LC_*",
                "TZ", "TMPDIR", "CUDA_HOME", "CUDA_PATH")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "USERNAME", "KEY", "AUTH", "PASSWD", "CONNECTION_STRING")
# Names that hold secrets without saying so in every part, which a wildcard could match at submit
# time even when they are not set now (the DAG may be submitted from another shell).
KNOWN_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "DATABRICKS_TOKEN",
                 "PGPASSWORD", "PGPASSFILE", "HF_TOKEN", "GITHUB_TOKEN", "X509_USER_PROXY", "KRB5CCNAME")


def _looks_secret(name: str) -> bool:
    return name in KNOWN_SECRETS or any(w in name.upper() for w in SECRET_WORDS)


def getenv_value(setting, environ: dict | None = None) -> str:
    """The submit file's ``getenv``: explicit variable names, never one that looks secret.

    ``true`` is the allow-list ``GETENV_ALLOW``. A wildcard (``CONDA_*``) is refused when it could
    match a known secret name (``MLFLOW_*`` matches MLFLOW_TRACKING_PASSWORD, ``AWS_*`` the AWS
    keys), and otherwise expanded against the environment now and written as the names it
    matched: what the job ad gets is decided here, where it is checked, not at submit time.
    """
    import fnmatch

    if setting is False or setting is None:
        return "False"
    names = list(GETENV_ALLOW) if setting is True else [str(x) for x in setting] if isinstance(setting, list) else None
    if names is None:
        raise BadSetting(f"condor.getenv must be true, false or a list of variable names; got {setting!r}")
    env = os.environ if environ is None else environ
    bad = [n for n in names if n.strip() in ("*", "") or _looks_secret(n)]
    bad += [n for n in names if "*" in n or "?" in n
            for s in (*KNOWN_SECRETS, *(k for k in env if _looks_secret(k))) if fnmatch.fnmatchcase(s, n) and n not in bad]
    if bad:
        raise BadSetting(f"condor.getenv would copy {sorted(set(bad))} (or a secret they match) into job ads that every user can read; "
                         "list harmless variable names, and give MLflow credentials through ~/.mlflow/credentials")
    out = []
    for n in names:
        matched = sorted(k for k in env if fnmatch.fnmatchcase(k, n)) if ("*" in n or "?" in n) else [n]
        out += [m for m in matched if m not in out]
    return ", ".join(out) if out else "False"


def check_no_credentials(tracking_uri: str) -> None:
    """A tracking URI with user:password@ would put the password into every job ad."""
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.password or parts.username:
        raise BadSetting("MLFLOW_TRACKING_URI holds a login (user:password@host): jobs would carry it in their environment; "
                         "export the URI without it and put the login in ~/.mlflow/credentials")


def _under_outputs(path: str) -> Path:
    """``dag_dir`` / ``log_dir`` as given, relative ones under the project (``paths.outputs``)."""
    from thesis_mlflow.paths import outputs

    p = Path(path)
    return p if p.is_absolute() else outputs() / p


def submit_description(grid: Grid, args: str, env: str, log_name: str, project_dir: Path, python: str):
    """One submit description (``htcondor2.Submit``) with the grid's condor settings."""
    import htcondor2

    c = grid.condor
    log_dir = _under_outputs(c["log_dir"])
    initialdir = Path(c["initialdir"])
    if not initialdir.is_absolute():
        initialdir = (project_dir / initialdir).resolve()
    sub = {
        "universe": "vanilla",
        "executable": python,
        "arguments": args,
        "initialdir": str(initialdir),
        "environment": env,
        "getenv": getenv_value(c["getenv"]),
        "output": str(log_dir / f"{log_name}.out"),
        "error": str(log_dir / f"{log_name}.err"),
        "log": str(log_dir / f"{grid.run_name}.log"),
        "request_cpus": str(c["request_cpus"]),
        "request_memory": str(c["request_memory"]),
        "request_disk": str(c["request_disk"]),
        "+JobCategory": f'"{c["job_category"]}"',
        "+UseOS": f'"{c["use_os"]}"',
        "should_transfer_files": "NO",  # shared filesystem, as on Stoomboot
        "stream_output": "True",
        "stream_error": "True",
    }
    if c["request_gpus"]:
        sub["request_gpus"] = str(c["request_gpus"])
    return htcondor2.Submit(sub)


def _env(d: dict) -> str:
    """Condor's new-style environment string: "A=1 B='x y'"."""
    return '"' + " ".join(f"{k}='{v}'" if " " in str(v) else f"{k}={v}" for k, v in d.items()) + '"'


def write_dag(grid: Grid, run_ids: dict[CellSpec, str], tracking_uri: str, experiment_id: str, project_dir: Path, grid_file: Path,
              out_dir: Path | None = None) -> Path:
    """Write the DAGMan workflow: prepare -> train nodes (with retries) -> report.

    A train node is one cell (``python -m steps.train``, the local backend's command) or, with
    ``condor.cells_per_job`` K > 1, a pack of K cells trained at once on the job's GPU
    (``python -m steps.grid pack``): a retried pack runs only its cells not yet finished, each
    resuming from its own checkpoint. The report is DAGMan's FINAL node: it runs even when some
    cells failed for good, and the report shows them as missing.
    """

    check_no_credentials(tracking_uri)
    getenv_value(grid.condor["getenv"])  # refused before anything is written
    python = grid.condor["python"] or sys.executable
    from thesis_mlflow.permissions import private_files, secure_dir

    # DAGMan re-reads the submit files at every retry: a groupmate able to edit one would run code
    # as us, with our login. The folders are ours alone (0700; one others can write is refused, naming
    # it) and every file is written 0600.
    out_dir = secure_dir(Path(out_dir or (_under_outputs(grid.condor["dag_dir"]) / grid.run_name)), "DAG folder")
    secure_dir(_under_outputs(grid.condor["log_dir"]), "Condor log folder")
    with private_files():
        return _write_dag(grid, run_ids, tracking_uri, experiment_id, project_dir, grid_file, out_dir, python)


def _write_dag(grid: Grid, run_ids: dict, tracking_uri: str, experiment_id: str, project_dir: Path, grid_file: Path, out_dir: Path,
               python: str) -> Path:
    from htcondor2 import dags

    from thesis_mlflow.tracking.telemetry import telemetry_off

    base_env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_ID": experiment_id, "PYTHONUNBUFFERED": "1", **telemetry_off()}
    if os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):  # the server's certificate (public), so HTTPS is verified on the nodes
        base_env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    from thesis_mlflow.grid import condor as dagnodes

    # DAGMan's own view of each node (queued, held, retried), read back by `grid status`
    dag = dags.DAG(node_status_file=dags.NodeStatusFile(out_dir / dagnodes.STATUS_FILE, update_time=dagnodes.UPDATE_S))
    prep_args = f"-m steps.grid prepare {grid_file} --scale {grid.scale}"
    prepare = dag.layer(name="prepare", submit_description=submit_description(grid, prep_args, _env(base_env), "prepare", project_dir, python),
                        retries=int(grid.condor["retries"]))
    cells = list(run_ids)
    k = int(grid.condor["cells_per_job"])
    gpu = bool(grid.condor["request_gpus"])  # a job that asked for a GPU trains on it or fails at once, never on the CPU
    if k == 1:
        dagnodes.write_cells_by_node(out_dir, {f"train:{i}": [c.name] for i, c in enumerate(cells)})
        env = _env({**base_env, "MLFLOW_RUN_ID": "$(run_id)"})
        prepare.child_layer(
            name="train",
            submit_description=submit_description(grid, "-m steps.train $(args)", env, "$(cell)", project_dir, python),
            vars=[{"cell": c.name, "run_id": run_ids[c],
                   "args": shlex.join(grid.train_args(replace(c, device="cuda") if gpu and c.device == "auto" else c)),
                   **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in c.factors().items()}} for c in cells],
            retries=int(grid.condor["retries"]),
        )
    else:
        args = f"-m steps.grid pack {grid_file} --scale {grid.scale} --runs $(runs)" + (" --device cuda" if gpu else "")
        packs = grid.packs(cells)
        dagnodes.write_cells_by_node(out_dir, {f"pack:{i}": [c.name for c in p] for i, p in enumerate(packs)})
        prepare.child_layer(
            name="pack",
            submit_description=submit_description(grid, args, _env(base_env), "pack-$(pack)", project_dir, python),
            vars=[{"pack": f"{i:03d}", "cells": " ".join(c.name for c in p), "runs": ",".join(f"{c.name}={run_ids[c]}" for c in p)}
                  for i, p in enumerate(packs)],
            retries=int(grid.condor["retries"]),
        )
    rep_args = f"-m steps.report --grid {grid.run_name}"
    report_sub = submit_description(grid, rep_args, _env(base_env), "report", project_dir, python)
    dag.final(name="report", submit_description=report_sub)
    dag_file = dags.write_dag(dag, out_dir, dag_file_name=f"{grid.run_name}.dag")
    # htcondor2.dags writes submit files for layers only; the FINAL node's is written here.
    (out_dir / "report.sub").write_text(str(report_sub))
    return dag_file
