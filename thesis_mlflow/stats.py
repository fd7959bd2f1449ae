"""Seed-aware statistics over a grid of runs (numpy only; no MLflow).

The model of a run's test AUC: the cell's true AUC + training noise (the seed: init, data
order, dropout) + test-set noise (the finite test sample, shared by every run because they
all score the same test events). A comparison is a *matched contrast*: runs that differ in
one factor (or, for an interaction, in two) and agree on every other factor and the seed.

- Interval: a two-level bootstrap (rliable's stratified bootstrap plus the test events).
  Each resample draws test-event multiplicities, applied to *every* run at once (paired: the
  same events are scored by both runs of a pair), and, within each stratum (the other
  factors), draws the seeds with replacement. Resampling n seeds underestimates their
  variance by (n-1)/n, which with 3 seeds matters, so the seed-level deviation is expanded by
  sqrt(n/(n-1)) (Hesterberg's expanded bootstrap). With one seed the interval covers the
  test-set noise only; the callers say so.
- Test: a paired sign-flip (permutation) test on the matched units, conditional on the test
  set: under "no difference" the two runs of a unit are exchangeable, so each unit's
  difference is as likely to have either sign.
- Family: Holm's step-down correction over all tests of one table.

Validated by simulation in ``tests/test_stats.py`` (coverage, false positives, power).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BadSetting
from .metrics import BACKGROUNDS
from .spec import FACTORS

# contrasts read "later level minus earlier level": binned - direct, max - cls, met in - out, 5 - 4
CONTRAST_ORDER = {"tokenizer": ["direct", "binned", "binned_ambre", "vqvae"], "pooling": ["cls", "mean", "max"],
                  "met": [False, True], "vect": [4, 5]}
INTERACTS_WITH_TOKENIZER = ("pooling", "met", "vect")
ALPHA = 0.05
EFFECT_COLUMNS = ["comparison", "kind", "factor", "level_a", "level_b", "at", "metric", "estimate", "ci_low", "ci_high", "p_value",
                  "p_holm", "significant", "n_pairs", "n_seeds"]


# --------------------------------------------------------------------------- AUC under resampling


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (B, n) at once; ties count one half.

    A bootstrap resample is a vector of event multiplicities, so B resamples of one test set
    cost one sort and a few (B, n) array operations.
    """
    order = np.argsort(scores, kind="stable")
    s, y = np.asarray(scores)[order], np.asarray(labels)[order].astype(bool)
    w = np.atleast_2d(weights)[:, order]
    if len(s) == 0:
        return np.full(w.shape[0], np.nan)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first event of each group of tied scores
    if len(starts) == len(s):  # no ties (continuous scores): each positive beats the background below it
        if y.all() or not y.any():  # one class only: no pair to rank
            return np.full(w.shape[0], np.nan)
        neg_cum = np.cumsum(w[:, ~y], axis=1)  # (B, n_bkg)
        n_below = np.cumsum(~y)[y]  # backgrounds sorted below each signal event
        below = np.where(n_below > 0, neg_cum[:, np.maximum(n_below - 1, 0)], 0.0)  # (B, n_sig)
        num = (w[:, y] * below).sum(1)
        den = w[:, y].sum(1) * neg_cum[:, -1]
    else:
        neg_g = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)  # (B, groups) background weight per score value
        pos_g = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        num = (pos_g * (below + 0.5 * neg_g)).sum(1)
        den = pos_g.sum(1) * neg_g.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """Multiplicities of ``n_boot`` resamples of n events (multinomial = drawing with replacement)."""
    rng = np.random.default_rng(rng)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def metric_mask(metric: str, labels: np.ndarray, process: np.ndarray | None) -> np.ndarray | None:
    """Events a metric is computed on: all for ``auc``; signal + one background for ``auc_vs_<bkg>``."""
    if metric == "auc":
        return None
    name = metric.removeprefix("auc_vs_")
    code = {v: k for k, v in BACKGROUNDS.items()}.get(name)
    if code is None or process is None:
        raise BadSetting(f"unknown metric {metric!r} (or no process labels stored): expected auc or auc_vs_<{'|'.join(BACKGROUNDS.values())}>")
    return (np.asarray(labels) == 1) | (np.asarray(process) == code)


_cache: dict[tuple, tuple[dict, tuple[np.ndarray, np.ndarray]]] = {}


