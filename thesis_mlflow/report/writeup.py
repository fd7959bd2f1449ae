"""The PhD summary from plain tables (built by ``thesis_mlflow.report.build`` from MLflow queries).

Inputs are a runs table (one row per train run: factors, status, metrics) and, per finished
run, its stored test labels, scores and process labels. Outputs: the written answer, the
per-cell table with seed-aware 95% intervals, the factorial effects (main effects, tokenizer
interactions, per background) with Holm-corrected p-values, per-background figures of merit,
plotly figures for the page, vector PDF figures for the thesis, and HTML / CSV / LaTeX files.
The statistics are ``thesis_mlflow.report.stats``'s; this module arranges and words them.

In a notebook::

    from thesis_mlflow.report import writeup as report, results
    runs = results.grid_runs("binning_vs_direct")
    scores = results.scores_of(runs)                    # run id -> labels, scores, process
    table = report.effects(runs, scores, n_boot=1000, seed=0)
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from thesis_mlflow.learn import metrics
from thesis_mlflow.report import equivalence, stats
from thesis_mlflow.report.palette import NEUTRAL, POOLING_COLORS, PROCESS_COLORS, other_color, tokenizer_color
from thesis_mlflow.spec import LEVELS, METS, SCHEME, VECTS
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


# --------------------------------------------------------------------------- tables


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


# --------------------------------------------------------------------------- the answer, in words


def _oriented(eff: pd.DataFrame, a: str, b: str, **match) -> dict | None:
    """The row comparing tokenizers a and b, turned to read ``a - b``."""
    sel = eff[((eff["level_a"] == a) & (eff["level_b"] == b)) | ((eff["level_a"] == b) & (eff["level_b"] == a))]
    for k, v in match.items():
        sel = sel[sel[k] == v]
    if not len(sel):
        return None
    r = sel.iloc[0].to_dict()
    if r["level_a"] != a:
        r["estimate"], r["ci_low"], r["ci_high"] = -r["estimate"], -r["ci_high"], -r["ci_low"]
        if "ci90_low" in r:
            r["ci90_low"], r["ci90_high"] = -r["ci90_high"], -r["ci90_low"]
            r["p_lower"], r["p_upper"] = r["p_upper"], r["p_lower"]
    return r


def _p(p: float) -> str:
    return "n/a" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"= {p:.3f}")


def ranking(eff: pd.DataFrame, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Tokenizers ranked by matched contrasts (the same cells and seeds on both sides), never by
    their unmatched means: ``score`` is the mean of the tokenizer's matched differences against
    each other tokenizer; ``beats`` / ``loses`` count the Holm-significant ones."""
    main = eff[(eff["kind"] == "main") & (eff["factor"] == "tokenizer")]
    toks = [t for t in stats.CONTRAST_ORDER["tokenizer"] if t in set(main["level_a"]) | set(main["level_b"])]
    rows = []
    for t in toks:
        diffs = [r for r in (_oriented(main, t, u) for u in toks if u != t) if r]
        rows.append({"tokenizer": t, "score": float(np.mean([r["estimate"] for r in diffs])) if diffs else np.nan,
                     "beats": sum(bool(r["significant"]) and r["estimate"] > 0 for r in diffs),
                     "loses": sum(bool(r["significant"]) and r["estimate"] < 0 for r in diffs), "n_others": len(diffs)})
    return pd.DataFrame(rows, columns=["tokenizer", "score", "beats", "loses", "n_others"]).sort_values(
        "score", ascending=False, kind="stable").reset_index(drop=True)


def _against(t: str, u: str, reference: str) -> tuple[str, str]:
    """A pair read against the reference tokenizer where it is one of the two: (other, reference)."""
    return (u, t) if t == reference else (t, u)


def _margin_text(margin: float) -> str:
    """The margin as the page writes it: 0.005, 0.01 (four decimals at most, no trailing zeros)."""
    return f"{margin:.4f}".rstrip("0").rstrip(".")


def verdict_sentence(a: str, b: str, r: dict, margin: float, alpha: float = stats.ALPHA) -> str:
    """The pair's verdict (``equivalence.verdict``) in words, ``r`` read as ``a - b``."""
    v = r.get("verdict") or "inconclusive"
    if r["level_a"] != a:  # the row was turned: a one-sided claim turns with it
        v = {"better": "worse", "worse": "better", "non-inferior": "non-superior", "non-superior": "non-inferior"}.get(v, v)
    lo, hi, lo90, hi90 = r["ci_low"], r["ci_high"], r["ci90_low"], r["ci90_high"]
    m = _margin_text(margin)
    ci90 = f"90% CI [{lo90:+.4f}, {hi90:+.4f}]"
    if v == "equivalent":
        extra = (f"; a difference is detectable (p_Holm {_p(r['p_holm'])}) but smaller than the margin" if r["significant"] else "")
        return f"{a} is equivalent to {b} within ±{m} AUC: {ci90} lies inside the margin (TOST p {_p(r['p_equiv'])}){extra}."
    if v == "better":
        return f"{a} is better than {b} by {lo:.4f} to {hi:.4f} in AUC (95% CI; p_Holm {_p(r['p_holm'])})."
    if v == "worse":
        return f"{a} is worse than {b} by {-hi:.4f} to {-lo:.4f} in AUC (95% CI; p_Holm {_p(r['p_holm'])})."
    if v == "non-inferior":
        return (f"{a} is non-inferior to {b}: not worse by {m} AUC or more ({ci90} above -{m}), though neither equivalent within "
                f"±{m} nor detectably better.")
    if v == "non-superior":
        return (f"{b} is non-inferior to {a}: {a} is not better by {m} AUC or more ({ci90} below +{m}), though neither equivalent "
                f"within ±{m} nor detectably worse.")
    return (f"{a} against {b}: inconclusive. The difference is not detectable after Holm and {ci90} reaches beyond ±{m}: "
            f"neither a difference nor equivalence is shown; more seeds would narrow it.")


