"""Seed-aware statistics over a grid of runs (numpy and scipy; no MLflow).

The model of a run's test AUC: the cell's true AUC + training noise (the seed: init, data
order, dropout; independent across runs because each run draws from its own random stream,
``thesis_mlflow.spec.RunStream``) + test-set noise (the finite test sample, shared by every run
because they all score the same test events). A comparison is a *matched contrast*: runs that
differ in one factor (or, for an interaction, in two) and agree on every other factor and the
seed; its units are the matched sets, one per stratum (the other factors) and seed.

- Interval and test are one t statistic, and both include both noises (neither is conditional
  on the test set): the estimate is the mean over strata of each stratum's mean unit value;
  its variance is the seed part plus the test-set part. The test-set part is w' C w with C the
  covariance of the runs' AUC errors on the shared test set (``testnoise``: DeLong's structural
  components by default, paired bootstrap resamples on request). The seed part is one seed
  variance pooled over the strata (each stratum's sample variance less its units' own
  test-set error), times sum_s 1 / (n_s S^2), with the pooled degrees of freedom sum_s (n_s - 1):
  per-stratum Satterthwaite collapsed to ~1.4 at 2 seeds when most strata's estimates were
  truncated at zero. A guard against one wild stratum (``between_strata``): when the strata's
  own contrasts scatter more than the pooled seed variance explains (an F test of the one against
  the other at ``BETWEEN_GATE``), the seed part is taken from that scatter instead, with S - 1
  degrees of freedom (``pooled`` False). It sees the wild stratum in its *mean*, where the error
  is, not in its seed spread (at 2 seeds one degree of freedom, which Bartlett's test, the guard
  before it, rarely caught: coverage 0.79 at 16x; no spread-based guard tried reached 0.93 at 8x or 16x). With 3 seeds a
  single cell has 2 degrees of freedom (t = 4.30): a percentile bootstrap of 3 values covered
  the truth in only ~84% of cells where seed noise dominates. Strata with one seed take the
  pooled seed variance of the others (``n_single`` says how many); with one seed everywhere
  there is no seed variance to estimate and the interval covers test-set noise only
  (``seed_var_known`` is False; the callers say so).
- Families: Holm's step-down correction within each family of the effects table (``FAMILIES``:
  the primary tokenizer comparisons apart from the exploratory rows).
- "As good as": TOST within a margin (``equivalence``), from the same estimate, se and df.
- Holes: a run with no value for a metric (NaN) takes its units out of that contrast; a
  contrast left without units has no row. NaN is never significant.

Validated by simulation in ``tests/test_stats.py`` (coverage per level, false positives,
power, seed luck shared across cells).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from thesis_mlflow.learn.metrics import BACKGROUNDS
from thesis_mlflow.report import equivalence
from thesis_mlflow.report.testnoise import boot_cov, bootstrap_weights, metric_mask, run_aucs, weighted_auc  # noqa: F401 - the public face
from thesis_mlflow.spec import FACTORS, LEVELS
from thesis_mlflow.tracking.done import finished_rows

# contrasts read "later level minus earlier level": binned - direct, max - cls, met in - out, 5 - 4
CONTRAST_ORDER = {**LEVELS, "met": (False, True)}  # as the spec lists them, but MET contrasts are "with - without"
INTERACTS_WITH_TOKENIZER = ("pooling", "met", "vect")
ALPHA = 0.05
EFFECT_COLUMNS = ["comparison", "family", "kind", "factor", "level_a", "level_b", "at", "metric", "estimate", "ci_low", "ci_high",
                  "ci90_low", "ci90_high", "se", "df", "p_value", "p_holm", "significant", "p_lower", "p_upper", "p_equiv", "verdict",
                  "n_pairs", "n_seeds", "n_single", "seed_var_known", "seed_var_pooled"]
# Holm runs within each family: the primary question (the tokenizer pairs the answer rests on)
# does not pay for the exploratory rows; the answer's claims come from the primary family only
FAMILIES = {"primary": "the tokenizer comparisons", "other factors": "main effects of pooling, MET and vect",
            "tokenizer interactions": "tokenizer differences changing with pooling, MET or vect",
            "per background": "tokenizer comparisons against one background process at a time"}


def family(kind: str, factor: str) -> str:
    """The Holm family of an effects row (``FAMILIES``)."""
    if kind == "main":
        return "primary" if factor == "tokenizer" else "other factors"
    return "tokenizer interactions" if kind == "interaction" else "per background"


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
    df: float  # of the seed part (pooled: the sum of the strata's n_s - 1; from their scatter: S - 1); inf when only the test-set part is known
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, of "the contrast is zero", from the same t statistic
    seed_var: float  # the seed part of the estimate's variance
    test_var: float  # the test-set part
    n_single: int  # strata with one seed (they take the pooled seed variance of the others)
    seed_var_known: bool  # False: one seed everywhere, the interval covers test-set noise only
    pooled: bool = True  # the seed part from the seed variance pooled over strata; False: from the strata's scatter (``between_strata``)


HOMOGENEITY_P = 0.01  # Bartlett's test of equal seed variance over cells (``grid_seed_variance``): below it no cell borrows
# The wild-stratum guard (``between_strata``) fires when the strata's scatter exceeds this quantile
# of its F distribution under one common seed variance: in 10% of homogeneous grids (conservative
# there: coverage 0.96-0.97), and then its interval covers whether or not one stratum is wild
# (>= 0.97 at 4x-16x one stratum's seed sd, 2 and 3 seeds, 6 and 12 strata: tests/test_stats.py,
# benchmarks/wild_stratum.py). A gate at 0.5 (max of the two) was as safe and more conservative.
BETWEEN_GATE = 0.90
MIN_STRATA_BETWEEN = 4  # below, S - 1 degrees of freedom would be the collapse the pooling removed


class SeedPool(NamedTuple):
    """The seed spread of groups of units (each group: one stratum's, or one cell's, seeds)."""

    df: np.ndarray  # per group with more than one seed: n - 1
    pooled: float  # sum df (raw - own) / sum df, truncated at zero once (raw: a group's sample variance; own: its test-set share)


def seed_pool(groups: list[np.ndarray], v: np.ndarray, M: np.ndarray) -> SeedPool:
    """The seed spread of ``groups`` (indices into the values ``v`` and their test-set
    covariance ``M``); groups with one seed count nowhere. A unit's own test-set error adds
    (tr M - 1'M1 / n) / (n - 1) to its group's sample variance, M the group's block: that
    comes out of the seed part."""
    multi = [i for i in groups if len(i) > 1]
    raw = np.array([np.var(v[i], ddof=1) for i in multi])
    own = np.array([(np.trace(M[np.ix_(i, i)]) - M[np.ix_(i, i)].sum() / len(i)) / (len(i) - 1) for i in multi])
    df = np.array([len(i) - 1 for i in multi], dtype=float)
    pooled = max(float((df * (raw - own)).sum() / df.sum()), 0.0) if multi else 0.0
    return SeedPool(df, pooled)


def t_interval(units: Units, auc: np.ndarray, test_cov: np.ndarray, alpha: float = ALPHA,
               borrow: tuple[float, float] | None = None) -> Interval:
    """The contrast of ``units`` over run AUCs ``auc`` (R,) whose test-set errors have covariance
    ``test_cov`` (R, R) (``testnoise.run_aucs``; ``boot_cov`` of resamples): estimate, variance
    = seed part + test-set part, t interval, p-value.

    The seed part is one variance pooled over the strata (the factorial model's assumption:
    seeds scatter alike in every cell): the units' sample variances, less what each unit's own
    test-set error adds to them, summed with weights n_s - 1, truncated at zero once. Its degrees
    of freedom are the sum of the strata's n_s - 1 (2 seeds in 9 strata: 9, not ~1.4 as when
    each stratum was truncated on its own and one or two strata carried the Satterthwaite sum).
    Strata with one seed take the pooled variance. When the strata's own contrasts scatter
    more than that variance explains (``between_strata``; one wild stratum, or the strata
    differing for real), the seed part comes from their scatter, with S - 1 degrees of freedom
    (``pooled`` False, and the page says so).

    ``borrow``: ``(variance, df)`` of seed noise pooled over a wider set of strata than these
    units' (``cell_intervals``: a cell's seeds take the grid's), used in place of their own."""
    used = (units.coef != 0).any(0)  # runs outside the contrast may be NaN: 0 * NaN must not reach it
    coef = units.coef[:, used]
    v = coef @ auc[used]  # (U,) unit values on the full test set
    M = coef @ np.asarray(test_cov)[np.ix_(used, used)] @ coef.T  # (U, U) test-set covariance of the unit values
    idx = [np.flatnonzero(units.strata == s) for s in np.unique(units.strata)]
    S = len(idx)
    est = float(np.mean([v[i].mean() for i in idx]))
    w = np.zeros(len(v))
    for i in idx:
        w[i] = 1.0 / (S * len(i))
    test_var = max(float(w @ M @ w), 0.0)
    multi = [i for i in idx if len(i) > 1]
    n_single = S - len(multi)
    known = bool(multi) or borrow is not None
    pooled = True
    spread = sum(1.0 / (len(i) * S**2) for i in idx)  # of one seed variance shared by every stratum
    if borrow is not None:
        seed_var, df = borrow[0] * spread, float(borrow[1])
    elif not known:
        seed_var, df = 0.0, float("inf")
    else:
        sp = seed_pool(idx, v, M)
        seed_var, df = sp.pooled * spread, float(sp.df.sum())
        scatter = between_strata(idx, v, M)
        if scatter is not None and scatter.raw > float(special.fdtri(S - 1, df, BETWEEN_GATE)) * (seed_var + scatter.test):
            seed_var, df, pooled = scatter.seed, float(S - 1), False
    total = seed_var + test_var
    se = float(np.sqrt(total))
    if not np.isfinite(est):
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), seed_var, test_var,
                        n_single, known, pooled)
    # scipy.special's t and normal functions: the same numbers as scipy.stats' distributions
    # without their argument checks (half of a simulated grid's statistics went there)
    q = float(special.stdtrit(df, 1 - alpha / 2)) if np.isfinite(df) else float(special.ndtri(1 - alpha / 2))
    if se > 0:
        t = abs(est) / se
        p = float(2 * (special.stdtr(df, -t) if np.isfinite(df) else special.ndtr(-t)))
    else:  # no spread at all (identical runs, no events to resample): only an exact zero is "no difference"
        p = 1.0 if est == 0 else 0.0
    return Interval(est, se, float(df), est - q * se, est + q * se, p, seed_var, test_var, n_single, known, pooled)