def run_aucs(scores: dict[str, dict], run_ids: list[str], metric: str = "auc", n_boot: int = 1000, seed: int = 0,
             chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(auc (R,), boot (R, n_boot))``: each run's AUC on its test set and under ``n_boot``
    resamples of the test events. Runs that scored the same test events (same labels) share
    the resamples: that is what makes the bootstrap of a difference paired. The report asks
    for the same resamples for several tables: the last few answers are kept (same inputs,
    same draws, so the tables agree)."""
    key = (id(scores), tuple(run_ids), metric, n_boot, seed, chunk)
    hit = _cache.get(key)
    if hit is not None and hit[0] is scores:
        return hit[1]
    out = _run_aucs(scores, run_ids, metric, n_boot, seed, chunk)
    if len(_cache) > 16:
        _cache.clear()
    _cache[key] = (scores, out)
    return out


def _run_aucs(scores: dict[str, dict], run_ids: list[str], metric: str, n_boot: int, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    auc = np.full(len(run_ids), np.nan)
    boot = np.full((len(run_ids), n_boot), np.nan)
    groups: dict[bytes, list[int]] = {}
    for i, rid in enumerate(run_ids):
        lab = np.asarray(scores[rid]["labels"]).astype(np.int8)
        proc = scores[rid].get("process")
        key = lab.tobytes() + (np.asarray(proc).astype(np.int8).tobytes() if proc is not None else b"")
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    for members in groups.values():
        first = scores[run_ids[members[0]]]
        mask = metric_mask(metric, first["labels"], first.get("process"))
        lab = np.asarray(first["labels"])[mask] if mask is not None else np.asarray(first["labels"])
        n = len(lab)
        sc = [np.asarray(scores[run_ids[i]]["scores"], dtype=np.float64) for i in members]
        if mask is not None:
            sc = [s[mask] for s in sc]
        for i, s in zip(members, sc, strict=True):
            auc[i] = weighted_auc(s, lab, np.ones(n))[0]
        for lo in range(0, n_boot, chunk):  # (chunk, n) weights at a time: memory stays small for 30k-event test sets
            w = bootstrap_weights(n, min(chunk, n_boot - lo), rng)
            for i, s in zip(members, sc, strict=True):
                boot[i, lo : lo + len(w)] = weighted_auc(s, lab, w)
    return auc, boot


# --------------------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Units:
    """A matched contrast: ``coef`` (U, R) maps run AUCs to unit values (one per stratum and seed)."""

    coef: np.ndarray
    strata: np.ndarray  # (U,) stratum id of each unit (the other factors)
    seeds: np.ndarray  # (U,) seed of each unit

    def __len__(self) -> int:
        return len(self.strata)


def contrast_units(runs: pd.DataFrame, terms: list[tuple[dict, float]]) -> Units:
    """Units of the contrast sum(coef * AUC(run at levels)) over matched runs.

    ``terms``: (levels, coefficient) pairs, e.g. ``[({"tokenizer": "binned"}, 1), ({"tokenizer":
    "direct"}, -1)]``. Runs match when they agree on every factor not named in a term and on
    the seed; a unit exists only where every term has its run.
    """
    named = sorted({f for levels, _ in terms for f in levels})
    rest = [f for f in FACTORS if f not in named]
    cols = [*FACTORS, "seed"]
    keys = list(zip(*(runs[c].tolist() for c in cols), strict=True))  # one (factors..., seed) tuple per run
    index = {k: i for i, k in enumerate(keys)}
    pos = [cols.index(f) for f in [*rest, "seed"]]
    rows, strata, seeds, stratum_ids = [], [], [], {}
    for base in sorted({tuple(k[p] for p in pos) for k in keys}, key=str):
        fixed = dict(zip([*rest, "seed"], base, strict=True))
        vec = np.zeros(len(runs))
        for levels, c in terms:
            full = {**fixed, **levels}
            i = index.get(tuple(full[f] for f in cols))
            if i is None:
                break
            vec[i] += c
        else:
            rows.append(vec)
            strata.append(stratum_ids.setdefault(base[:-1], len(stratum_ids)))
            seeds.append(base[-1])
    coef = np.array(rows).reshape(len(rows), len(runs))
    return Units(coef, np.array(strata, dtype=int), np.array(seeds))


def stratified_means(values: np.ndarray, units: Units) -> np.ndarray:
    """Mean over strata of the mean over each stratum's units; ``values`` (U, ...) -> (...)."""
    out = [values[units.strata == s].mean(0) for s in np.unique(units.strata)]
    return np.mean(out, axis=0)


def two_level_bootstrap(units: Units, auc_boot: np.ndarray, seed: int = 0) -> np.ndarray:
    """(B,) bootstrap distribution of the contrast: the test events were resampled in
    ``auc_boot`` (R, B); here the seeds are resampled within each stratum, with the seed-level
    deviation expanded by sqrt(n/(n-1))."""
    rng = np.random.default_rng(seed)
    vals = units.coef @ auc_boot  # (U, B): every unit under every event resample
    B = vals.shape[1]
    out = []
    for s in np.unique(units.strata):
        v = vals[units.strata == s]  # (n, B)
        n = len(v)
        m = v.mean(0)
        if n == 1:
            out.append(m)
            continue
        draw = rng.integers(0, n, size=(B, n))  # (B, n) seeds drawn with replacement
        m_star = np.take_along_axis(v.T, draw, axis=1).mean(1)
        out.append(m + np.sqrt(n / (n - 1)) * (m_star - m))
    return np.mean(out, axis=0)


def sign_flip_p(units: Units, auc: np.ndarray, n_flips: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip test of "the contrast is zero"."""
    v = units.coef @ auc  # (U,)
    if len(v) == 0:
        return float("nan")
    obs = abs(stratified_means(v, units))
    rng = np.random.default_rng(seed)
    U = len(v)
    if 2**U <= n_flips:  # every sign pattern: the exact test
        flips = np.array(list(itertools.product((1.0, -1.0), repeat=U)))
    else:
        flips = rng.choice((1.0, -1.0), size=(n_flips, U))
    null = np.abs(stratified_means((flips * v).T, units))
    exact = 2**U <= n_flips
    hits = (null >= obs - 1e-12).sum()
    return float(hits / len(flips)) if exact else float((1 + hits) / (1 + len(flips)))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------- the tables


def _fmt_level(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v)


def _levels(runs: pd.DataFrame, factor: str) -> list:
    present = set(runs[factor])
    return [lv for lv in CONTRAST_ORDER[factor] if lv in present]


def _contrasts(runs: pd.DataFrame, metrics: list[str]) -> list[dict]:
    """The family: every pair of levels of every factor (main effects), the tokenizer pairs
    crossed with every pair of levels of pooling, MET and vect (interactions), and the
    tokenizer pairs per background process."""
    out = []
    for f in FACTORS:
        for b, a in itertools.combinations(_levels(runs, f), 2):
            out.append({"kind": "main", "factor": f, "level_a": a, "level_b": b, "at": "", "metric": "auc",
                        "terms": [({f: a}, 1.0), ({f: b}, -1.0)]})
    tok = list(itertools.combinations(_levels(runs, "tokenizer"), 2))
    for g in INTERACTS_WITH_TOKENIZER:
        for (tb, ta), (gy, gx) in itertools.product(tok, itertools.combinations(_levels(runs, g), 2)):
            out.append({"kind": "interaction", "factor": f"tokenizer x {g}", "level_a": ta, "level_b": tb,
                        "at": f"{g}: {_fmt_level(gx)} vs {_fmt_level(gy)}", "metric": "auc",
                        "terms": [({"tokenizer": ta, g: gx}, 1.0), ({"tokenizer": tb, g: gx}, -1.0),
                                  ({"tokenizer": ta, g: gy}, -1.0), ({"tokenizer": tb, g: gy}, 1.0)]})
    for m in metrics:
        if m == "auc":
            continue
        for tb, ta in tok:
            out.append({"kind": "background", "factor": "tokenizer", "level_a": ta, "level_b": tb, "at": m.removeprefix("auc_vs_"),
                        "metric": m, "terms": [({"tokenizer": ta}, 1.0), ({"tokenizer": tb}, -1.0)]})
    return out


def finished(runs: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Finished runs that have their test scores, one row each (the first of duplicates)."""
    fin = runs[(runs["status"] == "FINISHED") & runs["run_id"].isin(list(scores))].copy()
    return fin.drop_duplicates([*FACTORS, "seed"]).reset_index(drop=True)


def available_metrics(fin: pd.DataFrame, scores: dict) -> list[str]:
    """``auc`` and, when every run stored the process labels, ``auc_vs_<bkg>`` for the
    backgrounds present in the test set."""
    out = ["auc"]
    if len(fin) and all(scores[r].get("process") is not None for r in fin["run_id"]):
        proc = np.asarray(scores[fin["run_id"].iloc[0]]["process"])
        out += [f"auc_vs_{name}" for code, name in BACKGROUNDS.items() if (proc == code).any()]
    return out


def effects(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = 1000, seed: int = 0, n_flips: int = 9999,
            alpha: float = ALPHA, metrics: list[str] | None = None) -> pd.DataFrame:
    """Main effects, tokenizer interactions and per-background tokenizer contrasts, one row each.

    ``runs``: one row per train run with columns tokenizer, pooling, met, vect, seed, run_id,
    status (``results.grid_runs`` has them); ``scores``: run id -> {"labels", "scores",
    "process"} arrays (``results.test_scores``). Finished runs with scores count. ``metrics``:
    ``auc`` and the ``auc_vs_<background>`` to compare (default: all the scores allow).

    Columns: ``comparison`` (e.g. ``binned - direct``), ``kind`` (main / interaction /
    background), ``factor``, ``level_a``, ``level_b``, ``at`` (the interaction's levels or the
    background), ``metric``, ``estimate`` (mean matched difference of test AUC), ``ci_low`` /
    ``ci_high`` (95% two-level bootstrap), ``p_value`` (paired sign flip), ``p_holm`` (Holm
    over every row of this table), ``significant`` (p_holm < alpha), ``n_pairs`` (matched
    units), ``n_seeds``.
    """
    fin = finished(runs, scores)
    rows = []
    if len(fin):
        ids = fin["run_id"].tolist()
        metrics = metrics or available_metrics(fin, scores)
        cache = {m: run_aucs(scores, ids, m, n_boot, seed) for m in metrics}
        for c in _contrasts(fin, metrics):
            units = contrast_units(fin, c.pop("terms"))
            if len(units) == 0:
                continue
            auc, boot = cache[c["metric"]]
            dist = two_level_bootstrap(units, boot, seed)
            comparison = f"{_fmt_level(c['level_a'])} - {_fmt_level(c['level_b'])}"
            rows.append({**c, "comparison": comparison, "level_a": _fmt_level(c["level_a"]), "level_b": _fmt_level(c["level_b"]),
                         "estimate": float(stratified_means(units.coef @ auc, units)),
                         "ci_low": float(np.nanpercentile(dist, 100 * alpha / 2)), "ci_high": float(np.nanpercentile(dist, 100 * (1 - alpha / 2))),
                         "p_value": sign_flip_p(units, auc, n_flips, seed), "n_pairs": len(units), "n_seeds": len(set(units.seeds))})
    df = pd.DataFrame(rows, columns=[c for c in EFFECT_COLUMNS if c not in ("p_holm", "significant")])
    df["p_holm"] = holm(df["p_value"].to_numpy()) if len(df) else []
    df["significant"] = df["p_holm"] < alpha
    return df[EFFECT_COLUMNS]


def conditional_effects(runs: pd.DataFrame, scores: dict[str, dict], a: str, b: str, n_boot: int = 1000, seed: int = 0,
                        alpha: float = ALPHA) -> pd.DataFrame:
    """The tokenizer contrast ``a - b`` within each level of pooling, MET and vect: where is the
    gap largest? Intervals only (these are views of the interactions, not further tests)."""
    fin = finished(runs, scores)
    rows = []
    if len(fin):
        auc, boot = run_aucs(scores, fin["run_id"].tolist(), "auc", n_boot, seed)
        for g in INTERACTS_WITH_TOKENIZER:
            for lv in _levels(fin, g):
                units = contrast_units(fin, [({"tokenizer": a, g: lv}, 1.0), ({"tokenizer": b, g: lv}, -1.0)])
                if len(units) == 0:
                    continue
                dist = two_level_bootstrap(units, boot, seed)
                rows.append({"comparison": f"{a} - {b}", "factor": g, "level": _fmt_level(lv),
                             "estimate": float(stratified_means(units.coef @ auc, units)),
                             "ci_low": float(np.percentile(dist, 100 * alpha / 2)), "ci_high": float(np.percentile(dist, 100 * (1 - alpha / 2))),
                             "n_pairs": len(units), "n_seeds": len(set(units.seeds))})
    return pd.DataFrame(rows, columns=["comparison", "factor", "level", "estimate", "ci_low", "ci_high", "n_pairs", "n_seeds"])


def cell_intervals(runs: pd.DataFrame, scores: dict[str, dict], metric: str = "auc", by: tuple[str, ...] = FACTORS,
                   n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """Mean test AUC (or ``auc_vs_<bkg>``) of each group ``by`` over its runs, with its 95%
    two-level bootstrap interval (seeds within each cell of the group, and test events)."""
    fin = finished(runs, scores)
    cols = [*by, "metric", "mean", "ci_low", "ci_high", "n_runs", "n_seeds"]
    if not len(fin):
        return pd.DataFrame(columns=cols)
    auc, boot = run_aucs(scores, fin["run_id"].tolist(), metric, n_boot, seed)
    rows = []
    for key, grp in fin.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cell_of = grp[list(FACTORS)].astype(str).agg("|".join, axis=1)
        ids = {c: i for i, c in enumerate(dict.fromkeys(cell_of))}
        coef = np.zeros((len(grp), len(fin)))
        coef[np.arange(len(grp)), grp.index.to_numpy()] = 1.0
        units = Units(coef, cell_of.map(ids).to_numpy(), grp["seed"].to_numpy())
        dist = two_level_bootstrap(units, boot, seed)
        rows.append({**dict(zip(by, key, strict=True)), "metric": metric, "mean": float(stratified_means(units.coef @ auc, units)),
                     "ci_low": float(np.percentile(dist, 100 * alpha / 2)), "ci_high": float(np.percentile(dist, 100 * (1 - alpha / 2))),
                     "n_runs": len(grp), "n_seeds": grp["seed"].nunique()})
    return pd.DataFrame(rows, columns=cols)
