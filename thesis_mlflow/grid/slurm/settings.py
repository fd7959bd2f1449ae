"""The SLURM backend's settings: a grid's ``slurm:`` section, checked (``SlurmSpec``). MLflow-free and scheduler-free (no
command runs here), so a wrong key is named before anything is created or submitted."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.jobenv import allowed_names
from thesis_mlflow.grid.quoting import check_directive, check_path, check_slurm_word, sbatch_option

TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")  # [D-]HH:MM:SS
MEM = re.compile(r"^\d+[KMGT]?$")  # sbatch --mem: megabytes, or with a unit


@dataclass(frozen=True)
class SlurmSpec:
    """How a grid's jobs ask SLURM for resources. Defaults suit one GPU pack of whole
    configurations, as on Condor: 8 cells (2 configurations x 3 seeds, seeds stacked on the GPU)."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None  # None: the user's default account
    qos: str | None = None
    time: str = "12:00:00"  # per job attempt; a pack that needs longer is requeued and resumes (max_requeues)
    cpus_per_job: int = 8  # one core per packed cell
    mem: str = "32G"  # ~3-4 GB per packed cell (a CUDA context, the data)
    gpus_per_job: int = 1  # 0: a CPU job (then cells train one after another)
    gpu_type: str | None = None  # a typed GPU where the cluster names them (--gres=gpu:h100:1); None: any
    cells_per_job: int = 8
    # SLURM's warning before the time limit (USR1): time to stop at the next step, end the runs
    # KILLED with their checkpoints and ask for a requeue. SLURM may send it up to 60 s early.
    signal_before_end_s: int = 300
    max_requeues: int = 3  # requeues after reaching the time limit, per job, before it is left timed out
    extra: tuple[str, ...] = ()  # more #SBATCH options, e.g. "--constraint=a100"
    export: bool | tuple[str, ...] = True  # variables taken from the submitting shell: True = jobenv.GETENV_ALLOW
    job_dir: str = "slurm"  # job scripts, the jobs record and the logs (under outputs/ when relative); private
    python: str | None = None  # the jobs' Python; None: the submitting one

    @property
    def seconds(self) -> int:
        d, h, m, s = (int(x or 0) for x in TIME.match(self.time).groups())
        return ((d * 24 + h) * 60 + m) * 60 + s


def _int(v, key: str, low: int, high: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        raise BadSetting(f"slurm.{key} must be an integer >= {low}" + (f" and <= {high}" if high is not None else "") + f"; got {v!r}")
    return v


def slurm_spec(given: dict | None, where: str = "grid file") -> SlurmSpec:
    """The ``slurm:`` section of a grid file (``None``: every default), each key checked."""
    given = dict(given or {})
    known = {f.name for f in fields(SlurmSpec)}
    bad = set(given) - known
    if bad:
        raise BadSetting(f"{where}: slurm: unknown keys {sorted(bad)}; allowed: {sorted(known)}")
    d = SlurmSpec()
    kw = {}
    for k in ("partition", "account", "qos", "gpu_type"):
        kw[k] = check_slurm_word(given.get(k, getattr(d, k)), f"slurm.{k}")
    t = given.get("time", d.time)
    if not isinstance(t, str) or not TIME.match(t) or SlurmSpec(time=t).seconds == 0:
        raise BadSetting(f"slurm.time must be HH:MM:SS or D-HH:MM:SS (more than zero), e.g. 12:00:00; got {t!r}")
    kw["time"] = t
    mem = given.get("mem", d.mem)
    if not isinstance(mem, str) or not MEM.match(mem.strip().upper()):
        raise BadSetting(f"slurm.mem must be a size such as 16G, 4000M or 4000 (megabytes); got {mem!r}")
    kw["mem"] = mem.strip().upper()
    kw["cpus_per_job"] = _int(given.get("cpus_per_job", d.cpus_per_job), "cpus_per_job", 1)
    kw["gpus_per_job"] = _int(given.get("gpus_per_job", d.gpus_per_job), "gpus_per_job", 0)
    kw["cells_per_job"] = _int(given.get("cells_per_job", d.cells_per_job), "cells_per_job", 1)
    if "signal_before_end_s" in given:
        kw["signal_before_end_s"] = _int(given["signal_before_end_s"], "signal_before_end_s", 10, 65535)
    else:  # not set: the default, or a quarter of a short time limit (a 5-minute job is warned 75 s before its end)
        kw["signal_before_end_s"] = min(d.signal_before_end_s, max(10, SlurmSpec(time=t).seconds // 4))
    kw["max_requeues"] = _int(given.get("max_requeues", d.max_requeues), "max_requeues", 0)
    extra = given.get("extra", [])
    if extra is None:
        extra = []
    if not isinstance(extra, list):
        raise BadSetting(f"slurm.extra must be a list of sbatch options; got {extra!r}")
    kw["extra"] = tuple(sbatch_option(x, f"slurm.extra[{i}]") for i, x in enumerate(extra))
    export = given.get("export", d.export)
    if isinstance(export, list):
        export = tuple(export)
    elif not isinstance(export, bool):
        raise BadSetting(f"slurm.export must be true, false or a list of variable names; got {export!r}")
    allowed_names(export, "slurm.export", {})  # a secret's name or a wildcard that could match one: refused here
    kw["export"] = export
    # the job folder is written into #SBATCH --output (no blanks or quotes there); the Python is
    # shell-quoted in the script's body (any path without control characters)
    kw["job_dir"] = check_directive(given.get("job_dir", d.job_dir), "slurm.job_dir")
    python = given.get("python", d.python)
    kw["python"] = None if python is None else check_path(python, "slurm.python")
    spec = SlurmSpec(**kw)
    if spec.signal_before_end_s >= spec.seconds:
        raise BadSetting(f"slurm.signal_before_end_s ({spec.signal_before_end_s}) must be shorter than slurm.time ({spec.time})")
    return spec
