"""Loaded at start-up by a test's child process that has this folder on its PYTHONPATH (see
tests/fault.py): plants the fault its environment describes. Never part of the product."""

import os

if os.environ.get("THESIS_MLFLOW_FAULT_EPOCH"):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: tests.fault
    from tests.fault import install

    install(int(os.environ["THESIS_MLFLOW_FAULT_EPOCH"]), os.environ.get("THESIS_MLFLOW_FAULT_CELL", ""),
            os.environ.get("THESIS_MLFLOW_FAULT_AT", "metrics"), os.environ.get("THESIS_MLFLOW_FAULT_HOW", "kill"))