def detectable(row: dict, n_tests: int, alpha: float = stats.ALPHA, power: float = 0.8) -> float:
    """The smallest difference the row's two-sided t test would find with ``power`` at Holm's
    strictest level (alpha / n_tests), from its measured standard error and degrees of freedom.

    Solved on the noncentral t (the statistic's law when the difference is real and the standard
    error is itself estimated with ``df`` degrees of freedom): the sum of central quantiles,
    (t_crit + t_power) x se, promised 80% but gave 0.79 at 9 df and 0.72 at 2 df."""
    from scipy import optimize
    from scipy import stats as sps

    df = float(row["df"]) if np.isfinite(row["df"]) else 1e9
    crit = sps.t.ppf(1 - alpha / (2 * max(n_tests, 1)), df)

    def short(ncp: float) -> float:  # power at this noncentrality, less the power asked for
        # the lower tail as the mirror's upper one (scipy's nct.cdf far in the tail gives NaN)
        return sps.nct.sf(crit, df, ncp) + sps.nct.sf(crit, df, -ncp) - power

    hi = crit + sps.norm.ppf(power) + 1.0
    while short(hi) < 0:  # few degrees of freedom: the noncentrality needed grows fast
        hi *= 2
    return float(optimize.brentq(short, 0.0, hi, xtol=1e-10) * row["se"])


def answer(tokenizers: pd.DataFrame, eff: pd.DataFrame, cond: pd.DataFrame, alpha: float = stats.ALPHA,
           streams: tuple[int, int] | None = None, reference: str = "direct") -> list[str]:
    """The conclusion in sentences, generated from the tables (never typed by hand).

    A best tokenizer is named only when it beats every other one on matched cells after Holm
    within the primary family (the tokenizer comparisons); then one verdict per pair, "as good
    as" included (``equivalence``: equivalent within the margin, better, worse, non-inferior,
    inconclusive), each pair read against ``reference`` where it is one of the two; then the
    numbers, and how large a difference the grid could have detected. The claims come from the
    primary family only; interactions and per-background rows follow as exploration.
    ``streams``: (runs without a random-stream id, runs): runs trained before independent
    streams get a warning."""
    main = eff[(eff["kind"] == "main") & (eff["factor"] == "tokenizer")] if len(eff) else eff
    if not len(tokenizers) or not len(main):
        out = ["Not enough finished runs with test scores for a comparison of tokenizers yet."]
        return out + _caveats(eff, streams)
    margin = float(eff.attrs.get("margin", equivalence.MARGIN))
    rank = ranking(eff, alpha)
    top = rank.iloc[0]
    others = rank["tokenizer"].iloc[1:].tolist()
    out = []
    one_seed = "seed_var_known" in main and not main["seed_var_known"].any()
    if top["beats"] == top["n_others"] == len(others) and len(others) and one_seed:
        out.append(f"On this one seed, {top['tokenizer']} beats every other tokenizer on matched cells after Holm's correction, but "
                   f"with one seed the training variance is unknown: these intervals cover test-set noise only, so no tokenizer is "
                   f"named best yet. Run more seeds:")
    elif top["beats"] == top["n_others"] == len(others) and len(others):
        out.append(f"Best tokenizer: {top['tokenizer']}. It beats every other tokenizer on matched cells (same pooling, MET, vect "
                   f"and seed) after Holm's correction:")
    else:
        out.append("No tokenizer is detectably best on this grid: none beats every other one on matched cells after Holm's correction.")
    # each tokenizer against the reference first (the study's question), in the spec's order
    # (binned before vqvae: the same order on every page), then the other pairs in rank order
    order = {t: i for i, t in enumerate(stats.CONTRAST_ORDER["tokenizer"])}
    pairs = sorted((_against(t, u, reference) for t, u in itertools.combinations(rank["tokenizer"], 2)),
                   key=lambda p: (p[1] != reference, order.get(p[0], 99) if p[1] == reference else 0))
    oriented = [(a, b, _oriented(main, a, b)) for a, b in pairs]  # each pair's row, read a - b
    out += [verdict_sentence(a, b, r, margin, alpha) for a, b, r in oriented if r is not None]
    for a, b, r in oriented:
        if r is None:
            out.append(f"{a} and {b} share no matched cells: not compared.")
            continue
        found = bool(r["significant"])
        verdict = ("found" if found else "not detectable") + f" at {alpha:.0%} after Holm"
        cells = r["n_pairs"] // max(r["n_seeds"], 1)
        out.append(f"{a} - {b}: ΔAUC = {r['estimate']:+.4f}, 95% CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], 90% CI "
                   f"[{r['ci90_low']:+.4f}, {r['ci90_high']:+.4f}], p {_p(r['p_value'])} unadjusted, p_Holm {_p(r['p_holm'])} "
                   f"({verdict}); {r['n_pairs']} matched pairs ({cells} cells x {r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}, "
                   f"{r['df']:.0f} degrees of freedom).")
    # a pair found equivalent needs no "could have detected": its interval already lies within the margin
    undetected = [r for _, _, r in oriented if r and not r["significant"] and r.get("verdict") != "equivalent"]
    if undetected:
        mdd = [detectable(r, len(main), alpha) for r in undetected if np.isfinite(r["se"])]
        if mdd:
            out.append(f"With its measured seed and test-set spread this grid could have detected a tokenizer difference of about "
                       f"{min(mdd):.4f} to {max(mdd):.4f} in AUC (80% power at Holm's strictest level in the primary family, from "
                       f"the same standard error and degrees of freedom as the intervals); the differences marked not detectable are "
                       f"smaller than that or absent.")
    # an unmatched ranking that contradicts the matched one (partial grid, binned_ambre at one vect)
    means = dict(zip(tokenizers["tokenizer"], tokenizers["mean"], strict=True)) if "mean" in tokenizers else {}
    for t, u in itertools.combinations(rank["tokenizer"], 2):
        r = _oriented(main, t, u)
        if r and t in means and u in means and np.sign(means[t] - means[u]) * np.sign(r["estimate"]) < 0:
            out.append(f"Caution: {u}'s mean over its own cells ({means[u]:.4f}) is above {t}'s ({means[t]:.4f}), but on matched cells "
                       f"{t} - {u} = {r['estimate']:+.4f}: their cells differ (a partial grid, or a tokenizer run at some levels only), "
                       f"so the per-tokenizer means are not comparable; the matched difference is the comparison.")
    if len(others):
        runner = others[0]
        c = cond[(cond["comparison"] == f"{top['tokenizer']} - {runner}")] if len(cond) else cond
        if len(c):
            hi, lo = c.loc[c["estimate"].abs().idxmax()], c.loc[c["estimate"].abs().idxmin()]
            out.append(f"The gap between {top['tokenizer']} and {runner} is largest with {hi['factor']} = {hi['level']} "
                       f"(ΔAUC = {hi['estimate']:+.4f}, [{hi['ci_low']:+.4f}, {hi['ci_high']:+.4f}]) and smallest with "
                       f"{lo['factor']} = {lo['level']} ({lo['estimate']:+.4f}, [{lo['ci_low']:+.4f}, {lo['ci_high']:+.4f}]).")
        bk = eff[(eff["kind"] == "background")]
        rows = [r for r in (_oriented(bk, top["tokenizer"], runner, at=b) for b in bk["at"].unique()) if r]
        if rows:
            w = max(rows, key=lambda r: abs(r["estimate"]))
            out.append(f"Against one background at a time, the gap between {top['tokenizer']} and {runner} is largest for {w['at']}: "
                       f"ΔAUC = {w['estimate']:+.4f}, [{w['ci_low']:+.4f}, {w['ci_high']:+.4f}], Holm-adjusted p {_p(w['p_holm'])}.")
    inter = eff[eff["kind"] == "interaction"]
    sig = inter[inter["significant"]]
    if len(inter):
        if len(sig):
            names = "; ".join(f"{r.comparison} changes with {r.at} by {r.estimate:+.4f} (p_Holm {_p(r.p_holm)})" for r in sig.itertuples())
            out.append(f"{len(sig)} of {len(inter)} tokenizer interactions are significant after Holm within their family: {names}.")
        else:
            out.append(f"None of the {len(inter)} tokenizer interactions (with pooling, MET, vect) is significant after Holm within "
                       "their family: no detectable dependence of the tokenizer differences on those factors.")
    return out + _caveats(eff, streams)


