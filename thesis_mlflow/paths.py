"""Where things are: the project directory and how relative paths are read."""

from __future__ import annotations

from pathlib import Path

# The project checkout: jobs run here (MLproject, the grid's local and Condor backends).
ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """Relative paths are taken against the working directory (``mlflow run .`` runs in the project)."""
    return Path(path).expanduser().resolve()