class Scatter(NamedTuple):
    """The strata's own means m_s scattered about their mean (the estimate), on the scale of the
    estimate's variance: ``raw`` = sum (m_s - m)^2 / (S (S - 1)); ``test``, what the test-set
    errors add to it, (tr C - 1'C1 / S) / (S (S - 1)) with C the (S, S) test-set covariance of
    the m_s (a part common to every stratum adds nothing); ``seed`` = raw - test, truncated at
    zero: unbiased for the seed part whatever each stratum's own seed variance when the strata
    share one true contrast, larger when they do not (the contrast then read as an average over
    strata that differ)."""

    raw: float
    test: float
    seed: float


def between_strata(idx: list[np.ndarray], v: np.ndarray, M: np.ndarray) -> Scatter | None:
    """The ``Scatter`` of the strata ``idx`` (indices into the unit values ``v``, test-set
    covariance ``M``); None below ``MIN_STRATA_BETWEEN`` strata. Its ``raw`` against the pooled
    seed part plus its ``test`` is the wild-stratum guard's F ratio (``t_interval``)."""
    S = len(idx)
    if S < MIN_STRATA_BETWEEN:
        return None
    A = np.zeros((S, len(v)))  # (S, U): each stratum's mean of its units
    for s, i in enumerate(idx):
        A[s, i] = 1.0 / len(i)
    m, C = A @ v, A @ M @ A.T
    raw = float(((m - m.mean()) ** 2).sum()) / (S * (S - 1))
    test = float(np.trace(C) - C.sum() / S) / (S * (S - 1))
    return Scatter(raw, test, max(raw - test, 0.0))


