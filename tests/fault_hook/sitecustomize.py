"""Fault injection for tests, outside the product: a process started with this folder on its
PYTHONPATH and ``THESIS_MLFLOW_KILL_AFTER_EPOCH=N`` SIGKILLs itself (an evicted job: no
cleanup, no atexit) right after epoch N's metrics are logged, in the cell whose run name is
``THESIS_MLFLOW_KILL_CELL`` when that is set. See tests/fault.py."""

import os

if os.environ.get("THESIS_MLFLOW_KILL_AFTER_EPOCH"):
    import signal

    from thesis_mlflow import tracking

    _log_metrics = tracking.log_metrics

    def log_metrics(metrics, step=None):
        _log_metrics(metrics, step)
        after = int(os.environ["THESIS_MLFLOW_KILL_AFTER_EPOCH"])
        if "epoch" in metrics and int(metrics["epoch"]) == after:
            import mlflow

            cell = os.environ.get("THESIS_MLFLOW_KILL_CELL", "")
            if cell in ("", mlflow.active_run().info.run_name):
                os.kill(os.getpid(), signal.SIGKILL)

    tracking.log_metrics = log_metrics
