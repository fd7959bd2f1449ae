"""thesis-mlflow: MLflow-tracked tokenization study for four-top-quark classification.

The library is grouped by role: ``learn`` (events in, scores out), ``tracking`` (the MLflow
boundary), ``pipeline`` (the steps' work), ``grid`` (grids of cells, locally or on HTCondor),
``report`` (the query API, statistics, the summary) and ``server`` (the tracking server);
``spec`` says what a cell is. docs/design.md section 2 has the map.
"""

import importlib
import warnings

from thesis_mlflow.tracking.telemetry import telemetry_off

telemetry_off()

__version__ = "0.1.0"

# The query API's name before the package was grouped by role (2026-12-01): notebooks written
# with `from thesis_mlflow import results` keep working, with a warning naming the new home.
_MOVED = {"results": "thesis_mlflow.report.results"}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"thesis_mlflow.{name} is now {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'thesis_mlflow' has no attribute {name!r}")