def _homogeneous(groups: list[np.ndarray]) -> bool:
    """Bartlett's test does not reject equal variances over ``groups`` at ``HOMOGENEITY_P`` (or
    cannot be computed: fewer than two groups, a group without spread). Written out (scipy's
    ``bartlett``, with its input checks, cost half of a simulated grid's statistics)."""
    if len(groups) < 2:
        return True
    d = np.array([len(g) - 1 for g in groups], dtype=float)
    s2 = np.array([np.var(g, ddof=1) for g in groups])
    if (s2 <= 0).any():
        return True
    k, n = len(groups), d.sum()
    pooled = (d * s2).sum() / n
    stat = (n * np.log(pooled) - (d * np.log(s2)).sum()) / (1 + ((1 / d).sum() - 1 / n) / (3 * (k - 1)))
    return not (special.chdtrc(k - 1, stat) < HOMOGENEITY_P)


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
    """Finished runs (the one done rule, ``tracking.done.finished_rows``: FINISHED with the test
    metrics) whose test scores were read, one row each (the first of duplicates)."""
    fin = runs[finished_rows(runs) & runs["run_id"].isin(list(scores))].copy()
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
            alpha: float = ALPHA, metrics: list[str] | None = None, margin: float = equivalence.MARGIN,
            method: str = "delong") -> pd.DataFrame:
    """Main effects, tokenizer interactions and per-background tokenizer contrasts, one row each.

    ``runs``: one row per train run with columns tokenizer, pooling, met, vect, seed, run_id,
    status (``results.grid_runs`` has them); ``scores``: run id -> {"labels", "scores",
    "process"} arrays (``results.test_scores``). Finished runs with scores count. ``metrics``:
    ``auc`` and the ``auc_vs_<background>`` to compare (default: all the scores allow).
    ``method``: the test-set part, ``delong`` or ``bootstrap`` (``n_boot`` resamples from ``seed``).

    Columns: ``comparison`` (e.g. ``binned - direct``), ``family`` (``FAMILIES``), ``kind``
    (main / interaction / background), ``factor``, ``level_a``, ``level_b``, ``at`` (the
    interaction's levels or the background), ``metric``, ``estimate`` (mean matched difference
    of test AUC), ``ci_low`` / ``ci_high`` (95% t interval, seeds and test events),
    ``ci90_low`` / ``ci90_high`` (the 90% interval of TOST), ``se``, ``df``, ``p_value`` (the
    same t statistic), ``p_holm`` (Holm within the row's family), ``significant`` (p_holm <
    alpha), ``p_lower`` / ``p_upper`` / ``p_equiv`` (TOST against ``margin``: a non-inferior to
    b, b non-inferior to a, both), ``verdict`` (``equivalence.verdict``; empty for interactions,
    whose margin would be another question), ``n_pairs`` (matched units with a value),
    ``n_seeds``, ``n_single`` (strata with one seed), ``seed_var_known`` (False: one seed
    everywhere, test-set noise only), ``seed_var_pooled`` (False: the strata's contrasts scattered
    more than their pooled seed variance explains; the seed part is read from that scatter,
    ``between_strata``).
    """
    margin = equivalence.check_margin(margin)
    fin = finished(runs, scores)
    rows = []
    if len(fin):
        ids = fin["run_id"].tolist()
        metrics = metrics or available_metrics(fin, scores)
        cache = {m: run_aucs(scores, ids, m, method, n_boot, seed) for m in metrics}
        for c in _contrasts(fin, metrics):
            auc, cov = cache[c["metric"]]
            units = usable(contrast_units(fin, c.pop("terms")), auc)
            if len(units) == 0:
                continue
            iv = t_interval(units, auc, cov, alpha)
            lo90, hi90 = equivalence.interval90(iv.estimate, iv.se, iv.df, alpha)
            p_lower, p_upper = equivalence.one_sided(iv.estimate, iv.se, iv.df, margin) if c["kind"] != "interaction" else (np.nan, np.nan)
            comparison = f"{_fmt_level(c['level_a'])} - {_fmt_level(c['level_b'])}"
            rows.append({**c, "comparison": comparison, "family": family(c["kind"], c["factor"]), "level_a": _fmt_level(c["level_a"]),
                         "level_b": _fmt_level(c["level_b"]), "estimate": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
                         "ci90_low": lo90, "ci90_high": hi90, "se": iv.se, "df": iv.df, "p_value": iv.p_value, "p_lower": p_lower,
                         "p_upper": p_upper, "p_equiv": max(p_lower, p_upper), "n_pairs": len(units), "n_seeds": len(set(units.seeds)),
                         "n_single": iv.n_single, "seed_var_known": iv.seed_var_known, "seed_var_pooled": iv.pooled})
    for fam in dict.fromkeys(r["family"] for r in rows):  # Holm within each family
        members = [r for r in rows if r["family"] == fam]
        for r, ph in zip(members, holm(np.array([r["p_value"] for r in members], dtype=float)), strict=True):
            r["p_holm"] = float(ph)
            r["significant"] = bool(ph < alpha)  # NaN is never significant
            r["verdict"] = equivalence.verdict(r["estimate"], r["significant"], r["p_lower"], r["p_upper"], alpha) \
                if r["kind"] != "interaction" else ""
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    out["significant"] = out["significant"].astype(bool)
    out.attrs.update(margin=margin, test_noise=method)
    return out


