"""The answer in words: the ranking of the tokenizers, one verdict sentence per pair against the
equivalence margin, the smallest difference the grid could have detected, the method and its
caveats, and the verdict table of the first screen."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from thesis_mlflow.report import equivalence, stats
from thesis_mlflow.spec import SCHEME


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
          "summed; where the strata's own contrasts scatter more than that explains, the seed part is read from their scatter, with "
          "the strata minus one degrees of freedom) and the "
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
                   f"grids of 5 (78%, tests/test_stats.py). Retrain those runs before quoting their intervals.")
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
                   f"did not use the pooled seed variance: their strata's own differences scatter more than the seeds explain "
                   f"(one configuration with wild seeds, or configurations that differ for real), so the interval is read from "
                   f"that scatter, with the strata minus one degrees of freedom (seed_var_pooled in the effects table).")
    return out


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
