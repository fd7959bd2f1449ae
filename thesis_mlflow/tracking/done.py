"""When a cell is finished (docs/design.md section 6): its test metrics *and* its test scores exist.

A train run logs ``eval/test_scores.npz`` first and its test metrics last, so a run evicted
in between has no test metrics and is trained (resumed) again. Runs of older versions logged
the metrics first; the artifact is checked too, so such a run without scores is not "done".
The grid driver, a pack, ``train`` itself, ``grid status`` and the report all decide it here:
``is_done`` on one run (its artifacts listed), ``finished`` / ``finished_rows`` on what a runs
table holds (one query for a whole grid, no artifact listing: the status line and the report's
tables; the report then loads the scores, and a run without them counts as missing).
"""

from __future__ import annotations

SCORES = "eval/test_scores.npz"
FINAL_METRIC = "test_auc"


def has_scores(run_id: str) -> bool:
    from thesis_mlflow.tracking import runs as tracking  # lazy: MLflow; the writeup uses finished_rows on plain tables

    return tracking.has_artifact(run_id, SCORES)


def has_results(run) -> bool:
    """The run's evaluation is complete: test metrics logged and the scores stored."""
    return FINAL_METRIC in run.data.metrics and has_scores(run.info.run_id)


def finished(status: str, metrics) -> bool:
    """The rule on a runs table's row: FINISHED with its final test metric (logged last)."""
    return status == "FINISHED" and FINAL_METRIC in metrics


def finished_rows(runs):
    """``finished`` over a runs table (a pandas DataFrame with ``status`` and the final metric's
    column): a boolean Series."""
    if FINAL_METRIC not in runs:
        return runs["status"] != runs["status"]  # all False, same index
    return (runs["status"] == "FINISHED") & runs[FINAL_METRIC].notna()


def is_done(run) -> bool:
    """A finished cell: FINISHED with its results (nothing left to train or log)."""
    return finished(run.info.status, run.data.metrics) and has_scores(run.info.run_id)
