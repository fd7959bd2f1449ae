"""What a batch job's environment may carry, for HTCondor and SLURM alike: never a secret.

A scheduler copies what it is told to copy into places other users can read (Condor's job ads,
``condor_q -l``; SLURM hands the submitter's whole environment to the job unless ``--export``
says otherwise, and admins and accounting see it). Jobs get what they need to find Python and
the project, and the grid's own settings (``base_env``); the MLflow login comes from
``~/.mlflow/credentials`` on the node.
"""

from __future__ import annotations

import fnmatch
import os
import re

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.secret import KNOWN_SECRETS, has_login, looks_secret, mask
from thesis_mlflow.tracking.telemetry import telemetry_off

# The variables a job takes from the submitting shell when the grid file says ``true``
# (Condor's ``getenv``, SLURM's ``--export``).
GETENV_ALLOW = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_*", "HOME", "USER", "LOGNAME", "LANG", "LC_*",
                "TZ", "TMPDIR", "CUDA_HOME", "CUDA_PATH")
# A name a job's environment may take: a shell variable's name, ``*`` / ``?`` as wildcards. (What a
# scheduler reads in the list, ``--export=A,B``, ``getenv = A, B``, cannot then be widened: no
# ``=value``, no comma, no SLURM keyword ``ALL`` / ``NONE``, no Condor ``True``.)
VAR_NAME = re.compile(r"^[A-Za-z_*?][A-Za-z0-9_*?]*$")
SCHEDULER_WORDS = ("ALL", "NONE", "NIL", "TRUE", "FALSE", "YES", "NO")
# The project's own settings that jobs need to write where the submitter's processes write (paths, no secrets)
PROJECT_VARS = ("THESIS_MLFLOW_OUTPUTS", "THESIS_MLFLOW_CACHE")


def allowed_names(setting, key: str, environ: dict | None = None) -> list[str]:
    """The variable names a job may take from the submitting shell: ``true`` is ``GETENV_ALLOW``,
    a list is taken as given; ``false``/null: none. A name that looks secret is refused, and so
    is a wildcard (``CONDA_*``) that could match a known secret (``MLFLOW_*`` matches
    MLFLOW_TRACKING_PASSWORD, ``AWS_*`` the AWS keys); the others are expanded against the
    environment now: what the job gets is decided here, where it is checked, not at submit time."""
    if setting is False or setting is None:
        return []
    names = list(GETENV_ALLOW) if setting is True else list(setting) if isinstance(setting, (list, tuple)) else None
    if names is None:
        raise BadSetting(f"{key} must be true, false or a list of variable names; got {setting!r}")
    for n in names:
        if not isinstance(n, str) or not VAR_NAME.match(n) or n.upper() in SCHEDULER_WORDS:
            raise BadSetting(f"{key} must list variable names (letters, digits, _; * and ? as wildcards), not the scheduler's "
                             f"keywords {'/'.join(SCHEDULER_WORDS[:2])} or values; got {n!r}")
    env = os.environ if environ is None else environ
    bad = [n for n in names if n.strip() in ("*", "") or looks_secret(n)]
    bad += [n for n in names if "*" in n or "?" in n
            for s in (*KNOWN_SECRETS, *(k for k in env if looks_secret(k))) if fnmatch.fnmatchcase(s, n) and n not in bad]
    if bad:
        into = "job ads that every user can read" if key.startswith("condor") else "job environments the cluster's admins and tools can read"
        raise BadSetting(f"{key} would copy {sorted(set(bad))} (or a secret they match) into {into}; "
                         "list harmless variable names, and give MLflow credentials through ~/.mlflow/credentials")
    out: list[str] = []
    for n in names:
        matched = sorted(k for k in env if fnmatch.fnmatchcase(k, n) and VAR_NAME.match(k)) if ("*" in n or "?" in n) else [n]
        out += [m for m in matched if m not in out]
    return out


def getenv_value(setting, environ: dict | None = None) -> str:
    """Condor's ``getenv`` line: the allowed names (``allowed_names``), or ``False``."""
    out = allowed_names(setting, "condor.getenv", environ)
    return ", ".join(out) if out else "False"


def check_no_credentials(tracking_uri: str) -> None:
    """A tracking URI with a login (``user:password@``, ``?password=``, ``?token=``: ``secret.has_login``)
    would put it into every job's script, submit file and environment: refused, the URI masked."""
    if has_login(tracking_uri):
        raise BadSetting(f"MLFLOW_TRACKING_URI holds a login ({mask(tracking_uri)}): jobs would carry it in their scripts and "
                         "environment; export the URI without it and put the login in ~/.mlflow/credentials")


def base_env(tracking_uri: str, experiment_id: str, compile_cache: dict | None = None) -> dict[str, str]:
    """What every job of a grid is given explicitly: where to log, unbuffered output, MLflow's
    telemetry off, the server's (public) certificate so HTTPS is verified on the nodes, the
    project's output folders, and one shared compile cache (``compile_cache``)."""
    check_no_credentials(tracking_uri)
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_ID": experiment_id, "PYTHONUNBUFFERED": "1", **telemetry_off(),
           **(compile_cache or {})}
    for k in ("MLFLOW_TRACKING_SERVER_CERT_PATH", *PROJECT_VARS):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env