METHOD = ("Method: runs are independent replicates by construction: each run draws its initial weights, data order and dropout "
          "masks from its own random stream (scheme {scheme}, derived from its configuration and seed). Comparisons are matched "
          "contrasts (same other factors and seed). Each interval and its p-value come from one t statistic whose variance adds the "
          "seed-to-seed spread (one seed variance pooled over the strata, its degrees of freedom the strata's seeds minus one, "
          "summed; strata whose spreads differ by Bartlett's test keep their own, with Satterthwaite's degrees of freedom) and the "
          "test-set noise ({noise}): both answer the same question, how the result would vary with new seeds and a new test sample, "
          "so an interval excludes 0 exactly when its unadjusted p < 0.05. Holm's correction runs within each family of the "
          "effects table: {families}; the answer's claims rest on the primary family only. \"As good as\" is tested against a margin "
          "of ±{margin} AUC by two one-sided tests (TOST) with the same standard error and degrees of freedom: equivalent when the "
          "90% interval lies inside the margin, non-inferior when it lies above -{margin}. The intervals are not adjusted for "
          "multiplicity.")
NOISE = {"delong": "DeLong's covariance of the runs' AUCs on their shared test events, paired by construction",
         "bootstrap": "paired bootstrap resamples of the test events, one resample applied to every run"}


def method_sentence(eff: pd.DataFrame) -> str:
    """How the numbers were made, with this table's families, margin and test-set method."""
    fams = eff["family"].value_counts() if len(eff) and "family" in eff else pd.Series(dtype=int)
    listed = "; ".join(f"{f} ({stats.FAMILIES[f]}: {int(fams[f])} comparison{'s' if fams[f] != 1 else ''})"
                       for f in stats.FAMILIES if f in fams) or "none"
    margin = _margin_text(float(eff.attrs.get("margin", equivalence.MARGIN)))
    return METHOD.format(scheme=SCHEME, noise=NOISE[eff.attrs.get("test_noise", "delong")], families=listed, margin=margin)


def omnibus_sentences(table: pd.DataFrame, comps: dict) -> list[str]:
    """The omnibus test and the variance components in words."""
    if not len(table):
        return [f"Factorial model not fitted: {comps.get('note') or 'no data'}."] if comps else []
    t = table.iloc[0]
    out = [f"All tokenizer terms together (main effect and its interactions with the other factors): F({t['df']:.0f}, "
           f"{comps.get('resid_df', float('nan')):.0f}) = {t['F']:.2f}, p {_p(t['p_value'])}, from a least-squares factorial model "
           f"of the runs' test AUC with seed as a block. Like any ANOVA of AUCs measured on one test set, it is conditional on that "
           f"test set (it sees the training noise, not the test-set noise): read it beside the intervals, which include both."]
    if np.isfinite(comps.get("within_var", np.nan)):
        out.append(f"Variance components of one run's test AUC (mixed model, seed as a random intercept): within a cell, seed to seed "
                   f"{comps['within_var']:.2e} (sd {comps['within_sd']:.4f}); shared by the cells of one seed {comps['seed_var']:.2e}; "
                   f"test-set noise {comps['test_var']:.2e} (sd {np.sqrt(comps['test_var']):.4f}). The effects table's in_seed_sd "
                   f"column gives each difference in units of the within-cell seed sd.")
    return out


