"""Faults planted from the tests, never from the product: a train process (or one cell of a
pack) dies like an evicted job (SIGKILL, no cleanup), fails with an exception, or is paused
(SIGSTOP) until the test wakes it, right after one of its epochs is logged or checkpointed.

In this process: ``install(...)`` (monkeypatches ``tracking``). In a child process:
``kill_env(...)`` puts tests/fault_hook on PYTHONPATH, whose sitecustomize calls ``install``.
"""

from __future__ import annotations

import os
from pathlib import Path

HOOK = Path(__file__).parent / "fault_hook"
ENV = {"epoch": "THESIS_MLFLOW_FAULT_EPOCH", "cell": "THESIS_MLFLOW_FAULT_CELL", "at": "THESIS_MLFLOW_FAULT_AT",
       "how": "THESIS_MLFLOW_FAULT_HOW"}


class PlantedFailure(RuntimeError):
    """The exception a cell made to fail on purpose raises."""


def install(epoch: int, cell: str = "", at: str = "metrics", how: str = "kill", patch=None) -> None:
    """After epoch ``epoch``'s metrics (``at="metrics"``) or its checkpoint upload (``"checkpoint"``,
    before the metrics) in the cell named ``cell`` (any when empty): SIGKILL (``how="kill"``),
    raise ``PlantedFailure`` (``"raise"``) or SIGSTOP itself and carry on once woken with SIGCONT
    (``"stop"``: a Condor suspend, an NFS stall). ``patch``: a ``pytest.MonkeyPatch`` to undo it with."""
    import signal

    import mlflow

    from thesis_mlflow.tracking import runs as tracking

    set_attr = patch.setattr if patch is not None else setattr

    def fire() -> None:
        if cell not in ("", mlflow.active_run().info.run_name):
            return
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        raise PlantedFailure(f"planted failure after epoch {epoch}")

    if at == "metrics":
        log_metrics = tracking.log_metrics

        def logged(metrics, step=None):
            log_metrics(metrics, step)
            if "epoch" in metrics and int(metrics["epoch"]) == epoch:
                fire()

        set_attr(tracking, "log_metrics", logged)
    else:
        log_artifact = tracking.log_artifact
        uploads = {"n": 0}

        def uploaded(path, artifact_path=None, *a, **kw):
            log_artifact(path, artifact_path, *a, **kw)
            if artifact_path == "checkpoints":
                uploads["n"] += 1  # one checkpoint per epoch trained in this process
                if uploads["n"] == epoch:
                    fire()

        set_attr(tracking, "log_artifact", uploaded)


def kill_env(epoch: int, cell: str = "", base: dict | None = None, at: str = "metrics", how: str = "kill") -> dict:
    """``base`` (default: this process's environment) plus the hook, for a child process."""
    env = dict(os.environ if base is None else base)
    # a ``base`` of a few variables is laid over this environment by the caller: keep its PYTHONPATH
    # (a GPU node's carried packages live there), else the child would lose them to the hook
    path = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = f"{HOOK}{os.pathsep}{path}" if path else str(HOOK)
    env.update({ENV["epoch"]: str(epoch), ENV["cell"]: cell, ENV["at"]: at, ENV["how"]: how})
    return env
