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
from urllib.parse import urlsplit

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.tracking.telemetry import telemetry_off

# The variables a job takes from the submitting shell when the grid file says ``true``
# (Condor's ``getenv``, SLURM's ``--export``).
GETENV_ALLOW = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_*", "HOME", "USER", "LOGNAME", "LANG", "LC_*",
                "TZ", "TMPDIR", "CUDA_HOME", "CUDA_PATH")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "USERNAME", "KEY", "AUTH", "PASSWD", "CONNECTION_STRING")
# Names that hold secrets without saying so in every part, which a wildcard could match at submit
# time even when they are not set now (the DAG may be submitted from another shell).
KNOWN_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "DATABRICKS_TOKEN",
                 "PGPASSWORD", "PGPASSFILE", "HF_TOKEN", "GITHUB_TOKEN", "X509_USER_PROXY", "KRB5CCNAME")
# The project's own settings that jobs need to write where the submitter's processes write (paths, no secrets)
PROJECT_VARS = ("THESIS_MLFLOW_OUTPUTS", "THESIS_MLFLOW_CACHE")


def looks_secret(name: str) -> bool:
    return name in KNOWN_SECRETS or any(w in name.upper() for w in SECRET_WORDS)


def allowed_names(setting, key: str, environ: dict | None = None) -> list[str]:
    """The variable names a job may take from the submitting shell: ``true`` is ``GETENV_ALLOW``,
    a list is taken as given; ``false``/null: none. A name that looks secret is refused, and so
    is a wildcard (``CONDA_*``) that could match a known secret (``MLFLOW_*`` matches
    MLFLOW_TRACKING_PASSWORD, ``AWS_*`` the AWS keys); the others are expanded against the
    environment now: what the job gets is decided here, where it is checked, not at submit time."""
    if setting is False or setting is None:
        return []
    names = list(GETENV_ALLOW) if setting is True else [str(x) for x in setting] if isinstance(setting, (list, tuple)) else None
    if names is None:
        raise BadSetting(f"{key} must be true, false or a list of variable names; got {setting!r}")
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
        matched = sorted(k for k in env if fnmatch.fnmatchcase(k, n)) if ("*" in n or "?" in n) else [n]
        out += [m for m in matched if m not in out]
    return out


def getenv_value(setting, environ: dict | None = None) -> str:
    """Condor's ``getenv`` line: the allowed names (``allowed_names``), or ``False``."""
    out = allowed_names(setting, "condor.getenv", environ)
    return ", ".join(out) if out else "False"


def check_no_credentials(tracking_uri: str) -> None:
    """A tracking URI with user:password@ would put the password into every job's environment."""
    parts = urlsplit(tracking_uri)
    if parts.password or parts.username:
        raise BadSetting("MLFLOW_TRACKING_URI holds a login (user:password@host): jobs would carry it in their environment; "
                         "export the URI without it and put the login in ~/.mlflow/credentials")


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