def conditional_effects(runs: pd.DataFrame, scores: dict[str, dict], a: str, b: str, n_boot: int = 1000, seed: int = 0,
                        alpha: float = ALPHA, method: str = "delong") -> pd.DataFrame:
    """The tokenizer contrast ``a - b`` within each level of pooling, MET and vect: where is the
    gap largest? Intervals only (these are views of the interactions, not further tests)."""
    fin = finished(runs, scores)
    rows = []
    if len(fin):
        auc, cov = run_aucs(scores, fin["run_id"].tolist(), "auc", method, n_boot, seed)
        for g in INTERACTS_WITH_TOKENIZER:
            for lv in _levels(fin, g):
                units = usable(contrast_units(fin, [({"tokenizer": a, g: lv}, 1.0), ({"tokenizer": b, g: lv}, -1.0)]), auc)
                if len(units) == 0:
                    continue
                iv = t_interval(units, auc, cov, alpha)
                rows.append({"comparison": f"{a} - {b}", "factor": g, "level": _fmt_level(lv), "estimate": iv.estimate,
                             "ci_low": iv.ci_low, "ci_high": iv.ci_high, "n_pairs": len(units), "n_seeds": len(set(units.seeds))})
    return pd.DataFrame(rows, columns=["comparison", "factor", "level", "estimate", "ci_low", "ci_high", "n_pairs", "n_seeds"])


