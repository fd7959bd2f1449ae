"""Seed-aware statistics over a grid of runs (numpy and scipy; no MLflow).

The model of a run's test AUC: the cell's true AUC + training noise (the seed: init, data
order, dropout; independent across runs because each run draws from its own random stream,
``thesis_mlflow.spec.RunStream``) + test-set noise (the finite test sample, shared by every run
because they all score the same test events). A comparison is a *matched contrast*: runs that
differ in one factor (or, for an interaction, in two) and agree on every other factor and the
seed; its units are the matched sets, one per stratum (the other factors) and seed.

- Interval and test are one t statistic, and both include both noises (neither is conditional
  on the test set): the estimate is the mean over strata of each stratum's mean unit value;
  its variance is the seed part, sum_s s_s^2 / (n_s S^2) with s_s^2 the sample variance of
  the stratum's units, plus the test-set part, the variance of the estimate over resamples of
  the test events (one resample applied to every run at once: paired). Degrees of freedom by
  Welch-Satterthwaite over the strata of the seed part alone (conservative where test-set
  noise dominates; the plug-in over both parts was liberal at 3 seeds). With 3 seeds a
  single cell has 2 degrees of freedom (t = 4.30): a percentile bootstrap of 3 values covered
  the truth in only ~84% of cells where seed noise dominates. Strata with one seed borrow the
  pooled seed variance of the others (``n_single`` says how many did); with one seed
  everywhere there is no seed variance to estimate and the interval covers test-set noise
  only (``seed_var_known`` is False; the callers say so).
- Family: Holm's step-down correction over all tests of one table.
- Holes: a run with no value for a metric (NaN) takes its units out of that contrast; a
  contrast left without units has no row. NaN is never significant.

Validated by simulation in ``tests/test_stats.py`` (coverage per level, false positives,
power, seed luck shared across cells).
"""

from __future__ import annotations

import contextlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.packing import cpu_budget
from thesis_mlflow.learn.metrics import BACKGROUNDS
from thesis_mlflow.spec import FACTORS, LEVELS

# contrasts read "later level minus earlier level": binned - direct, max - cls, met in - out, 5 - 4
CONTRAST_ORDER = {**LEVELS, "met": (False, True)}  # as the spec lists them, but MET contrasts are "with - without"
INTERACTS_WITH_TOKENIZER = ("pooling", "met", "vect")
ALPHA = 0.05
EFFECT_COLUMNS = ["comparison", "kind", "factor", "level_a", "level_b", "at", "metric", "estimate", "ci_low", "ci_high", "se", "df",
                  "p_value", "p_holm", "significant", "n_pairs", "n_seeds", "n_single", "seed_var_known"]


