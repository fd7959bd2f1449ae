"""Curves over seeds, not best runs: rejection against efficiency, score distributions, calibration.

The ROC figure used to show the best run of each tokenizer, picked on the test set (a selection
bias), from different cells per tokenizer. Here every curve is an average over seeds and over
the *matched* cells (the pooling / MET / vect cells every compared tokenizer has), with a band:

- rejection 1/eps_B at each signal efficiency, averaged in log10 (a geometric mean: rejections
  span decades), mean over matched cells of the mean over seeds; the band is a 95% t interval
  of that mean from the seed spread within cells (Satterthwaite degrees of freedom, as
  ``stats.t_interval``; the test-set noise is common to every curve and not in the band);
- score distributions per process and the calibration curve (fraction of signal against mean
  score per score bin) over every test event of every run of a tokenizer in the matched cells.

numpy and pandas only; the report (``thesis_mlflow.report.charts``) draws them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from thesis_mlflow.learn.metrics import BACKGROUNDS, PROCESSES, roc_curve
from thesis_mlflow.spec import FACTORS, TOKENIZERS

EFF = np.round(np.linspace(0.1, 0.9, 81), 3)  # signal efficiencies of the rejection curves (0.3 / 0.5 / 0.7 among them)
CELL = [f for f in FACTORS if f != "tokenizer"]


def matched(fin: pd.DataFrame) -> pd.DataFrame:
    """The runs of the cells (pooling, MET, vect) that every tokenizer present has."""
    toks = fin["tokenizer"].nunique()
    have = fin.groupby(CELL)["tokenizer"].nunique()
    keep = have[have == toks].index
    return fin.set_index(CELL).loc[keep].reset_index() if len(keep) else fin.iloc[:0]


def log_rejection(labels: np.ndarray, scores: np.ndarray, process: np.ndarray | None = None, background: str | None = None,
                  eff: np.ndarray = EFF) -> np.ndarray:
    """log10(1/eps_B) at each signal efficiency of ``eff`` (signal against ``background`` alone,
    or all backgrounds); inf where no background passes."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if background is not None:
        code = {v: k for k, v in BACKGROUNDS.items()}[background]
        keep = y | (np.asarray(process) == code)
        y, s = y[keep], s[keep]
    fpr, tpr, _ = roc_curve(y, s)
    f = np.interp(eff, tpr, fpr)
    with np.errstate(divide="ignore"):
        return -np.log10(f)