def cell_intervals(runs: pd.DataFrame, scores: dict[str, dict], metric: str = "auc", by: tuple[str, ...] = FACTORS,
                   n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA, method: str = "delong") -> pd.DataFrame:
    """Mean test AUC (or ``auc_vs_<bkg>``) of each group ``by`` over its runs, with its 95% t
    interval (seeds within each cell of the group, and test events: ``t_interval``). Runs
    without a value for ``metric`` are left out (``n_runs`` counts those with one); ``n_single``
    counts the group's cells with one seed."""
    fin = finished(runs, scores)
    cols = [*by, "metric", "mean", "ci_low", "ci_high", "n_runs", "n_seeds", "n_single", "seed_var_known"]
    if not len(fin):
        return pd.DataFrame(columns=cols)
    auc, cov = run_aucs(scores, fin["run_id"].tolist(), metric, method, n_boot, seed)
    cell_id = pd.factorize(pd.MultiIndex.from_frame(fin[list(FACTORS)].astype(str)))[0]  # (R,) each run's cell, computed once
    group_id, keys = pd.factorize(pd.MultiIndex.from_frame(fin[list(by)]))
    seeds = fin["seed"].to_numpy()
    borrow = grid_seed_variance(cell_id, auc, cov) if tuple(by) == tuple(FACTORS) else None
    rows = []
    for g, key in enumerate(keys):
        idx = np.flatnonzero(group_id == g)
        coef = np.zeros((len(idx), len(fin)))
        coef[np.arange(len(idx)), idx] = 1.0
        units = usable(Units(coef, pd.factorize(cell_id[idx])[0], seeds[idx]), auc)
        if not len(units):
            continue
        iv = t_interval(units, auc, cov, alpha, borrow=borrow)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "metric": metric, "mean": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
                     "n_runs": len(units), "n_seeds": len(set(units.seeds)), "n_single": iv.n_single, "seed_var_known": iv.seed_var_known})
    return pd.DataFrame(rows, columns=cols)