# --------------------------------------------------------------------------- AUC under resampling


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (B, n) at once; ties count one half.

    A bootstrap resample is a vector of event multiplicities, so B resamples of one test set
    cost one sort and a few (B, n) array operations.
    """
    order = np.argsort(scores, kind="stable")
    s, y = np.asarray(scores)[order], np.asarray(labels)[order].astype(bool)
    w = np.atleast_2d(weights)
    if len(s) == 0:
        return np.full(w.shape[0], np.nan)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first event of each group of tied scores
    if len(starts) == len(s):  # no ties (continuous scores): each positive beats the background below it
        if y.all() or not y.any():  # one class only: no pair to rank
            return np.full(w.shape[0], np.nan)
        # each class's weights gathered once, in score order (not the whole (B, n) array first: half the memory traffic)
        w_neg, w_pos = w[:, order[~y]], w[:, order[y]]  # (B, n_bkg), (B, n_sig)
        neg_cum = np.zeros((w.shape[0], w_neg.shape[1] + 1))
        np.cumsum(w_neg, axis=1, out=neg_cum[:, 1:])  # (B, 1 + n_bkg): background weight below, from none to all
        below = neg_cum[:, np.cumsum(~y)[y]]  # (B, n_sig): of the backgrounds sorted below each signal event
        num = np.einsum("ij,ij->i", w_pos, below)
        den = w_pos.sum(1) * neg_cum[:, -1]
    else:
        w = w[:, order].astype(np.float64, copy=False)  # sums of products: in float64 whatever the weights' type
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
        if metric != "auc" and first.get("process") is None:
            continue  # runs logged before process labels were stored: no per-background value (NaN)
        mask = metric_mask(metric, first["labels"], first.get("process"))
        lab = np.asarray(first["labels"])[mask] if mask is not None else np.asarray(first["labels"])
        n = len(lab)
        sc = [np.asarray(scores[run_ids[i]]["scores"], dtype=np.float64) for i in members]
        if mask is not None:
            sc = [s[mask] for s in sc]
        finite = [bool(np.isfinite(s).all()) for s in sc]  # a diverged run's NaN would rank as the highest score: no value
        members = [i for i, f in zip(members, finite, strict=True) if f]
        sc = [s for s, f in zip(sc, finite, strict=True) if f]
        for i, s in zip(members, sc, strict=True):
            auc[i] = weighted_auc(s, lab, np.ones(n))[0]
        # the runs of one resample chunk side by side: numpy's sorts, gathers and sums release the GIL
        # (the demo's report: 12.6 s -> 7 s on 2 cores); small test sets stay in this thread
        threads = min(len(members), _CORES) if n * chunk >= _THREADED_FROM else 1
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="auc") if threads > 1 else contextlib.nullcontext() as pool:
            each = pool.map if pool is not None else map
            for lo in range(0, n_boot, chunk):  # (chunk, n) weights at a time: memory stays small for 30k-event test sets
                w = bootstrap_weights(n, min(chunk, n_boot - lo), rng).astype(np.float32)  # counts: exact, half the memory traffic
                for i, b in zip(members, each(lambda s, w=w, lab=lab: weighted_auc(s, lab, w), sc), strict=True):
                    boot[i, lo : lo + len(w)] = b
    return auc, boot


_CORES = min(8, cpu_budget())
_THREADED_FROM = 100_000  # events x resamples per call below which a thread hand-off costs more than it saves

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


def usable(units: Units, auc: np.ndarray) -> Units:
    """The units whose every run has a value (a NaN AUC, e.g. a metric some runs lack, drops
    the units it touches, never the whole contrast)."""
    bad = np.isnan(auc)
    if not bad.any() or not len(units):
        return units
    keep = ~(np.abs(units.coef[:, bad]) > 0).any(1)
    return Units(units.coef[keep], units.strata[keep], units.seeds[keep])


@dataclass(frozen=True)
class Interval:
    """A contrast's estimate with its t interval and the test that goes with it."""

    estimate: float
    se: float
    df: float  # Welch-Satterthwaite; inf when only the test-set part is known
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, of "the contrast is zero", from the same t statistic
    seed_var: float  # the seed part of the estimate's variance
    test_var: float  # the test-set part
    n_single: int  # strata with one seed (their seed variance borrowed from the others)
    seed_var_known: bool  # False: one seed everywhere, the interval covers test-set noise only