def _caveats(eff: pd.DataFrame, streams: tuple[int, int] | None) -> list[str]:
    out = [method_sentence(eff)]
    if streams and streams[0]:
        out.append(f"Warning: {streams[0]} of {streams[1]} runs carry no random-stream id (trained before scheme {SCHEME}): their "
                   f"seeds shared the data order and, where parameters coincide, the initial weights across cells, so they are not "
                   f"independent replicates and the intervals above may be too narrow. In a simulation where half of a run's seed "
                   f"noise is shared across the cells of its seed, 95% intervals of a main effect covered the truth in only about 4 "
                   f"grids of 5 (80%, tests/test_stats.py). Retrain those runs before quoting their intervals.")
    if len(eff) and not eff["seed_var_known"].all():
        out.append("Only one seed per cell in some comparisons: their intervals cover test-set noise only, not training variance; "
                   "run more seeds before quoting them as the uncertainty of a result.")
    elif len(eff) and (eff["n_single"] > 0).any():
        k = int((eff["n_single"] > 0).sum())
        out.append(f"{k} comparison{'s' if k != 1 else ''} include strata with a single seed: those strata borrow the seed variance "
                   f"of the others (n_single in the effects table).")
    if len(eff) and "seed_var_pooled" in eff and not eff["seed_var_pooled"].all():
        rows = eff[~eff["seed_var_pooled"].astype(bool)]
        out.append(f"{len(rows)} comparison{'s' if len(rows) != 1 else ''} ({', '.join(dict.fromkeys(rows['comparison'] + ' ' + rows['factor']))}) "
                   f"did not pool the seed variance: Bartlett's test found their strata's seed spreads different (p < "
                   f"{stats.HOMOGENEITY_P}), so each stratum kept its own, with Satterthwaite's (fewer) degrees of freedom "
                   f"(seed_var_pooled in the effects table).")
    return out


# --------------------------------------------------------------------------- figures


def _label(row) -> str:
    return f"{row['tokenizer']}-{row['pooling']}-{'met' if row['met'] else 'nomet'}-{row['vect']}v"


def fig_auc_panels(cells: pd.DataFrame) -> go.Figure:
    combos = list(itertools.product(METS, VECTS))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"MET {'in' if m else 'out'}, {v}-vectors" for m, v in combos], shared_yaxes=True)
    for i, (met, vect) in enumerate(combos):
        sub = cells[(cells["met"] == met) & (cells["vect"] == vect)]
        for pool in FACTOR_ORDER["pooling"]:
            s = sub[sub["pooling"] == pool]
            err = {"type": "data", "symmetric": False, "array": (s["auc_ci_high"] - s["test_auc_mean"]).fillna(0),
                   "arrayminus": (s["test_auc_mean"] - s["auc_ci_low"]).fillna(0)}
            fig.add_trace(go.Bar(x=s["tokenizer"], y=s["test_auc_mean"], error_y=err,
                                 name=pool, marker_color=POOLING_COLORS[pool], legendgroup=pool, showlegend=i == 0),
                          row=i // 2 + 1, col=i % 2 + 1)
    lo = max(0.5, float(cells["test_auc_mean"].min()) - 0.03) if len(cells) else 0.5
    fig.update_yaxes(range=[lo, 1.0 if not len(cells) else min(1.0, float(cells["test_auc_mean"].max()) + 0.02)], title_text="test AUC")
    fig.update_layout(barmode="group", title="Test AUC by tokenizer and pooling (mean over seeds, 95% t interval: seeds and test events)", height=650, legend_title="pooling")
    return fig


def fig_rejection(bands: pd.DataFrame, reference: str = "direct") -> go.Figure:
    """Background rejection 1/eps_B against signal efficiency per tokenizer, one column per
    background (and all together): geometric mean over seeds and matched cells, 95% band from
    the seed spread (``curves.rejection_bands``); below, the ratio to ``reference`` on the same
    cells and seeds, with its band."""
    panels = list(dict.fromkeys(bands["background"]))
    ratio = reference in set(bands["tokenizer"]) and bands["tokenizer"].nunique() > 1
    fig = make_subplots(rows=2 if ratio else 1, cols=max(len(panels), 1), subplot_titles=[f"vs {b}" for b in panels], shared_xaxes=True,
                        row_heights=[0.7, 0.3] if ratio else None, vertical_spacing=0.06)
    def trace(x, y, lo, hi, c, tok, row, col, show):
        keep = np.isfinite(lo) & np.isfinite(hi)
        if keep.any():
            fig.add_trace(go.Scatter(x=list(x[keep]) + list(x[keep])[::-1], y=list(hi[keep]) + list(lo[keep])[::-1], fill="toself",
                                     line={"width": 0}, fillcolor=c, opacity=0.2, hoverinfo="skip", showlegend=False, legendgroup=tok),
                          row=row, col=col)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=tok, line={"color": c}, legendgroup=tok, showlegend=show), row=row, col=col)

    for i, bkg in enumerate(panels):
        sub = bands[bands["background"] == bkg]
        for tok in dict.fromkeys(sub["tokenizer"]):
            s = sub[sub["tokenizer"] == tok]
            c = tokenizer_color(tok)
            trace(s["eff"].to_numpy(), s["rejection"].to_numpy(), s["lo"].to_numpy(), s["hi"].to_numpy(), c, tok, 1, i + 1, i == 0)
            if ratio and tok != reference:
                trace(s["eff"].to_numpy(), s["ratio"].to_numpy(), s["ratio_lo"].to_numpy(), s["ratio_hi"].to_numpy(), c, tok, 2, i + 1, False)
        if ratio:
            fig.add_hline(y=1.0, line_color=tokenizer_color(reference), row=2, col=i + 1)
    # one label per decade: with a panel per background, plotly's 2 and 5 between decades overlap
    fig.update_yaxes(type="log", dtick=1, exponentformat="power", row=1)
    fig.update_yaxes(title_text="background rejection 1/ε_B", row=1, col=1)
    if ratio:
        fig.update_yaxes(title_text=f"ratio to {reference}", row=2, col=1)
    fig.update_xaxes(title_text="signal efficiency", row=2 if ratio else 1)
    n = int(bands["n_cells"].max()) if len(bands) else 0
    fig.update_layout(title=f"Rejection against efficiency per tokenizer: geometric mean over seeds and the {n} matched cells, "
                            "95% band from the seed spread; ratio to the reference on the same cells and seeds", height=560 if ratio else 430)
    return fig


