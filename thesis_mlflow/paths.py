"""Where things are: the project directory and how relative paths are read."""

from __future__ import annotations

import os
from pathlib import Path

# The project checkout: jobs run here (MLproject, the grid's local and Condor backends).
ROOT = Path(__file__).resolve().parents[1]


def outputs() -> Path:
    """Where the driver's worker logs and the report's pages go: ``outputs/`` and ``dashboards/``
    live under this folder, the project itself unless ``THESIS_MLFLOW_OUTPUTS`` names another
    (the tests: never into the checkout)."""
    return Path(os.environ.get("THESIS_MLFLOW_OUTPUTS") or ROOT)


def resolve(path: str | Path) -> Path:
    """Relative paths are taken against the working directory (``mlflow run .`` runs in the project)."""
    return Path(path).expanduser().resolve()