def t_interval(units: Units, auc: np.ndarray, auc_boot: np.ndarray, alpha: float = ALPHA) -> Interval:
    """The contrast of ``units`` over run AUCs ``auc`` (R,) and their event resamples
    ``auc_boot`` (R, B): estimate, variance = seed part + test-set part, t interval, p-value."""
    used = (units.coef != 0).any(0)  # runs outside the contrast may be NaN: 0 * NaN must not reach it
    coef = units.coef[:, used]
    v = coef @ auc[used]  # (U,) unit values on the full test set
    strata = np.unique(units.strata)
    S = len(strata)
    est = float(np.mean([v[units.strata == s].mean() for s in strata]))
    vb = coef @ auc_boot[used]  # (U, B)
    boot_est = np.mean([vb[units.strata == s].mean(0) for s in strata], axis=0)  # (B,) the estimate per event resample
    test_var = float(np.nanvar(boot_est, ddof=1)) if np.isfinite(boot_est).sum() > 1 else 0.0
    # seed part: per stratum s_s^2 / n_s, weights 1/S^2; strata with one seed borrow the pooled s^2
    parts, dfs, single = [], [], []
    ss_pooled, df_pooled = 0.0, 0
    for s in strata:
        x = v[units.strata == s]
        if len(x) > 1:
            # the seeds' spread on this one test set holds each run's own test-set error too, which the
            # event resamples already count (in test_var): take its mean over resamples out of it
            own = float(np.nanmean(np.var(vb[units.strata == s] - x[:, None], axis=0, ddof=1)))
            var = max(float(np.var(x, ddof=1)) - own, 0.0)
            parts.append(var / (len(x) * S**2))
            dfs.append(len(x) - 1)
            ss_pooled += var * (len(x) - 1)
            df_pooled += len(x) - 1
        else:
            single.append(1)
    known = df_pooled > 0
    seed_var = float(sum(parts))
    denom = sum(a**2 / d for a, d in zip(parts, dfs, strict=True))
    if single and known:  # one term: the pooled variance, with the pooled degrees of freedom
        borrowed = ss_pooled / df_pooled * len(single) / S**2
        seed_var += borrowed
        denom += borrowed**2 / df_pooled
    total = seed_var + test_var
    se = float(np.sqrt(total))
    # Degrees of freedom of the seed part alone (Satterthwaite over the strata), not raised by the
    # test-set part: with 2-3 seeds a plug-in Satterthwaite over both parts grows large exactly
    # when the sample variance came out small, and covered ~92% of single cells (simulation).
    df = seed_var**2 / denom if denom > 0 else float("inf")
    if not np.isfinite(est):
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), seed_var, test_var,
                        len(single), known)
    q = float(sps.t.ppf(1 - alpha / 2, df)) if np.isfinite(df) else float(sps.norm.ppf(1 - alpha / 2))
    if se > 0:
        t = abs(est) / se
        p = float(2 * (sps.t.sf(t, df) if np.isfinite(df) else sps.norm.sf(t)))
    else:  # no spread at all (identical runs, no events to resample): only an exact zero is "no difference"
        p = 1.0 if est == 0 else 0.0
    return Interval(est, se, float(df), est - q * se, est + q * se, p, seed_var, test_var, len(single), known)


