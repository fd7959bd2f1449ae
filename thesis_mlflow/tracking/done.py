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

from concurrent.futures import ThreadPoolExecutor

from thesis_mlflow.tracking.queries import has_artifact

SCORES = "eval/test_scores.npz"
FINAL_METRIC = "test_auc"


def has_scores(run_id: str, artifact_uri: str | None = None) -> bool:
    return has_artifact(run_id, SCORES, artifact_uri)


def has_results(run) -> bool:
    """The run's evaluation is complete: test metrics logged and the scores stored."""
    return FINAL_METRIC in run.data.metrics and has_scores(run.info.run_id, run.info.artifact_uri)


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
    return finished(run.info.status, run.data.metrics) and has_scores(run.info.run_id, run.info.artifact_uri)


def are_done(runs) -> list[bool]:
    """``is_done`` of each of ``runs``, their artifacts listed side by side: one listing takes
    ~130 ms against a server with its login, and a grid's 36 one after another took ~5 s."""
    runs = list(runs)
    with ThreadPoolExecutor(max_workers=min(8, len(runs) or 1), thread_name_prefix="are-done") as pool:
        return list(pool.map(is_done, runs))  # a run that has not finished is answered without a request
