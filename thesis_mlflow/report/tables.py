"""The summary's tables, from plain tables (built by ``report.build`` from MLflow queries): the
factorial effects with their intervals and verdicts, the per-cell table with seed-aware 95%
intervals, the tokenizer and per-background tables, the overtraining check and the missing cells.
The statistics are ``report.stats``'s; this module arranges them.

In a notebook::

    from thesis_mlflow.report import results, tables
    runs = results.grid_runs("binning_vs_direct")
    scores = results.scores_of(runs)                    # run id -> labels, scores, process
    effects = tables.effects(runs, scores, n_boot=1000, seed=0)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thesis_mlflow.learn import metrics
from thesis_mlflow.report import equivalence, stats
from thesis_mlflow.spec import LEVELS
from thesis_mlflow.tracking.done import finished_rows

CELL = list(stats.FACTORS)


FACTOR_ORDER = {k: list(v) for k, v in LEVELS.items()}


N_BOOT = 1000  # resamples of the test events: the test-set part of each variance stable to a few percent


def effects(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = N_BOOT, seed: int = 0, margin: float = equivalence.MARGIN,
            method: str = "delong") -> pd.DataFrame:
    """The factorial effects of a grid, one row per comparison (``effects.csv``).

    ``runs``: a table like ``thesis_mlflow.report.results.grid_runs`` (columns tokenizer, pooling, met,
    vect, seed, run_id, status, test_auc); ``scores``: run id -> ``{"labels", "scores",
    "process"}`` arrays (``results.test_scores`` / ``results.scores_of``). Rows: every pair of
    levels of every factor (main effects), the tokenizer pairs crossed with the level pairs of
    pooling, MET and vect (interactions, as differences of differences), and the tokenizer pairs
    against each background process alone. ``estimate`` is the mean matched difference of test
    AUC (level_a - level_b); ``ci_low``/``ci_high`` a 95% t interval (seed spread plus test-set
    noise, ``stats.t_interval``); ``p_value`` the same t statistic's; ``p_holm`` Holm over every
    row (the family).
    ``n_boot`` resamples, ``seed`` of the random generator (same inputs and seed, same table).
    """
    return stats.effects(runs, scores, n_boot=n_boot, seed=seed, margin=margin, method=method)


def cell_table(runs: pd.DataFrame, scores: dict[str, dict] | None = None, n_boot: int = N_BOOT, seed: int = 0,
               method: str = "delong") -> pd.DataFrame:
    """One row per cell over seeds (finished runs only count); with ``scores``, the 95%
    t interval of the cell's mean test AUC (``auc_ci_low``/``auc_ci_high``; seeds and test events)."""
    fin = runs[finished_rows(runs)]
    g = fin.groupby(CELL, dropna=False)
    t = pd.DataFrame({
        "n_seeds": g["test_auc"].count(),
        "test_auc_mean": g["test_auc"].mean(),
        "test_auc_std": g["test_auc"].std(ddof=1),
        "rej50_mean": g["test_rej_at_eff50"].mean(),
        "rej70_mean": g["test_rej_at_eff70"].mean(),
        "n_params": g["n_params"].first(),
        "n_params_embedding": g["n_params_embedding"].first(),
        "train_minutes_mean": g["train_seconds"].mean() / 60,
    }).reset_index()
    for k in ("n_params", "n_params_embedding"):
        t[k] = t[k].astype("Int64")  # counts, not measurements
    t["auc_ci_low"], t["auc_ci_high"] = np.nan, np.nan
    if scores:
        ci = stats.cell_intervals(runs, scores, n_boot=n_boot, seed=seed, method=method)
        if len(ci):
            t = t.drop(columns=["auc_ci_low", "auc_ci_high"]).merge(
                ci[[*CELL, "ci_low", "ci_high"]].rename(columns={"ci_low": "auc_ci_low", "ci_high": "auc_ci_high"}), on=CELL, how="left")
    return sort_cells(t)


def sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    key = {f: (lambda s, f=f: s.map(lambda v: FACTOR_ORDER[f].index(v) if v in FACTOR_ORDER[f] else 99)) for f in CELL}
    cols = [c for c in CELL if c in df.columns]
    return df.sort_values(cols, key=lambda s: key[s.name](s)).reset_index(drop=True) if len(df) else df


def tokenizer_table(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = N_BOOT, seed: int = 0, method: str = "delong") -> pd.DataFrame:
    """Mean test AUC of each tokenizer over all its cells and seeds, with its 95% interval, and
    its models' parameter counts (smallest and largest over its cells: pooling and MET change
    them a little; ``params_embedding``: the share in embedding tables)."""
    t = stats.cell_intervals(runs, scores, by=("tokenizer",), n_boot=n_boot, seed=seed, method=method)
    if len(t) and "n_params" in runs:
        total = runs["n_params"] + runs["n_params_embedding"].fillna(0)
        g = runs.assign(total=total).groupby("tokenizer")
        t["params_min"] = t["tokenizer"].map(g["total"].min()).astype("Int64")
        t["params_max"] = t["tokenizer"].map(g["total"].max()).astype("Int64")
        t["params_embedding"] = t["tokenizer"].map(g["n_params_embedding"].max()).astype("Int64")
    return sort_cells(t)


