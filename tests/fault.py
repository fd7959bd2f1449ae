"""Environment that makes a train process (or one cell of a pack) die like an evicted job:
SIGKILL right after an epoch is logged. The hook lives in tests/fault_hook, never in the
product; child processes inherit it through PYTHONPATH."""

from __future__ import annotations

import os
from pathlib import Path

HOOK = Path(__file__).parent / "fault_hook"


def kill_env(after_epoch: int, cell: str = "", base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) plus the hook, killing after ``after_epoch``
    in the cell named ``cell`` (every cell when empty)."""
    env = dict(os.environ if base is None else base)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{HOOK}{os.pathsep}{path}" if path else str(HOOK)
    env["THESIS_MLFLOW_KILL_AFTER_EPOCH"] = str(after_epoch)
    env["THESIS_MLFLOW_KILL_CELL"] = cell
    return env
