"""The study as tables, for notebooks and scripts: programmatic MLflow queries of a grid.

    from thesis_mlflow import results
    runs = results.grid_runs("binning_vs_direct-demo")          # one row per cell run
    cells = results.cell_table("binning_vs_direct-demo")        # mean and spread over seeds
    hist = results.histories("binning_vs_direct-demo", "val_auc")  # one row per (run, epoch)
    s = results.test_scores(runs.run_id[0])                     # labels, scores, process per test event

The tracking server and experiment are the project's (``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``) unless ``experiment`` is given. Every query pages through
``MlflowClient.search_runs``, so grids of any size come back whole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import tracking

FACTORS = ["tokenizer", "pooling", "met", "vect", "seed"]
PARAMS = ["n_params", "n_params_embedding", "binning_run_id", "vqvae_run_id", "step_mode"]
FINAL = ["test_auc", "test_rej_at_eff50", "test_rej_at_eff70", "train_seconds"]  # columns even before any run has them
PAGE = 1000


def _experiment_ids(experiment: str | None) -> list[str]:
    c = tracking.client()
    name = experiment or tracking.experiment_name()
    exp = c.get_experiment_by_name(name)
    if exp is None and name.isdigit():
        exp = c.get_experiment(name)
    if exp is None:
        raise ValueError(f"no experiment {name!r} at {tracking.tracking_uri()}")
    return [exp.experiment_id]


def search_all(filter_string: str, experiment: str | None = None, order_by: list[str] | None = None) -> list:
    """Every run matching ``filter_string``, page by page."""
    c = tracking.client()
    out, token = [], None
    while True:
        page = c.search_runs(_experiment_ids(experiment), filter_string, max_results=PAGE, order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def grid_runs(grid: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per cell run of ``grid`` (its ``grid.name`` tag): the factors, status, run id,
    the bookkeeping params and every final metric (one column each)."""
    rows = []
    for r in search_all(tracking.grid_filter(grid), experiment, order_by=["attributes.start_time ASC"]):
        p = r.data.params
        rows.append({
            "run_id": r.info.run_id, "name": r.info.run_name or r.data.tags.get("mlflow.runName", r.info.run_id[:8]),
            "status": r.info.status, "tokenizer": p.get("tokenizer"), "pooling": p.get("pooling"),
            "met": str(p.get("met")).lower() == "true", "vect": int(p.get("vect", 0)), "seed": int(p.get("seed", 0)),
            "n_params": float(p.get("n_params", "nan")), "n_params_embedding": float(p.get("n_params_embedding", "nan")),
            **{k: p.get(k) for k in PARAMS[2:]}, **r.data.metrics,
        })
    base = ["run_id", "name", "status", *FACTORS, *PARAMS]
    df = pd.DataFrame(rows)
    metrics = sorted(({k for row in rows for k in row} | set(FINAL)) - set(base))
    return df.reindex(columns=base + metrics)


def cell_table(grid: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per cell over its seeds (finished runs only): mean and std of test AUC,
    mean rejections, parameters and training time, in the report's order."""
    from .report import cell_table as table

    return table(grid_runs(grid, experiment))


def histories(grid: str, metric: str = "val_auc", experiment: str | None = None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """``metric`` per step (epoch) for every cell run: columns run_id, name, the factors, step, value.
    ``runs``: the grid's ``grid_runs`` when already queried."""
    c = tracking.client()
    runs = grid_runs(grid, experiment) if runs is None else runs
    rows = []
    for r in runs.itertuples():
        for m in sorted(c.get_metric_history(r.run_id, metric), key=lambda m: m.step):
            rows.append({"run_id": r.run_id, "name": r.name, **{f: getattr(r, f) for f in FACTORS}, "step": m.step, "value": m.value})
    return pd.DataFrame(rows, columns=["run_id", "name", *FACTORS, "step", "value"])


def test_scores(run_id: str) -> dict[str, np.ndarray]:
    """A train run's ``eval/test_scores.npz``: ``labels`` (1 signal, 0 background), ``scores``
    (signal probability) and, where logged, ``process`` (original label 1-5), one per test event."""
    tracking.require_run(run_id, "train")
    with np.load(tracking.artifact_path(run_id, "eval/test_scores.npz")) as z:
        return {k: z[k] for k in z.files}
