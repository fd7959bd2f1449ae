"""When a cell is finished (docs/design.md section 6): its test metrics *and* its test scores exist.

A train run logs ``eval/test_scores.npz`` first and its test metrics last, so a run evicted
in between has no test metrics and is trained (resumed) again. Runs of older versions logged
the metrics first; the artifact is checked too, so such a run without scores is not "done".
The grid driver, a pack, ``train`` itself and ``grid status`` all decide it here.
"""

from __future__ import annotations

SCORES = "eval/test_scores.npz"
FINAL_METRIC = "test_auc"


def has_scores(run_id: str) -> bool:
    from thesis_mlflow.tracking import runs as tracking

    return tracking.has_artifact(run_id, SCORES)


def has_results(run) -> bool:
    """The run's evaluation is complete: test metrics logged and the scores stored."""
    return FINAL_METRIC in run.data.metrics and has_scores(run.info.run_id)


def is_done(run) -> bool:
    """A finished cell: FINISHED with its results (nothing left to train or log)."""
    return run.info.status == "FINISHED" and has_results(run)