def sign_flip_p(units: Units, auc: np.ndarray, n_flips: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip test of "the contrast is zero", conditional on
    the one test set (training noise only). Not in the tables, whose test is the t statistic
    of ``t_interval`` (both noises, like the intervals); for a notebook that wants the exact
    permutation test of the seeds alone."""
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
    """``auc`` and ``auc_vs_<bkg>`` for every background present in the test set of any run
    that stored process labels (runs without them have no value there: ``without_process``)."""
    out = ["auc"]
    present: set[int] = set()
    for r in fin["run_id"]:
        proc = scores[r].get("process")
        if proc is not None:
            present |= set(np.unique(np.asarray(proc)).tolist())
    return out + [f"auc_vs_{name}" for code, name in BACKGROUNDS.items() if code in present]


def without_process(fin: pd.DataFrame, scores: dict) -> list[str]:
    """Run ids whose score file has no process labels (logged before they were stored)."""
    return [r for r in fin["run_id"] if scores[r].get("process") is None]


def effects(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = 1000, seed: int = 0,
            alpha: float = ALPHA, metrics: list[str] | None = None) -> pd.DataFrame:
    """Main effects, tokenizer interactions and per-background tokenizer contrasts, one row each.

    ``runs``: one row per train run with columns tokenizer, pooling, met, vect, seed, run_id,
    status (``results.grid_runs`` has them); ``scores``: run id -> {"labels", "scores",
    "process"} arrays (``results.test_scores``). Finished runs with scores count. ``metrics``:
    ``auc`` and the ``auc_vs_<background>`` to compare (default: all the scores allow).

    Columns: ``comparison`` (e.g. ``binned - direct``), ``kind`` (main / interaction /
    background), ``factor``, ``level_a``, ``level_b``, ``at`` (the interaction's levels or the
    background), ``metric``, ``estimate`` (mean matched difference of test AUC), ``ci_low`` /
    ``ci_high`` (95% t interval, seeds and test events), ``se``, ``df``, ``p_value`` (the same
    t statistic), ``p_holm`` (Holm over every row of this table), ``significant`` (p_holm <
    alpha), ``n_pairs`` (matched units with a value), ``n_seeds``, ``n_single`` (strata with one
    seed), ``seed_var_known`` (False: one seed everywhere, test-set noise only).
    """
    fin = finished(runs, scores)
    rows = []
    if len(fin):
        ids = fin["run_id"].tolist()
        metrics = metrics or available_metrics(fin, scores)
        cache = {m: run_aucs(scores, ids, m, n_boot, seed) for m in metrics}
        for c in _contrasts(fin, metrics):
            auc, boot = cache[c["metric"]]
            units = usable(contrast_units(fin, c.pop("terms")), auc)
            if len(units) == 0:
                continue
            iv = t_interval(units, auc, boot, alpha)
            comparison = f"{_fmt_level(c['level_a'])} - {_fmt_level(c['level_b'])}"
            rows.append({**c, "comparison": comparison, "level_a": _fmt_level(c["level_a"]), "level_b": _fmt_level(c["level_b"]),
                         "estimate": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high, "se": iv.se, "df": iv.df,
                         "p_value": iv.p_value, "n_pairs": len(units), "n_seeds": len(set(units.seeds)), "n_single": iv.n_single,
                         "seed_var_known": iv.seed_var_known})
    df = pd.DataFrame(rows, columns=[c for c in EFFECT_COLUMNS if c not in ("p_holm", "significant")])
    df["p_holm"] = holm(df["p_value"].to_numpy(dtype=float)) if len(df) else []
    df["significant"] = (df["p_holm"] < alpha).fillna(False).astype(bool)  # NaN is never significant
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
                units = usable(contrast_units(fin, [({"tokenizer": a, g: lv}, 1.0), ({"tokenizer": b, g: lv}, -1.0)]), auc)
                if len(units) == 0:
                    continue
                iv = t_interval(units, auc, boot, alpha)
                rows.append({"comparison": f"{a} - {b}", "factor": g, "level": _fmt_level(lv), "estimate": iv.estimate,
                             "ci_low": iv.ci_low, "ci_high": iv.ci_high, "n_pairs": len(units), "n_seeds": len(set(units.seeds))})
    return pd.DataFrame(rows, columns=["comparison", "factor", "level", "estimate", "ci_low", "ci_high", "n_pairs", "n_seeds"])


def cell_intervals(runs: pd.DataFrame, scores: dict[str, dict], metric: str = "auc", by: tuple[str, ...] = FACTORS,
                   n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """Mean test AUC (or ``auc_vs_<bkg>``) of each group ``by`` over its runs, with its 95% t
    interval (seeds within each cell of the group, and test events: ``t_interval``). Runs
    without a value for ``metric`` are left out (``n_runs`` counts those with one); ``n_single``
    counts the group's cells with one seed."""
    fin = finished(runs, scores)
    cols = [*by, "metric", "mean", "ci_low", "ci_high", "n_runs", "n_seeds", "n_single", "seed_var_known"]
    if not len(fin):
        return pd.DataFrame(columns=cols)
    auc, boot = run_aucs(scores, fin["run_id"].tolist(), metric, n_boot, seed)
    cell_id = pd.factorize(pd.MultiIndex.from_frame(fin[list(FACTORS)].astype(str)))[0]  # (R,) each run's cell, computed once
    group_id, keys = pd.factorize(pd.MultiIndex.from_frame(fin[list(by)]))
    seeds = fin["seed"].to_numpy()
    rows = []
    for g, key in enumerate(keys):
        idx = np.flatnonzero(group_id == g)
        coef = np.zeros((len(idx), len(fin)))
        coef[np.arange(len(idx)), idx] = 1.0
        units = usable(Units(coef, pd.factorize(cell_id[idx])[0], seeds[idx]), auc)
        if not len(units):
            continue
        iv = t_interval(units, auc, boot, alpha)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "metric": metric, "mean": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
                     "n_runs": len(units), "n_seeds": len(set(units.seeds)), "n_single": iv.n_single, "seed_var_known": iv.seed_var_known})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- the omnibus model

OMNIBUS_COLUMNS = ["term", "df", "F", "p_value"]