def _band(values: dict[tuple, np.ndarray], alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over cells of the mean over seeds, with its t interval from the within-cell spread.
    ``values``: cell -> (n_seeds, E)."""
    C = len(values)
    with np.errstate(invalid="ignore"):  # inf + -inf (one cell's ratio infinite each way at an efficiency): NaN, no point there
        means = np.mean([v.mean(0) for v in values.values()], axis=0)
    parts, dfs = [], []
    for v in values.values():
        if len(v) > 1:
            with np.errstate(invalid="ignore"):  # inf - inf where no background is left at an efficiency: no band there
                parts.append(v.var(0, ddof=1) / (len(v) * C**2))
            dfs.append(len(v) - 1)
    if not parts:
        nan = np.full_like(means, np.nan)
        return means, nan, nan
    var = np.sum(parts, axis=0)
    denom = np.sum([p**2 / d for p, d in zip(parts, dfs, strict=True)], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(denom > 0, var**2 / np.where(denom > 0, denom, 1), np.inf)
        q = np.where(np.isfinite(df), sps.t.ppf(1 - alpha / 2, np.where(np.isfinite(df), df, 1)), sps.norm.ppf(1 - alpha / 2))
    half = q * np.sqrt(var)
    return means, means - half, means + half


def _pow10(x: np.ndarray) -> np.ndarray:
    """10**x where x is finite, NaN elsewhere (a band without seeds, a ratio without the reference)."""
    out = np.full(len(x), np.nan)
    ok = np.isfinite(x)
    out[ok] = 10.0 ** x[ok]
    return out


def _log_rejections(m: pd.DataFrame, scores: dict[str, dict], background: str | None) -> dict[str, np.ndarray]:
    """run id -> log10 rejection at ``EFF`` (each run's curve once, for the bands and the ratios)."""
    return {r: log_rejection(scores[r]["labels"], scores[r]["scores"], scores[r].get("process"), background) for r in m["run_id"]}


def rejection_bands(fin: pd.DataFrame, scores: dict[str, dict], background: str | None = None, alpha: float = 0.05,
                    reference: str = "direct") -> pd.DataFrame:
    """Per tokenizer and efficiency: ``rejection`` (geometric mean over seeds and matched cells),
    ``lo`` / ``hi`` (95% band from the seed spread), ``ratio`` / ``ratio_lo`` / ``ratio_hi``
    (against ``reference`` on the same cells and seeds: the geometric mean of each matched pair's
    ratio, with its band from the spread of those ratios; NaN without the reference),
    ``n_cells``, ``n_runs``. Runs without process labels are left out of a per-background
    curve; curves with infinite rejection (no background left) are cut where they become infinite."""
    m = matched(fin)
    if background is not None:
        m = m[[scores[r].get("process") is not None for r in m["run_id"]]]
    logs = _log_rejections(m, scores, background)
    own = m[m["tokenizer"] == reference]
    ref = {(*cell, s): logs[r] for cell, s, r in zip(own[CELL].itertuples(index=False), own["seed"], own["run_id"], strict=True)}
    rows = []
    for tok in [t for t in TOKENIZERS if t in set(m["tokenizer"])]:
        sub = m[m["tokenizer"] == tok]
        vals, ratios = {}, {}
        for cell, g in sub.groupby(CELL):
            vals[cell] = np.array([logs[r] for r in g["run_id"]])
            with np.errstate(invalid="ignore"):  # inf - inf where neither curve has a background left
                pairs = [logs[r] - ref[(*cell, s)] for r, s in zip(g["run_id"], g["seed"], strict=True) if (*cell, s) in ref]
            if pairs:
                ratios[cell] = np.array(pairs)
        mean, *rest = _band(vals, alpha)
        rest += _band(ratios, alpha) if ratios else [np.full(len(EFF), np.nan)] * 3
        rej, lo, hi, ratio, r_lo, r_hi = map(_pow10, (mean, *rest))
        for k in np.flatnonzero(np.isfinite(mean)):  # cut where the curve becomes infinite
            rows.append({"tokenizer": tok, "background": background or "all", "eff": float(EFF[k]), "rejection": rej[k], "lo": lo[k],
                         "hi": hi[k], "ratio": ratio[k], "ratio_lo": r_lo[k], "ratio_hi": r_hi[k], "n_cells": len(vals), "n_runs": len(sub)})
    return pd.DataFrame(rows, columns=["tokenizer", "background", "eff", "rejection", "lo", "hi", "ratio", "ratio_lo", "ratio_hi",
                                       "n_cells", "n_runs"])


def learning_bands(fin: pd.DataFrame, histories: dict[str, list[tuple[int, float]]], alpha: float = 0.05) -> pd.DataFrame:
    """Validation AUC against epoch per tokenizer: mean over the matched cells of the mean over
    seeds, with a 95% band from the seed spread within cells (as ``rejection_bands``). The view
    MLflow's UI cannot draw (its run groups show min / mean / max of raw runs, unmatched). Epochs
    count where every run of the tokenizer's matched cells has logged them (a run still
    training shortens the curve rather than bending it). ``fin`` needs ``name`` (the run name
    its history is filed under)."""
    m = matched(fin)
    rows = []
    for tok in [t for t in TOKENIZERS if t in set(m["tokenizer"])]:
        sub = m[m["tokenizer"] == tok]
        series = {r: dict(histories.get(n) or []) for r, n in zip(sub["run_id"], sub["name"], strict=True)}
        common = sorted(set.intersection(*(set(h) for h in series.values()))) if series else []
        if not common:
            continue
        vals = {cell: np.array([[series[r][e] for e in common] for r in g["run_id"]]) for cell, g in sub.groupby(CELL)}
        mean, lo, hi = _band(vals, alpha)
        rows += [{"tokenizer": tok, "epoch": int(e), "val_auc": float(a), "lo": float(b), "hi": float(c), "n_cells": len(vals),
                  "n_runs": len(sub)} for e, a, b, c in zip(common, mean, lo, hi, strict=True)]
    return pd.DataFrame(rows, columns=["tokenizer", "epoch", "val_auc", "lo", "hi", "n_cells", "n_runs"])


def score_histograms(fin: pd.DataFrame, scores: dict[str, dict], bins: int = 20) -> pd.DataFrame:
    """Per tokenizer and process: the density of the signal score in ``bins`` bins over [0, 1],
    all test events of every run in the matched cells."""
    m = matched(fin)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for tok in [t for t in TOKENIZERS if t in set(m["tokenizer"])]:
        ids = [r for r in m.loc[m["tokenizer"] == tok, "run_id"] if scores[r].get("process") is not None]
        if not ids:
            continue
        s = np.concatenate([np.asarray(scores[r]["scores"], dtype=float) for r in ids])
        p = np.concatenate([np.asarray(scores[r]["process"]) for r in ids])
        for code, name in PROCESSES.items():
            if (p == code).any():
                h, _ = np.histogram(s[p == code], bins=edges, density=True)
                rows += [{"tokenizer": tok, "process": name, "lo": lo, "hi": hi, "density": d} for lo, hi, d in zip(edges[:-1], edges[1:], h, strict=True)]
    return pd.DataFrame(rows, columns=["tokenizer", "process", "lo", "hi", "density"])


def calibration(fin: pd.DataFrame, scores: dict[str, dict], bins: int = 10) -> pd.DataFrame:
    """Per tokenizer and score bin: mean score, fraction of signal, events (matched cells, all
    runs). A calibrated classifier lies on the diagonal at the training class balance."""
    m = matched(fin)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for tok in [t for t in TOKENIZERS if t in set(m["tokenizer"])]:
        ids = m.loc[m["tokenizer"] == tok, "run_id"]
        s = np.concatenate([np.asarray(scores[r]["scores"], dtype=float) for r in ids])
        y = np.concatenate([np.asarray(scores[r]["labels"]) for r in ids]).astype(bool)
        k = np.clip(np.digitize(s, edges) - 1, 0, bins - 1)
        for b in range(bins):
            sel = k == b
            if sel.any():
                rows.append({"tokenizer": tok, "mean_score": float(s[sel].mean()), "signal_fraction": float(y[sel].mean()),
                             "events": int(sel.sum())})
    return pd.DataFrame(rows, columns=["tokenizer", "mean_score", "signal_fraction", "events"])
