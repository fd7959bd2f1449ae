"""A grid's ``condor:`` section, checked: ``condor_spec`` -> ``CondorSpec``. MLflow-free and scheduler-free (as
``slurm.settings``), so a wrong key or a value that would rewrite a submit file is named before
anything is created or submitted. Every value is checked by the rule of ``grid.quoting``."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.jobenv import allowed_names
from thesis_mlflow.grid.quoting import check_condor_value, check_name


@dataclass(frozen=True)
class CondorSpec:
    """How a grid's jobs ask HTCondor for resources. Defaults like the user's Stoomboot train.sub:
    1 GPU, 16 GB, el9, category "long", shared filesystem."""

    request_gpus: int = 1
    request_cpus: int = 2  # a pack's default grows with cells_per_job (``pack_resources``)
    request_memory: str = "16GB"
    request_disk: str = "32GB"
    job_category: str = "long"
    use_os: str = "el9"
    getenv: bool | list = True  # an allow-list of variable names (True: jobenv.GETENV_ALLOW), never secrets
    log_dir: str = "condor/logs"
    initialdir: str = "."
    retries: int = 3
    python: str | None = None  # the jobs' Python; None: the submitting one
    dag_dir: str = "condor"
    # cells trained at once in one GPU job (each its own child run and checkpoint); 1 = one job per cell
    cells_per_job: int = 1
    # a job held for exceeding its memory is released with request_memory x memory_multiplier^starts,
    # up to memory_max (None: never released; it stays held for the user)
    memory_max: str | None = None
    memory_multiplier: float = 2
    held_limit_h: float = 24  # `grid status` says a job held longer than this will not be released by itself


CONDOR_DEFAULTS = {f.name: f.default for f in fields(CondorSpec)}
PER_CELL = {"request_cpus": 1, "request_memory_gb": 4}  # one core and ~3-4 GB (a CUDA context, the data) per packed cell
SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)B?")


def memory_mb(size) -> int:
    """A Condor memory size (``16GB``, ``4000MB``, ``4000``: megabytes) in megabytes."""
    m = SIZE.fullmatch(str(size).strip().upper())
    if not m:
        raise BadSetting(f"condor memory size {size!r} is not a size such as 16GB or 4000MB")
    return int(float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)])


def pack_resources(condor: dict, given: dict) -> dict:
    """CPUs and memory of a pack job scale with ``cells_per_job`` unless the YAML sets them."""
    k = int(condor.get("cells_per_job") or 1)
    out = {}
    if k > 1 and "request_cpus" not in given:
        out["request_cpus"] = max(int(CONDOR_DEFAULTS["request_cpus"]), PER_CELL["request_cpus"] * k)
    if k > 1 and "request_memory" not in given:
        out["request_memory"] = f"{max(16, PER_CELL['request_memory_gb'] * k)}GB"
    return out


def _int(c: dict, key: str, low: int, where) -> None:
    v = c[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise BadSetting(f"{where}: condor.{key} must be an integer >= {low}; got {v!r}")


def _number(c: dict, key: str, above: float, what: str, where) -> None:
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= above:
        raise BadSetting(f"{where}: condor.{key} must be {what}; got {v!r}")


def condor_spec(given: dict | None, where: str = "grid file") -> CondorSpec:
    """The ``condor:`` section of a grid file (``None``: every default), each key checked: the
    numbers as numbers, sizes as sizes, names as names (``quoting.check_name``), paths without
    control characters or macros, ``getenv`` as an allow-list of variable names."""
    given = given or {}
    if not isinstance(given, dict):
        raise BadSetting(f"{where}: condor: must be a mapping of settings; got {given!r}")
    bad = set(given) - set(CONDOR_DEFAULTS)
    if bad:
        raise BadSetting(f"{where}: condor: unknown keys {sorted(bad)}; allowed: {sorted(CONDOR_DEFAULTS)}")
    c = {**CONDOR_DEFAULTS, **given}
    for k, low in (("cells_per_job", 1), ("request_gpus", 0), ("request_cpus", 1), ("retries", 0)):
        _int(c, k, low, where)
    c.update(pack_resources(c, given))
    for k in ("request_memory", "request_disk", "memory_max"):
        if c[k] is not None:
            try:
                memory_mb(c[k])
            except BadSetting:
                raise BadSetting(f"{where}: condor.{k} must be a size such as 16GB or 4000MB; got {c[k]!r}") from None
            c[k] = str(c[k]).strip()
    if c["request_memory"] is None or c["request_disk"] is None:
        raise BadSetting(f"{where}: condor.request_memory and request_disk must be sizes such as 16GB")
    if c["memory_max"] is not None and memory_mb(c["memory_max"]) < memory_mb(c["request_memory"]):
        raise BadSetting(f"{where}: condor.memory_max ({c['memory_max']}) is below request_memory ({c['request_memory']})")
    _number(c, "memory_multiplier", 1, "a number > 1", where)
    _number(c, "held_limit_h", 0, "a number of hours > 0", where)
    for k in ("job_category", "use_os"):  # written as ClassAd strings: +JobCategory = "long"
        check_name(c[k], f"{where}: condor.{k}")
    for k in ("log_dir", "initialdir", "dag_dir", "python"):  # python may be null: the submitting one
        if not (k == "python" and c[k] is None):
            check_condor_value(c[k], f"{where}: condor.{k}")
    allowed_names(c["getenv"], "condor.getenv", {})  # a secret's name, a wildcard that could match one, or a non-name: refused here
    return CondorSpec(**c)