def omnibus(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Is the tokenizer effect there at all? A factorial model of test AUC beside the contrasts.

    ``auc ~ seed + pooling*met*vect + tokenizer + tokenizer:(pooling + met + vect)`` by least
    squares (seed as a block; the other factors' cells with all their interactions), with a type-II ANOVA F test per term and one F test of every
    tokenizer term together (main effect and interactions) against the model without them.
    A linear mixed model with seed as a random intercept (statsmodels ``MixedLM``, REML) gives
    the variance components: between seeds (shared luck of a seed across cells: ~0 when runs
    draw from their own streams), within cells (run to run), and the test-set noise of one run's
    AUC (its bootstrap variance). Effects in units of the seed spread divide the tokenizer rows
    of ``effects`` by the within-cell standard deviation.

    Returns ``(table, components)``; the table is empty, and ``components["note"]`` says why,
    when the design cannot be fitted (fewer than 2 tokenizers or seeds, a partial grid that
    leaves terms without data).
    """
    import warnings

    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    fin = finished(runs, scores)
    comps = {"seed_var": np.nan, "within_var": np.nan, "test_var": np.nan, "within_sd": np.nan, "note": ""}
    if not len(fin):
        comps["note"] = "no finished runs"
        return pd.DataFrame(columns=OMNIBUS_COLUMNS), comps
    auc, boot = run_aucs(scores, fin["run_id"].tolist(), "auc", n_boot, seed)
    d = fin[[*FACTORS, "seed"]].copy()
    d["auc"] = auc
    d = d.dropna(subset=["auc"])
    d["met"] = d["met"].map(_fmt_level)
    comps["test_var"] = float(np.nanmean(np.nanvar(boot, axis=1, ddof=1)))
    varying = [f for f in FACTORS if d[f].nunique() > 1]
    if "tokenizer" not in varying or d["seed"].nunique() < 2:
        comps["note"] = "needs at least 2 tokenizers and 2 seeds"
        return pd.DataFrame(columns=OMNIBUS_COLUMNS), comps
    others = [f for f in varying if f != "tokenizer"]
    tok_terms = ["C(tokenizer)", *(f"C(tokenizer):C({f})" for f in others)]
    # the other factors with all their interactions (every cell of theirs its own mean), so that
    # what they do together is not left in the residual
    base = " + ".join(["C(seed)", "*".join(f"C({f})" for f in others)]) if others else "C(seed)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = smf.ols(f"auc ~ {base} + {' + '.join(tok_terms)}", d).fit()
            reduced = smf.ols(f"auc ~ {base}", d).fit()
            table = anova_lm(full, typ=2)
            test = anova_lm(reduced, full)
    except Exception as e:  # noqa: BLE001 - a singular or partial design: say so, the contrasts still stand
        comps["note"] = f"the factorial model could not be fitted on this grid ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        return pd.DataFrame(columns=OMNIBUS_COLUMNS), comps
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fixed = " + ".join([*(["*".join(f"C({f})" for f in others)] if others else []), *tok_terms])
            mixed = smf.mixedlm(f"auc ~ {fixed}", d, groups=d["seed"]).fit(reml=True)
        comps["seed_var"], comps["within_var"] = float(np.asarray(mixed.cov_re).ravel()[0]), float(mixed.scale)
    except Exception:  # noqa: BLE001 - REML at the boundary (seed variance ~0) can be singular: the ANOVA moments instead
        ms_seed = table.loc["C(seed)", "sum_sq"] / table.loc["C(seed)", "df"]
        per_seed = len(d) / d["seed"].nunique()
        comps["within_var"] = float(full.mse_resid)
        comps["seed_var"] = max(float((ms_seed - full.mse_resid) / per_seed), 0.0)
        comps["note"] = "mixed model singular (seed variance at its boundary): components from the ANOVA mean squares"
    rows = [{"term": "tokenizer, all terms (main + interactions)", "df": float(test["df_diff"].iloc[1]), "F": float(test["F"].iloc[1]),
             "p_value": float(test["Pr(>F)"].iloc[1])}]
    for term, r in table.iterrows():
        if term in ("Residual", "C(seed)") or (":" in term and "tokenizer" not in term):
            continue
        name = term.replace("C(", "").replace(")", "").replace(":", " x ")
        rows.append({"term": name, "df": float(r["df"]), "F": float(r["F"]), "p_value": float(r["PR(>F)"])})
    comps["within_sd"] = float(np.sqrt(comps["within_var"]))
    comps["resid_df"] = float(full.df_resid)
    return pd.DataFrame(rows, columns=OMNIBUS_COLUMNS), comps