def grid_seed_variance(cell_id: np.ndarray, auc: np.ndarray, cov: np.ndarray) -> tuple[float, float] | None:
    """The seed variance of one run pooled over every cell of the grid, with its df (sum of
    n_c - 1), for single cells: their own seeds alone give 1 df at two seeds (t = 12.7). None
    when fewer than two cells have two seeds with values, or when Bartlett's test says the
    cells' spreads differ (each cell then keeps its own, as before)."""
    ok = np.isfinite(auc)
    groups = [g for g in (np.flatnonzero((cell_id == c) & ok) for c in np.unique(cell_id)) if len(g) > 1]
    if len(groups) < 2:
        return None
    if not _homogeneous([auc[g] for g in groups]):
        return None
    sp = seed_pool(groups, auc, np.asarray(cov))
    return sp.pooled, float(sp.df.sum())


# --------------------------------------------------------------------------- the omnibus model

OMNIBUS_COLUMNS = ["term", "df", "F", "p_value"]


def omnibus(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = 1000, seed: int = 0,
            method: str = "delong") -> tuple[pd.DataFrame, dict]:
    """Is the tokenizer effect there at all? A factorial model of test AUC beside the contrasts.

    ``auc ~ seed + pooling*met*vect + tokenizer + tokenizer:(pooling + met + vect)`` by least
    squares (seed as a block; the other factors' cells with all their interactions), with a type-II ANOVA F test per term and one F test of every
    tokenizer term together (main effect and interactions) against the model without them.
    A linear mixed model with seed as a random intercept (statsmodels ``MixedLM``, REML) gives
    the variance components: between seeds (shared luck of a seed across cells: ~0 when runs
    draw from their own streams), within cells (run to run), and the test-set noise of one run's
    AUC (its DeLong or bootstrap variance). Effects in units of the seed spread divide the tokenizer rows
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
    auc, cov = run_aucs(scores, fin["run_id"].tolist(), "auc", method, n_boot, seed)
    d = fin[[*FACTORS, "seed"]].copy()
    d["auc"] = auc
    d = d.dropna(subset=["auc"])
    d["met"] = d["met"].map(_fmt_level)
    comps["test_var"] = float(np.nanmean(np.diag(cov)[np.isfinite(auc)])) if np.isfinite(auc).any() else np.nan
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