def background_table(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = N_BOOT, seed: int = 0, method: str = "delong") -> pd.DataFrame:
    """Per tokenizer and background process: AUC of signal against that background alone (mean
    over cells and seeds, 95% t interval) and mean background rejection 1/eps_B at
    signal efficiency 30 / 50 / 70%, all computed from the stored test scores."""
    fin = stats.finished(runs, scores)
    fin = fin[~fin["run_id"].isin(stats.without_process(fin, scores))]  # older score files: no per-background figures (a note says so)
    # every run's figures once (each holds all backgrounds), not once per background
    figures = {i: metrics.test_metrics(scores[i]["labels"], scores[i]["scores"], scores[i]["process"]) for i in fin["run_id"]}
    rows = []
    for m in stats.available_metrics(fin, scores)[1:]:
        bkg = m.removeprefix("auc_vs_")
        ci = stats.cell_intervals(fin, scores, metric=m, by=("tokenizer",), n_boot=n_boot, seed=seed, method=method)
        for r in ci.itertuples():
            sub = fin[fin["tokenizer"] == r.tokenizer]
            rej = {}
            for e in (30, 50, 70):
                iv = _seed_interval(sub, np.array([figures[i][f"test_rej{e}_vs_{bkg}"] for i in sub["run_id"]]))
                rej |= {f"rej{e}_mean": iv.estimate, f"rej{e}_ci_low": iv.ci_low, f"rej{e}_ci_high": iv.ci_high}
            rows.append({"tokenizer": r.tokenizer, "background": bkg, "auc_mean": r.mean, "auc_ci_low": r.ci_low, "auc_ci_high": r.ci_high,
                         **rej, "n_runs": r.n_runs})
    return pd.DataFrame(rows, columns=["tokenizer", "background", "auc_mean", "auc_ci_low", "auc_ci_high",
                                       *(f"rej{e}_{k}" for e in (30, 50, 70) for k in ("mean", "ci_low", "ci_high")), "n_runs"])


def _seed_interval(runs: pd.DataFrame, values: np.ndarray) -> stats.Interval:
    """Mean over cells of the mean over seeds of per-run ``values``, with its t interval from the
    seed spread within cells (a rejection has no paired test-set resampling here)."""
    cell = runs[CELL].astype(str).agg("|".join, axis=1)
    ids = {c: i for i, c in enumerate(dict.fromkeys(cell))}
    units = stats.Units(np.eye(len(runs)), cell.map(ids).to_numpy(), runs["seed"].to_numpy())
    return stats.t_interval(units, values.astype(float), np.zeros((len(values), len(values))))


OVERTRAINING_GAP = 0.02  # train AUC above test AUC by more than this flags a run (test-set noise alone is ~0.003 at 30k events)


def overtraining(runs: pd.DataFrame, gap: float = OVERTRAINING_GAP) -> pd.DataFrame:
    """Per finished run with both figures: AUC on its own training events against the test AUC,
    ``flagged`` where the gap exceeds ``gap`` (largest gaps first). Runs logged before
    ``train_auc`` was recorded are absent."""
    cols = ["name", *CELL, "seed", "train_auc", "test_auc", "gap", "flagged"]
    if "train_auc" not in runs:
        return pd.DataFrame(columns=cols)
    fin = runs[finished_rows(runs)].dropna(subset=["train_auc"]).copy()
    fin["gap"] = fin["train_auc"] - fin["test_auc"]
    fin["flagged"] = fin["gap"] > gap
    return fin.sort_values("gap", ascending=False)[cols].reset_index(drop=True)


def missing_cells(expected: list[dict], runs: pd.DataFrame) -> pd.DataFrame:
    """Expected cells (incl. seed) without a finished run, with what is known about them."""
    have = {}
    for r in runs.itertuples():
        have[(r.tokenizer, r.pooling, r.met, r.vect, r.seed)] = r
    rows = []
    for e in expected:
        k = (e["tokenizer"], e["pooling"], e["met"], e["vect"], e["seed"])
        r = have.get(k)
        if r is None:
            rows.append({**e, "state": "NOT STARTED", "epochs_done": 0})
        elif r.status != "FINISHED" or pd.isna(r.test_auc):
            rows.append({**e, "state": r.status, "epochs_done": int(r.epochs_done) if not pd.isna(r.epochs_done) else 0})
    return pd.DataFrame(rows, columns=[*CELL, "seed", "state", "epochs_done"])
