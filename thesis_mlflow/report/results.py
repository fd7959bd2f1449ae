"""The study as tables, for notebooks and scripts: programmatic MLflow queries of a grid.

    from thesis_mlflow.report import results
    runs = results.grid_runs("binning_vs_direct-demo")          # one row per cell run
    cells = results.cell_table("binning_vs_direct-demo")        # mean and spread over seeds
    hist = results.histories("binning_vs_direct-demo", "val_auc")  # one row per (run, epoch)
    s = results.test_scores(runs.run_id[0])                     # labels, scores, process per test event
    scores = results.scores_of(runs)                            # the same for every finished run (parallel, cached)

The tracking server and experiment are the project's (``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``) unless ``experiment`` is given. Every query pages through
``MlflowClient.search_runs``, so grids of any size come back whole.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from thesis_mlflow import spec
from thesis_mlflow.errors import BadInput
from thesis_mlflow.secret import mask
from thesis_mlflow.tracking import provenance, queries
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import finished_rows

FACTORS = [*spec.FACTORS, "seed"]  # a run's coordinates in the grid
PARAMS = ["n_params", "n_params_embedding", "binning_run_id", "vqvae_run_id", "step_mode", "rng_stream", "rng_scheme"]
FINAL = ["test_auc", "test_rej_at_eff50", "test_rej_at_eff70", "train_seconds"]  # columns even before any run has them
PAGE = 1000


def _experiment_ids(experiment: str | None) -> list[str]:
    name = experiment or tracking.experiment_name()
    exp = queries.experiment_by_name_or_id(name)
    if exp is None:
        raise BadInput(f"no experiment {name!r} at {mask(tracking.tracking_uri())}")
    return [exp.experiment_id]


def search_all(filter_string: str, experiment: str | None = None, order_by: list[str] | None = None) -> list:
    """Every run matching ``filter_string``, page by page."""
    return queries.search_all(_experiment_ids(experiment), filter_string, order_by, page=PAGE)


def grid_runs(grid: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per cell run of ``grid`` (its ``grid.name`` tag): the factors, status, run id,
    the bookkeeping params and every final metric (one column each)."""
    rows = []
    for r in search_all(queries.grid_filter(grid), experiment, order_by=["attributes.start_time ASC"]):
        p = r.data.params
        rows.append({
            "run_id": r.info.run_id, "name": r.info.run_name or r.data.tags.get("mlflow.runName", r.info.run_id[:8]),
            "status": r.info.status, "tokenizer": p.get("tokenizer"), "pooling": p.get("pooling"),
            "met": str(p.get("met")).lower() == "true", "vect": int(p.get("vect", 0)), "seed": int(p.get("seed", 0)),
            "n_params": float(p.get("n_params", "nan")), "n_params_embedding": float(p.get("n_params_embedding", "nan")),
            **{k: p.get(k) for k in PARAMS[2:]}, **r.data.metrics,
            "code": provenance.code_label(r.data.tags),
        })
    base = ["run_id", "name", "status", *FACTORS, *PARAMS, "code"]
    df = pd.DataFrame(rows)
    metrics = sorted(({k for row in rows for k in row} | set(FINAL)) - set(base))
    return df.reindex(columns=base + metrics)


def cell_table(grid: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per cell over its seeds (finished runs only): mean and std of test AUC,
    mean rejections, parameters and training time, in the report's order."""
    from thesis_mlflow.report.tables import cell_table as table  # lazy: plotly, only for cell_table (the query API starts light)

    return table(grid_runs(grid, experiment))


def histories(grid: str, metric: str = "val_auc", experiment: str | None = None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """``metric`` per step (epoch) for every cell run: columns run_id, name, the factors, step, value.
    ``runs``: the grid's ``grid_runs`` when already queried."""
    runs = grid_runs(grid, experiment) if runs is None else runs
    with ThreadPoolExecutor(FETCH_THREADS) as pool:  # one request per run: in parallel
        hists = list(pool.map(lambda rid: queries.metric_history(rid, metric), runs["run_id"]))
    rows = []
    for r, hist in zip(runs.itertuples(), hists, strict=True):
        for step, value in hist:
            rows.append({"run_id": r.run_id, "name": r.name, **{f: getattr(r, f) for f in FACTORS}, "step": step, "value": value})
    return pd.DataFrame(rows, columns=["run_id", "name", *FACTORS, "step", "value"])


SCORES = "eval/test_scores.npz"
FETCH_THREADS = 8  # downloads at once: ~0.35 s each through the server, mostly waiting


def cache_dir() -> Path:
    """Where finished runs' test scores are kept (``THESIS_MLFLOW_CACHE`` or ~/.cache/thesis-mlflow),
    private to the user: a finished run's artifacts never change, so a copy is as good as the original."""
    base = Path(os.environ.get("THESIS_MLFLOW_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thesis-mlflow")
    d = base / "scores"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _fetch_scores(run_id: str, finished: bool) -> dict[str, np.ndarray]:
    """One run's scores: from the cache when the run is finished and was fetched before."""
    cached = cache_dir() / f"{run_id}.npz"
    if finished and cached.is_file() and cached.stat().st_uid == os.getuid():
        return _load(cached)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="thesis-scores-") as tmp:
        local = queries.artifact_path(run_id, SCORES, dst=tmp)
        out = _load(local)
        if finished:
            import shutil

            part = cached.with_name(f".{run_id}.{os.getpid()}.{threading.get_ident()}.part")
            shutil.copyfile(local, part)  # a copy: the temporary folder may be on another filesystem than the cache
            part.replace(cached)  # atomic: a reader never sees half a file
    return out


def test_scores(run_id: str) -> dict[str, np.ndarray]:
    """A train run's ``eval/test_scores.npz``: ``labels`` (1 signal, 0 background), ``scores``
    (signal probability) and, where logged, ``process`` (original label 1-5), one per test event."""
    run = queries.require_run(run_id, "train")
    return _fetch_scores(run_id, run.info.status == "FINISHED")


def scores_of(runs: pd.DataFrame, on_error=None) -> dict[str, dict[str, np.ndarray]]:
    """Test scores of every finished run of ``runs`` (a ``grid_runs`` table) that has them,
    fetched in parallel and cached by run id. A finished run without scores is left out and
    passed to ``on_error(run_id, exception)`` when given."""
    fin = runs[finished_rows(runs)]["run_id"].tolist()

    def one(rid: str):
        try:
            return rid, _fetch_scores(rid, True), None
        except Exception as e:  # noqa: BLE001  (reported, not fatal: the report lists what it lacks)
            return rid, None, e

    out = {}
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for rid, sc, err in pool.map(one, fin):
            if sc is not None:
                out[rid] = sc
            elif on_error:
                on_error(rid, err)
    return out