def fig_scores(hist: pd.DataFrame, cal: pd.DataFrame) -> go.Figure:
    """Signal-score distributions per process (one panel per tokenizer) and the calibration curve."""
    toks = list(dict.fromkeys(hist["tokenizer"])) if len(hist) else list(dict.fromkeys(cal["tokenizer"]))
    fig = make_subplots(rows=1, cols=len(toks) + 1, subplot_titles=[*(f"{t}: score per process" for t in toks), "calibration"])
    for i, tok in enumerate(toks):
        for proc, g in hist[hist["tokenizer"] == tok].groupby("process", sort=False):
            fig.add_trace(go.Scatter(x=(g["lo"] + g["hi"]) / 2, y=g["density"], mode="lines", line={"shape": "hvh", "color": PROCESS_COLORS.get(proc, NEUTRAL)},
                                     name=proc, legendgroup=proc, showlegend=i == 0), row=1, col=i + 1)
    for tok, g in cal.groupby("tokenizer", sort=False):
        fig.add_trace(go.Scatter(x=g["mean_score"], y=g["signal_fraction"], mode="lines+markers", name=f"{tok} (calibration)",
                                 legendgroup=tok, line={"color": tokenizer_color(tok)}, marker={"color": tokenizer_color(tok)}),
                      row=1, col=len(toks) + 1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#888"}, showlegend=False),
                  row=1, col=len(toks) + 1)
    fig.update_layout(title="Test scores over seeds and matched cells: density per process, and fraction of signal per score bin",
                      height=380)
    return fig


def fig_learning(bands: pd.DataFrame) -> go.Figure:
    """Validation AUC against epoch per tokenizer: mean over seeds and matched cells with its 95%
    band (``curves.learning_bands``; MLflow's UI shows each run, or a group's min / mean / max)."""
    fig = go.Figure()
    for tok in dict.fromkeys(bands["tokenizer"]):
        s = bands[bands["tokenizer"] == tok].dropna(subset=["lo", "hi"])
        c = tokenizer_color(tok)
        if len(s):
            fig.add_trace(go.Scatter(x=list(s["epoch"]) + list(s["epoch"])[::-1], y=list(s["hi"]) + list(s["lo"])[::-1], fill="toself",
                                     line={"width": 0}, fillcolor=c, opacity=0.2, hoverinfo="skip", showlegend=False, legendgroup=tok))
        s = bands[bands["tokenizer"] == tok]
        fig.add_trace(go.Scatter(x=s["epoch"], y=s["val_auc"], mode="lines", name=tok, line={"color": c}, legendgroup=tok))
    n = int(bands["n_cells"].max()) if len(bands) else 0
    fig.update_layout(title=f"Validation AUC against epoch per tokenizer: mean over seeds and the {n} matched cells, 95% band from the "
                            "seed spread", xaxis_title="epoch", yaxis_title="val AUC", height=480)
    fig.update_xaxes(tickformat="d", dtick=1 if len(bands) and bands["epoch"].max() <= 12 else None)  # epochs are whole numbers
    return fig


