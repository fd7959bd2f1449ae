"""The PhD summary of a grid, built from programmatic MLflow queries (the ``report`` step).

Queries the grid's child runs, their metric histories and their ``eval/test_scores.npz``
(in parallel, finished runs' scores cached by run id), then writes ``summary.html`` (with
``plotly.min.js`` beside it), ``summary.csv``, ``summary.tex``, ``effects.csv`` and the PDF
figures under ``figures/`` to ``dashboards/<grid>/`` and logs them under ``report/`` in a run
tagged ``step=report``. A partial grid gives a report that lists what is missing. Tables and
figures are ``thesis_mlflow.report``'s ``tables``, ``answer``, ``charts`` and ``documents`` (MLflow-free).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thesis_mlflow.errors import BadInput
from thesis_mlflow.grid import runs as gridruns
from thesis_mlflow.grid.quoting import check_name
from thesis_mlflow.paths import outputs
from thesis_mlflow.report import answer, charts, curves, documents, results, stats, tables
from thesis_mlflow.report.equivalence import MARGIN, check_margin
from thesis_mlflow.secret import mask
from thesis_mlflow.tracking import queries, views
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import finished_rows

log = logging.getLogger(__name__)


@dataclass
class ReportData:
    """Everything the report is built from, as MLflow holds it (``collect``)."""

    runs: pd.DataFrame  # one row per cell run (results.grid_runs), with epochs_done
    scores: dict[str, dict]  # run id -> its eval/test_scores.npz arrays (finished runs)
    histories: dict[str, list[tuple[int, float]]]  # run name -> (epoch, val_auc)
    expected: list[dict]  # the cells the grid asked for (factors and seed)
    binning: pd.DataFrame  # one row per binning run the cells used: settings and bin populations
    vqvae: dict[str, dict]  # "vect=4 K=512" -> codebook usage and perplexity per epoch
    parent: object | None  # the grid's parent run, if any
    margin: float | None = None  # the grid file's ``report.margin``, if it sets one


def collect(grid: str) -> ReportData:
    """Everything the report needs, through the public query API (``thesis_mlflow.report.results``)."""
    exp = tracking.current_experiment_id()
    runs = results.grid_runs(grid, exp)
    parent = gridruns.find_parent(grid, exp)
    if not len(runs) and parent is None:
        raise BadInput(f"no runs of grid {grid!r} in experiment {tracking.experiment_name()!r} at {mask(tracking.tracking_uri())}")
    h = results.histories(grid, "val_auc", exp, runs=runs)
    hist = {name: list(zip(g["step"], g["value"], strict=True)) for name, g in h.groupby("name", sort=False)}
    hist.update({name: [] for name in runs["name"] if name not in hist})
    runs["epochs_done"] = runs["name"].map(lambda n: max((s for s, _ in hist[n]), default=0))
    scores = results.scores_of(runs, on_error=lambda rid, e: log.warning("run %s: no eval/test_scores.npz (%s)", rid, e))
    g = gridruns.grid_of(parent) if parent is not None else None
    expected = _expected_cells(g) if parent is not None else [
        {"tokenizer": r.tokenizer, "pooling": r.pooling, "met": r.met, "vect": r.vect, "seed": r.seed} for r in runs.itertuples()]
    binning = []
    for rid in sorted({x for x in runs["binning_run_id"].dropna() if x}):
        b = queries.get_run(rid)
        binning.append({"run_id": rid, "vect": b.data.params.get("vect"), "phi": b.data.params.get("phi"), "fit_on": b.data.params.get("fit_on"),
                        **{k: v for k, v in b.data.metrics.items() if k.startswith("pop_")}})
    vq = {}
    for rid in sorted({x for x in runs["vqvae_run_id"].dropna() if x}):
        v = queries.get_run(rid)
        vq[f"vect={v.data.params.get('vect')} K={v.data.params.get('codebook_size')}"] = {
            k: queries.metric_history(rid, k) for k in ("codebook_usage", "perplexity")}
    return ReportData(runs=runs, scores=scores, histories=hist, expected=expected, binning=pd.DataFrame(binning), vqvae=vq, parent=parent,
                      margin=g.report.get("margin") if g is not None else None)


def _expected_cells(g) -> list[dict]:
    """The cells the grid asked for (its parent's grid file), as the report's dicts."""
    cells = g.cells() if g is not None else []  # unreadable grid file: missing cells are those never created
    return [{"tokenizer": x.tokenizer, "pooling": x.pooling, "met": x.met, "vect": x.vect, "seed": x.seed} for x in cells]


def build(grid: str, data: ReportData, n_boot: int = tables.N_BOOT, seed: int = 0, margin: float | None = None,
          method: str = "delong") -> documents.Report:
    """The report's tables, sentences and figures. ``margin``: the equivalence margin (default:
    the grid file's ``report.margin``, else ``equivalence.MARGIN``); ``method``: the test-set
    part of each interval (``delong``, or ``bootstrap`` with ``n_boot`` resamples from ``seed``)."""
    runs, scores = data.runs, data.scores
    where = "report --margin" if margin is not None else "the grid file's report.margin" if data.margin is not None else "the default"
    margin = check_margin(margin if margin is not None else data.margin if data.margin is not None else MARGIN)
    noise = {"n_boot": n_boot, "seed": seed, "method": method}
    cells = tables.cell_table(runs, scores, **noise)
    eff = tables.effects(runs, scores, margin=margin, **noise)
    toks = tables.tokenizer_table(runs, scores, **noise)
    cond = pd.DataFrame()
    rank = answer.ranking(eff) if len(eff) else pd.DataFrame()
    if len(rank) > 1:  # the top two by matched contrasts, not by their unmatched means
        best, runner = rank["tokenizer"].iloc[:2]
        cond = stats.conditional_effects(runs, scores, best, runner, **noise)
    r = documents.Report(grid=grid, cells=cells, effects=eff, missing=tables.missing_cells(data.expected, runs), tokenizers=toks,
                   backgrounds=tables.background_table(runs, scores, **noise), conditional=cond)
    r.omnibus, r.components = stats.omnibus(runs, scores, **noise)
    if len(eff):
        eff["in_seed_sd"] = eff["estimate"] / r.components["within_sd"] if np.isfinite(r.components.get("within_sd", np.nan)) else np.nan
    r.margin = margin
    r.checks = tables.overtraining(runs)
    fin = stats.finished(runs, scores)
    no_stream = int(fin["rng_stream"].isna().sum()) if "rng_stream" in fin else len(fin)
    r.answer = answer.answer(toks, eff, cond, streams=(no_stream, len(fin)))
    at = next((i for i, line in enumerate(r.answer) if line.startswith("Method:")), len(r.answer))
    extra = answer.omnibus_sentences(r.omnibus, r.components)[:1]
    flagged = r.checks[r.checks["flagged"]] if len(r.checks) else r.checks
    if len(flagged):
        extra.append(f"Overtraining check: {len(flagged)} of {len(r.checks)} runs score more than {tables.OVERTRAINING_GAP} higher AUC on "
                     f"their training events than on the test events (largest: {flagged['name'].iloc[0]}, {flagged['gap'].iloc[0]:+.4f}).")
    r.answer[at:at] = extra
    versions = runs["code"].value_counts() if "code" in runs else pd.Series(dtype=int)
    if len(versions):
        listed = ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in versions.items())
        r.notes.append(f"Code versions of the grid's runs: {listed}.")
        if len(versions) > 1:
            r.answer.append(f"Caution: the runs of this grid were made by {len(versions)} versions of the code ({listed}); "
                            "a comparison across versions mixes code changes with the factors.")
    r.notes.append("Event weights: none are used. Every event counts once in training (unweighted cross-entropy), in validation and "
                   "in every test figure of merit; the input format carries no event weights.")
    old = stats.without_process(fin, scores)
    if old:
        r.notes.append(f"{len(old)} of {len(fin)} runs stored no process labels with their test scores (logged before per-background "
                       f"figures): they count in the overall AUC and are left out of the per-background tables.")
    n_fin = int(finished_rows(runs).sum())
    how = "DeLong's closed form" if method == "delong" else f"{n_boot} paired bootstrap resamples (seed {seed})"
    r.notes.append(f"{n_fin} finished runs of {max(len(data.expected), len(runs))} expected, {len(scores)} with test scores; "
                   f"test-set noise by {how}; equivalence margin ±{margin:g} AUC ({where}); tracking store {mask(tracking.tracking_uri())}.")
    if len(cells):
        r.figures.append(charts.fig_auc_panels(cells))
    if len(eff):
        r.forests = [charts.fig_forest(eff, margin, primary=True)] + (
            [charts.fig_forest(eff, margin, primary=False)] if ((eff["family"] != "primary") & (eff["kind"] != "background")).any() else [])
    if len(r.backgrounds):
        r.figures.append(charts.fig_backgrounds(r.backgrounds))
    if len(fin):
        r.rejection = rejection_bands(fin, scores)
        r.figures.append(charts.fig_rejection(r.rejection))
        r.learning = curves.learning_bands(fin, data.histories)
        if len(r.learning):
            r.figures.append(charts.fig_learning(r.learning))
        r.figures.append(charts.fig_scores(curves.score_histograms(fin, scores), curves.calibration(fin, scores)))
    if len(data.binning):
        r.figures.append(charts.fig_binning(data.binning))
    if data.vqvae:
        r.figures.append(charts.fig_codebook(data.vqvae))
    return r


def rejection_bands(fin: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Rejection curves over seeds and matched cells: all backgrounds, then each one alone."""
    bands = [curves.rejection_bands(fin, scores)]
    bands += [curves.rejection_bands(fin, scores, m.removeprefix("auc_vs_")) for m in stats.available_metrics(fin, scores)[1:]]
    return pd.concat([b for b in bands if len(b)], ignore_index=True) if any(len(b) for b in bands) else bands[0]


def write_pdfs(r: documents.Report, out: Path) -> list[Path]:
    """The thesis figures (vector PDF, mplhep style) under ``out/figures``."""
    from thesis_mlflow.report import figures as tf  # lazy: matplotlib, only when the PDFs are written

    files = []
    if len(r.cells):
        files.append(tf.auc_by_cell(r.cells, r.grid, out / "figures" / "auc_by_cell.pdf"))
    if len(r.effects):
        files.append(tf.effects_forest(r.effects, r.grid, out / "figures" / "effects.pdf", r.margin))
    if len(r.backgrounds):
        files.append(tf.backgrounds(r.backgrounds, r.grid, out / "figures" / "backgrounds.pdf"))
    if len(r.rejection):  # the page's curves against all backgrounds, not computed again
        files.append(tf.rejection(r.rejection[r.rejection["background"] == "all"], r.grid, out / "figures" / "rejection.pdf"))
    if len(r.learning):
        files.append(tf.learning(r.learning, r.grid, out / "figures" / "val_auc.pdf"))
    return files


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_report(grid: str, out_dir: str | None = None, n_boot: int = tables.N_BOOT, echo: Callable[[str], None] = log.info,
               seed: int = 0, margin: float | None = None, method: str = "delong", margin_given: str | None = None) -> Path:
    """Build, write and log the report of ``grid``. ``margin``: the equivalence margin asked for
    (None: the grid file's, else the default); ``margin_given``: the option as typed (``grid`` or
    a number), logged as param ``margin`` exactly as ``mlflow run -P margin=...`` logs it; the
    margin used is param ``equivalence_margin`` (one name, one value: a re-logged ``margin`` with
    another value is refused by MLflow)."""
    check_name(grid, "report --grid")  # it names the report's folder: never a path outside dashboards/
    if margin is not None:
        check_margin(margin)  # before any query
    t0 = time.perf_counter()
    data = collect(grid)
    t_query = time.perf_counter() - t0
    t1 = time.perf_counter()
    r = build(grid, data, n_boot, seed, margin, method)
    out = Path(out_dir) if out_dir else outputs() / "dashboards" / grid
    out.mkdir(parents=True, exist_ok=True)
    import plotly.offline

    files = {"summary.html": r.html(), "plotly.min.js": plotly.offline.get_plotlyjs(), "summary.csv": r.csv(), "summary.tex": r.tex(),
             "effects.csv": r.effects_csv()}
    for name, text in files.items():
        _write(out / name, text)
    pdfs = write_pdfs(r, out)
    t_build = time.perf_counter() - t1
    with tracking.step_run("report", run_name=f"report-{grid}", tags={"grid.name": grid}):
        tracking.log_params({"grid": grid, "n_runs": len(data.runs), "n_missing": len(r.missing), "test_noise": method,
                             "margin": margin_given if margin_given is not None else ("grid" if margin is None else str(margin)),
                             "equivalence_margin": r.margin,
                             **({"n_bootstrap": n_boot, "bootstrap_seed": seed} if method == "bootstrap" else {})})
        for name in files:
            tracking.log_artifact(out / name, "report")
        for pdf in pdfs:
            tracking.log_artifact(pdf, "report/figures")
        tracking.log_metrics({"query_seconds": t_query, "build_seconds": t_build})
    gridruns.close_parent(data, len(r.missing))
    echo(f"report of {grid}: {len(r.cells)} cells, {len(r.missing)} missing; queries {t_query:.1f} s, build {t_build:.1f} s")
    head = next((i for i, line in enumerate(r.answer) if ": ΔAUC = " in line), 2)  # the headline and the verdicts
    for line in r.answer[: max(head, 1)]:
        echo(f"  {line}")
    echo(f"  {out / 'summary.html'}  (effects.csv, summary.tex, figures/*.pdf beside it)")
    if len(data.runs):
        exp_id = tracking.current_experiment_id()
        echo(queries.ui_hint(exp_id))
        views.echo_views(grid, exp_id, echo)
    return out
