"""The PhD summary of a grid, built from programmatic MLflow queries (the ``report`` step).

Queries the grid's child runs, their metric histories and their ``eval/test_scores.npz``,
then writes ``summary.html`` / ``.csv`` / ``.tex`` to ``dashboards/<grid>/`` and logs them
under ``report/`` in a run tagged ``step=report``. A partial grid gives a report that lists
what is missing. Tables and figures are ``thesis_mlflow.report``'s (MLflow-free).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from . import report as rep
from . import tracking, views
from .grid import load_grid
from .paths import ROOT

log = logging.getLogger(__name__)


def collect(grid: str) -> dict:
    """Everything the report needs, through the public query API (``thesis_mlflow.results``)."""
    from . import results

    c = tracking.client()
    exp = tracking.current_experiment_id()
    runs = results.grid_runs(grid, exp)
    parents = c.search_runs([exp], tracking.grid_filter(grid, "grid"), max_results=1)
    if not len(runs) and not parents:
        raise ValueError(f"no runs of grid {grid!r} in experiment {tracking.experiment_name()!r} at {tracking.tracking_uri()}")
    h = results.histories(grid, "val_auc", exp, runs=runs)
    hist = {name: list(zip(g["step"], g["value"], strict=True)) for name, g in h.groupby("name", sort=False)}
    hist.update({name: [] for name in runs["name"] if name not in hist})
    runs["epochs_done"] = runs["name"].map(lambda n: max((s for s, _ in hist[n]), default=0))
    scores = {}
    for r in runs[(runs["status"] == "FINISHED") & runs["test_auc"].notna()].itertuples():
        try:
            z = results.test_scores(r.run_id)
            scores[r.run_id] = {"labels": z["labels"].astype(np.int8), "scores": z["scores"].astype(np.float64)}
        except Exception as e:  # a finished run without scores is reported, not fatal
            log.warning("run %s: no eval/test_scores.npz (%s)", r.run_id, e)
    expected = _expected_cells(parents[0]) if parents else [
        {"tokenizer": r.tokenizer, "pooling": r.pooling, "met": r.met, "vect": r.vect, "seed": r.seed} for r in runs.itertuples()]
    binning = []
    for rid in sorted({x for x in runs["binning_run_id"].dropna() if x}):
        b = c.get_run(rid)
        binning.append({"run_id": rid, "vect": b.data.params.get("vect"), "phi": b.data.params.get("phi"), "fit_on": b.data.params.get("fit_on"),
                        **{k: v for k, v in b.data.metrics.items() if k.startswith("pop_")}})
    vq = {}
    for rid in sorted({x for x in runs["vqvae_run_id"].dropna() if x}):
        v = c.get_run(rid)
        vq[f"vect={v.data.params.get('vect')} K={v.data.params.get('codebook_size')}"] = {
            k: [(x.step, x.value) for x in sorted(c.get_metric_history(rid, k), key=lambda x: x.step)] for k in ("codebook_usage", "perplexity")}
    return {"runs": runs, "scores": scores, "histories": hist, "expected": expected, "binning": pd.DataFrame(binning), "vqvae": vq,
            "parent": parents[0] if parents else None}


def close_parent(data: dict, n_missing: int) -> None:
    """A parent left RUNNING by a Condor submission is closed once no cell is queued or running
    (the report is the DAG's final node): FINISHED when nothing is missing, else FAILED."""
    parent = data["parent"]
    if parent is None or parent.info.status != "RUNNING":
        return
    if data["runs"]["status"].isin(["RUNNING", "SCHEDULED"]).any():
        return
    tracking.client().set_terminated(parent.info.run_id, "FINISHED" if n_missing == 0 else "FAILED")


def _expected_cells(parent) -> list[dict]:
    """The cells the grid asked for, from the grid file the parent run logged."""
    c = tracking.client()
    try:
        files = [a.path for a in c.list_artifacts(parent.info.run_id, "grid")]
        path = tracking.artifact_path(parent.info.run_id, files[0])
        g = load_grid(path, parent.data.params.get("scale_name", parent.data.tags.get("grid.scale", "full")), base_dir=ROOT)
        return [{"tokenizer": x.tokenizer, "pooling": x.pooling, "met": x.met, "vect": x.vect, "seed": x.seed} for x in g.cells()]
    except Exception as e:  # an unreadable grid file: fall back to the runs that exist
        log.warning("could not read the grid file of parent %s (%s): missing cells are those never created", parent.info.run_id, e)
        return []


def build(grid: str, data: dict, n_boot: int = 200) -> rep.Report:
    runs, scores = data["runs"], data["scores"]
    cells = rep.cell_table(runs)
    r = rep.Report(grid=grid, cells=cells, effects=rep.main_effects(runs), pairs=rep.paired_comparisons(runs, scores, n_boot=n_boot),
                   missing=rep.missing_cells(data["expected"], runs))
    n_fin = int(((runs["status"] == "FINISHED") & runs["test_auc"].notna()).sum())
    r.notes.append(f"{n_fin} finished runs of {max(len(data['expected']), len(runs))} expected; tracking store {tracking.tracking_uri()}.")
    if len(cells):
        r.figures.append(rep.fig_auc_panels(cells))
        fin = runs[runs["run_id"].isin(scores)]
        best = fin.sort_values("test_auc", ascending=False).groupby("tokenizer").head(1)
        r.figures.append(rep.fig_roc({row.name: scores[row.run_id] for row in best.itertuples()}))
    r.figures.append(rep.fig_val_auc(data["histories"]))
    if len(data["binning"]):
        r.figures.append(rep.fig_binning(data["binning"]))
    if data["vqvae"]:
        r.figures.append(rep.fig_codebook(data["vqvae"]))
    return r


def run_report(grid: str, out_dir: str | None = None, n_boot: int = 200, echo: Callable[[str], None] = log.info) -> Path:
    t0 = time.perf_counter()
    data = collect(grid)
    t_query = time.perf_counter() - t0
    t1 = time.perf_counter()
    r = build(grid, data, n_boot)
    out = Path(out_dir) if out_dir else ROOT / "dashboards" / grid
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.html": r.html(), "summary.csv": r.csv(), "summary.tex": r.tex()}
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    t_build = time.perf_counter() - t1
    with tracking.step_run("report", run_name=f"report-{grid}", tags={"grid.name": grid}):
        tracking.log_params({"grid": grid, "n_runs": len(data["runs"]), "n_missing": len(r.missing), "n_bootstrap": n_boot})
        for name in files:
            tracking.log_artifact(out / name, "report")
        tracking.log_metrics({"query_seconds": t_query, "build_seconds": t_build})
    close_parent(data, len(r.missing))
    echo(f"report of {grid}: {len(r.cells)} cells, {len(r.missing)} missing; queries {t_query:.1f} s, build {t_build:.1f} s")
    echo(f"  {out / 'summary.html'}")
    if len(data["runs"]):
        views.echo_views(grid, tracking.current_experiment_id(), echo)
    return out