def fig_binning(binning_runs: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for i, r in enumerate(binning_runs.itertuples()):
        pops = {c: getattr(r, c) for c in binning_runs.columns if c.startswith("pop_")}
        fig.add_trace(go.Bar(x=list(pops), y=list(pops.values()), name=f"vect={r.vect} phi={r.phi} fit_on={r.fit_on}",
                             marker_color=other_color(i)))
    fig.update_layout(title="Binning occupancy on train (each bin should hold ~1/n_bins)", yaxis_title="fraction", barmode="group", height=450)
    return fig


def fig_codebook(vq_hist: dict[str, dict[str, list[tuple[int, float]]]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["codebook usage", "perplexity"])
    for i, (name, h) in enumerate(vq_hist.items()):
        for col, key in ((1, "codebook_usage"), (2, "perplexity")):
            if h.get(key):
                x, y = zip(*h[key], strict=True)
                fig.add_trace(go.Scatter(x=x, y=y, name=f"{name} {key}", mode="lines+markers", line={"color": other_color(i)}), row=1, col=col)
    fig.update_layout(title="VQ-VAE codebook health against epoch", height=420)
    return fig


# the columns a reader looks for first in the long tables (the rest follow, in their order)
EFFECT_KEY_COLUMNS = ("comparison", "family", "verdict", "estimate", "ci_low", "ci_high", "ci90_low", "ci90_high", "p_holm")
CELL_KEY_COLUMNS = ("tokenizer", "pooling", "met", "vect", "n_seeds", "test_auc_mean", "auc_ci_low", "auc_ci_high")
VERDICT_SYMBOLS = {"equivalent": "diamond", "better": "triangle-right", "worse": "triangle-left", "non-inferior": "square",
                   "non-superior": "square-open", "inconclusive": "circle-open"}


def verdict_rows(eff: pd.DataFrame, reference: str = "direct") -> list[dict]:
    """The primary family's rows (the tokenizer comparisons), each read against ``reference``
    where it is one of the pair (``binned - direct``), in the table's order."""
    prim = eff[eff["family"] == "primary"] if len(eff) else eff
    out = []
    for r in prim.itertuples():
        a, b = (r.level_b, r.level_a) if r.level_a == reference else (r.level_a, r.level_b)
        o = _oriented(prim, a, b)
        if o is not None:
            out.append(o)
    return out


def verdict_table(eff: pd.DataFrame, margin: float, reference: str = "direct") -> pd.DataFrame:
    """One line per tokenizer pair: its verdict, the difference, both intervals, p_Holm, the margin."""
    return pd.DataFrame([{"pair": f"{r['level_a']} vs {r['level_b']}", "verdict": r["verdict"], "ΔAUC": f"{r['estimate']:+.4f}",
                          "95% CI": f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", "90% CI (TOST)": f"[{r['ci90_low']:+.4f}, {r['ci90_high']:+.4f}]",
                          "p_Holm": _p(r["p_holm"]), "margin": f"±{margin:g}"} for r in verdict_rows(eff, reference)])


def fig_forest(eff: pd.DataFrame, margin: float, primary: bool = True, reference: str = "direct") -> go.Figure:
    """The comparisons against the ±margin band (shaded): the 90% interval thick (TOST reads it),
    the 95% thin, a marker per verdict. ``primary``: the tokenizer pairs, each read against
    ``reference`` and drawn in its tokenizer's colour; else every other row but the per-background
    ones (other factors, interactions), neutral."""
    if primary:
        rows = verdict_rows(eff, reference)
    else:
        rest = eff[(eff["family"] != "primary") & (eff["kind"] != "background")] if len(eff) else eff
        rows = [r._asdict() for r in rest.itertuples(index=False)]
    rows = rows[::-1]  # plotly draws the first category at the bottom
    fig = go.Figure()
    fig.add_vrect(x0=-margin, x1=margin, fillcolor="#888888", opacity=0.18, line_width=0, layer="below")
    fig.add_vline(x=0, line_dash="dot", line_color=NEUTRAL)
    labels = [f"{r['level_a']} - {r['level_b']}" + (f" ({r['at']})" if r.get("at") else "" if primary else f" [{r['factor']}]")
              for r in rows]
    for r, y in zip(rows, labels, strict=True):
        c, group = (tokenizer_color(r["level_a"]), r["level_a"]) if primary else (NEUTRAL, None)
        for lo, hi, width in ((r["ci_low"], r["ci_high"], 1.5), (r["ci90_low"], r["ci90_high"], 7)):
            fig.add_trace(go.Scatter(x=[lo, hi], y=[y, y], mode="lines", line={"color": c, "width": width}, legendgroup=group,
                                     showlegend=False, hoverinfo="skip"))
    for verdict, symbol in VERDICT_SYMBOLS.items():
        sel = [(r, y) for r, y in zip(rows, labels, strict=True) if r.get("verdict") == verdict]
        if sel:
            fig.add_trace(go.Scatter(x=[r["estimate"] for r, _ in sel], y=[y for _, y in sel], mode="markers", name=verdict,
                                     marker={"symbol": symbol, "size": 12, "color": "white", "line": {"color": NEUTRAL, "width": 2}}))
    bare = [(r, y) for r, y in zip(rows, labels, strict=True) if r.get("verdict") not in VERDICT_SYMBOLS]
    if bare:  # interactions: no equivalence test, the estimate alone
        fig.add_trace(go.Scatter(x=[r["estimate"] for r, _ in bare], y=[y for _, y in bare], mode="markers", name="estimate (no verdict)",
                                 marker={"symbol": "circle", "size": 8, "color": NEUTRAL}))
    what = "Tokenizer comparisons" if primary else "Other factors and interactions"
    fig.update_layout(title=f"{what} against the ±{margin:g} AUC margin (shaded): 90% interval thick (TOST), 95% thin; marker: verdict",
                      xaxis_title="ΔAUC", height=max(260, 46 * len(rows) + 140), margin={"l": 260}, legend_title="verdict")
    return fig


def fig_backgrounds(bkg: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["AUC against one background", "rejection 1/ε_B at ε_S = 50%"])
    for tok in [t for t in FACTOR_ORDER["tokenizer"] if t in set(bkg["tokenizer"])]:
        s = bkg[bkg["tokenizer"] == tok]
        fig.add_trace(go.Bar(x=s["background"], y=s["auc_mean"], name=tok, legendgroup=tok, marker_color=tokenizer_color(tok),
                             error_y={"type": "data", "symmetric": False, "array": s["auc_ci_high"] - s["auc_mean"],
                                      "arrayminus": s["auc_mean"] - s["auc_ci_low"]}), row=1, col=1)
        fig.add_trace(go.Bar(x=s["background"], y=s["rej50_mean"], name=tok, legendgroup=tok, showlegend=False,
                             marker_color=tokenizer_color(tok)), row=1, col=2)
    if len(bkg):
        fig.update_yaxes(range=[max(0.5, float(bkg["auc_ci_low"].min()) - 0.02), min(1.0, float(bkg["auc_ci_high"].max()) + 0.02)], row=1, col=1)
    fig.update_layout(barmode="group", title="Per background process (mean over cells and seeds)", height=450, legend_title="tokenizer")
    return fig


# --------------------------------------------------------------------------- documents


def _tex_escape(text: str) -> str:
    text = str(text)
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    for a, b in (("ΔAUC", r"$\Delta$AUC"), ("ε", r"$\varepsilon$"), ("±", r"$\pm$"), (" x ", r" $\times$ "), ("< ", r"$<$ ")):
        text = text.replace(a, b)
    return text


def _stars(p: float) -> str:
    if pd.isna(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _pm(v: float, lo: float, hi: float, digits: int = 4) -> str:
    """siunitx: value +- half-width of the interval (symmetric to the shown precision in practice)."""
    if pd.isna(lo) or pd.isna(hi):
        return rf"\num{{{v:.{digits}f}}}"
    return rf"\num{{{v:.{digits}f} \pm {(hi - lo) / 2:.{digits}f}}}"


def _tex_table(columns: str, header: str, rows: list[str], caption: str, label: str) -> list[str]:
    """One booktabs table (lines), rows without their trailing ``\\\\``."""
    return [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule", header + r" \\",
            r"\midrule", *(row + r" \\" for row in rows), r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
            rf"\label{{{label}}}", r"\end{table}", ""]


@dataclass
class Report:
    grid: str
    cells: pd.DataFrame
    effects: pd.DataFrame
    missing: pd.DataFrame
    tokenizers: pd.DataFrame = field(default_factory=pd.DataFrame)
    backgrounds: pd.DataFrame = field(default_factory=pd.DataFrame)
    conditional: pd.DataFrame = field(default_factory=pd.DataFrame)
    answer: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    omnibus: pd.DataFrame = field(default_factory=pd.DataFrame)  # stats.omnibus: F tests of the factorial model
    components: dict = field(default_factory=dict)  # its variance components (seed, within cell, test set)
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)  # per run: train vs test AUC, flagged gaps
    rejection: pd.DataFrame = field(default_factory=pd.DataFrame)  # curves.rejection_bands per background ("all" first)
    learning: pd.DataFrame = field(default_factory=pd.DataFrame)  # curves.learning_bands: val AUC per epoch per tokenizer
    margin: float = equivalence.MARGIN  # the equivalence margin the verdicts used
    forests: list = field(default_factory=list)  # fig_forest: the tokenizer pairs, then the other families (the page's first figures)

    def csv(self) -> str:
        out = self.cells.copy()
        out["met"] = out["met"].map(lambda v: "true" if v else "false")  # as the runs' params spell it
        return out.to_csv(index=False, float_format="%.6g")

    def effects_csv(self) -> str:
        return self.effects.to_csv(index=False, float_format="%.6g")

    def tex(self) -> str:
        """The answer and three booktabs tables (siunitx ``\\num``; needs booktabs and siunitx)."""
        g = _tex_escape(self.grid)
        lines = [f"% generated by thesis-mlflow report from the MLflow runs of grid {self.grid}; needs booktabs, siunitx",
                 r"\paragraph{Result.}", " ".join(_tex_escape(s) for s in self.answer), ""]
        lines += _tex_table(
            "llllrccc", r"Tokenizer & Pooling & MET & Vect & $n$ & AUC & $R_{50}$ & $R_{70}$",
            [rf"{_tex_escape(r.tokenizer)} & {r.pooling} & {'yes' if r.met else 'no'} & {r.vect} & {r.n_seeds} & "
             rf"{_pm(r.test_auc_mean, r.auc_ci_low, r.auc_ci_high)} & \num{{{r.rej50_mean:.1f}}} & \num{{{r.rej70_mean:.1f}}}"
             for r in self.cells.itertuples()],
            rf"Test AUC per cell: mean over $n$ seeds $\pm$ half-width of the 95\% $t$ interval (seed spread and test-set "
            rf"noise), and mean background rejection $R_\varepsilon = 1/\varepsilon_B$ at signal efficiency $\varepsilon$; grid \texttt{{{g}}}.",
            "tab:tokenization")
        lines += _tex_table(
            "lllcrl", r"Comparison & Factor & At & $\Delta$AUC & $p_\mathrm{Holm}$ & Verdict",
            [rf"{_tex_escape(r.comparison)} & {_tex_escape(r.factor)} & {_tex_escape(r.at)} & "
             rf"{_pm(r.estimate, r.ci_low, r.ci_high)}\textsuperscript{{{_stars(r.p_holm)}}} & \num{{{r.p_holm:.3g}}} & {r.verdict}"
             for r in self.effects.itertuples()],
            rf"Matched contrasts of test AUC (level a $-$ level b, same other factors and seed) $\pm$ half-width of the 95\% $t$ "
            rf"interval (seed spread and test-set noise); $p$ from the same $t$ statistic, Holm-adjusted within each family "
            rf"({', '.join(dict.fromkeys(self.effects['family'])) if len(self.effects) else 'none'}); * $p<0.05$, "
            rf"** $p<0.01$, *** $p<0.001$; verdict against a margin of $\pm${self.effects.attrs.get('margin', equivalence.MARGIN):g} AUC "
            rf"(TOST, 90\% interval); grid \texttt{{{g}}}.", "tab:tokenization-effects")
        if len(self.effects):
            lines += [r"\begin{figure}[htbp]", r"\centering", r"\includegraphics[width=\linewidth]{figures/effects.pdf}",
                      rf"\caption{{Matched contrasts of test AUC against the $\pm${self.margin:g} AUC equivalence margin (shaded): 90\% "
                      rf"interval thick (the two one-sided tests read it), 95\% thin, filled markers significant after Holm; grid "
                      rf"\texttt{{{g}}}.}}", r"\label{fig:tokenization-effects}", r"\end{figure}", ""]
        if len(self.omnibus):
            lines += _tex_table(
                "lrrr", r"Term & df & $F$ & $p$",
                [rf"{_tex_escape(r.term)} & {r.df:.0f} & \num{{{r.F:.2f}}} & \num{{{r.p_value:.3g}}}" for r in self.omnibus.itertuples()],
                rf"Factorial model of the runs' test AUC (least squares, seed as a block): $F$ tests of the tokenizer terms, together "
                rf"(first row) and one by one; conditional on the test set; grid \texttt{{{g}}}.", "tab:tokenization-omnibus")
        if len(self.backgrounds):
            lines += _tex_table(
                "llcccc", r"Tokenizer & Background & AUC & $R_{30}$ & $R_{50}$ & $R_{70}$",
                [rf"{_tex_escape(r.tokenizer)} & {r.background} & {_pm(r.auc_mean, r.auc_ci_low, r.auc_ci_high)} & "
                 rf"{_pm(r.rej30_mean, r.rej30_ci_low, r.rej30_ci_high, 1)} & {_pm(r.rej50_mean, r.rej50_ci_low, r.rej50_ci_high, 1)} & "
                 rf"{_pm(r.rej70_mean, r.rej70_ci_low, r.rej70_ci_high, 1)}" for r in self.backgrounds.itertuples()],
                rf"Signal against one background process at a time: AUC $\pm$ half-width of its 95\% interval and mean rejection "
                rf"$R_\varepsilon$ $\pm$ half-width of its 95\% interval from the seed spread, over all cells and seeds of each "
                rf"tokenizer; grid \texttt{{{g}}}.", "tab:tokenization-backgrounds")
        return "\n".join(lines) + "\n"

    def html(self, plotly_src: str = "plotly.min.js") -> str:
        """The page a reader opens: the answer, the verdicts and their forest plot in the first
        screen; the other figures; then the tables, long ones collapsed with their key columns
        first; how it was computed, collapsed. Wide tables scroll in their own box, never the page."""
        def table(df: pd.DataFrame) -> str:
            return ("<div class=wide>" + df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="t")
                    + "</div>") if len(df) else "<p>none</p>"

        def folded(title: str, body: str, open_: bool = False) -> str:
            return f"<details{' open' if open_ else ''}><summary><h2>{title}</h2></summary>{body}</details>"

        def figure(fig, div_id: str | None = None) -> str:
            return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id=div_id)

        head = next((i for i, line in enumerate(self.answer) if ": ΔAUC = " in line), len(self.answer))
        parts = [f"<h1>Tokenization study — {html.escape(self.grid)}</h1>"]
        parts.append("<div class=answer id=answer><h2>Answer</h2>" + "".join(f"<p>{html.escape(s)}</p>" for s in self.answer[:head]) + "</div>")
        verdicts = verdict_table(self.effects, self.margin)
        if len(verdicts):
            parts.append(f"<div id=verdicts><h2>Verdicts against a margin of ±{self.margin:g} AUC</h2>" + table(verdicts) + "</div>")
        for i, fig in enumerate(self.forests):
            parts.append(f"<div id=forest-{'primary' if i == 0 else 'others'}>" + figure(fig) + "</div>")
        how = [f"<p>{html.escape(s)}</p>" for s in self.answer[head:]] + [f"<p class=note>{html.escape(n)}</p>" for n in self.notes]
        parts.append(folded("How this was computed (the numbers, the method, warnings)", "".join(how)))
        for fig in self.figures:
            parts.append(figure(fig))
        if len(self.omnibus) or self.components.get("note"):
            parts.append("<h2>Is there a tokenizer effect at all? (factorial model)</h2>" + "".join(
                f"<p>{html.escape(x)}</p>" for x in omnibus_sentences(self.omnibus, self.components))
                + (table(self.omnibus) if len(self.omnibus) else ""))
        parts.append(f"<h2>Missing cells ({len(self.missing)})</h2>" + (table(self.missing) if len(self.missing) else "<p>none: every expected cell has a finished run</p>"))
        parts.append("<h2>Tokenizers (all cells and seeds; 95% t interval)</h2>" + table(self.tokenizers))
        parts.append("<h2>Per background process</h2>" + table(self.backgrounds))
        parts.append("<h2>Where the gap is (best vs runner-up within each level)</h2>" + table(self.conditional))
        key = [c for c in EFFECT_KEY_COLUMNS if c in self.effects.columns]
        parts.append(folded("Effects (matched contrasts of test AUC; 95% and 90% t intervals, p, Holm within each family, TOST "
                            "verdict against the margin)", table(self.effects[key + [c for c in self.effects.columns if c not in key]])))
        cell_key = [c for c in CELL_KEY_COLUMNS if c in self.cells.columns]
        parts.append(folded("Per cell (over seeds; auc_ci: 95% t interval)", table(self.cells[cell_key + [c for c in self.cells.columns
                                                                                                       if c not in cell_key]])))
        if len(self.checks):
            flagged = self.checks[self.checks["flagged"]]
            head_ = (f"{len(flagged)} of {len(self.checks)} runs have a train AUC more than {OVERTRAINING_GAP} above their test AUC"
                     if len(flagged) else f"No run's train AUC exceeds its test AUC by more than {OVERTRAINING_GAP} (largest gap "
                     f"{self.checks['gap'].max():+.4f}, median {self.checks['gap'].median():+.4f}); the 10 largest gaps:")
            parts.append(folded("Overtraining check (train vs test AUC per run)", f"<p>{html.escape(head_)}</p>"
                                + table(flagged if len(flagged) else self.checks.head(10)), open_=bool(len(flagged))))
        style = ("body{font-family:sans-serif;margin:2em;max-width:1300px} table.t{border-collapse:collapse;font-size:13px;margin:1em 0}"
                 ".wide{overflow-x:auto;max-width:100%} summary h2{display:inline} details{margin:1em 0}"
                 "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right} .note{color:#555}"
                 ".answer{background:#f4f8fb;border-left:4px solid #1f77b4;padding:0.2em 1em;margin:1em 0}")
        # plotly.js once, as a file beside the page (offline, and the page stays small)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.grid)} summary</title><style>{style}</style>"
                f"<script src='{plotly_src}'></script></head><body>" + "\n".join(parts) + "</body></html>")
