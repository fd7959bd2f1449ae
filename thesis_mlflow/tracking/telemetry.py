"""What leaves the machine: nothing the user did not ask for.

MLflow sends usage telemetry unless told not to. On a physics cluster that is not the user's
choice to have made for them, and on nodes without internet its background thread (which
fetches a config, fails, and then edits ``os.environ`` while other threads iterate it)
crashed one of 36 jobs started together (``KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'``).
So every process this project starts has it off: the steps, the grid's jobs and packs, the
tracking server and the Condor jobs. Opt in with ``export MLFLOW_DISABLE_TELEMETRY=false``.
This module must stay importable before MLflow (it decides at import time).
"""

from __future__ import annotations

import os

TELEMETRY_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def telemetry_off() -> dict[str, str]:
    """Turn MLflow telemetry off in this process and its children unless the user chose
    otherwise (an explicit ``MLFLOW_DISABLE_TELEMETRY=false`` wins); returns the settings."""
    if os.environ.get("MLFLOW_DISABLE_TELEMETRY", "").lower() in ("false", "0", "no"):
        return {}
    for k, v in TELEMETRY_ENV.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in TELEMETRY_ENV}
