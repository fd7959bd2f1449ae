""""As good as": TOST against a margin, one verdict per pair, the answer's first sentences, and
their error rates by simulation (equivalence claimed at the margin, found at a zero gap with
thesis-like noise, a winner named at two seeds)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tests.test_stats import _main, simulate
from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.report import answer, equivalence, stats


def _row(est, se, df=10.0, a="binned", b="direct", margin=0.005, significant=None, alpha=0.05) -> dict:
    """An effects row for ``a - b`` as ``stats.effects`` writes it."""
    p = float(2 * sps.t.sf(abs(est) / se, df))
    sig = p < alpha if significant is None else significant
    q = sps.t.ppf(1 - alpha / 2, df)
    lo90, hi90 = equivalence.interval90(est, se, df, alpha)
    pl, pu = equivalence.one_sided(est, se, df, margin)
    return {"comparison": f"{a} - {b}", "family": "primary", "kind": "main", "factor": "tokenizer", "level_a": a, "level_b": b, "at": "",
            "metric": "auc", "estimate": est, "ci_low": est - q * se, "ci_high": est + q * se, "ci90_low": lo90, "ci90_high": hi90,
            "se": se, "df": df, "p_value": p, "p_holm": p, "significant": sig, "p_lower": pl, "p_upper": pu, "p_equiv": max(pl, pu),
            "verdict": equivalence.verdict(est, sig, pl, pu, alpha), "n_pairs": 18, "n_seeds": 3, "n_single": 0, "seed_var_known": True,
            "seed_var_pooled": True}


def test_tost_claims_equivalence_exactly_when_the_90_interval_lies_inside_the_margin():
    """Both one-sided p-values below 5% <=> the 90% interval inside (-margin, +margin), with the
    interval's own t quantile (plants: the 95% interval; the normal quantile at few df)."""
    rng = np.random.default_rng(0)
    for est, se, df in zip(rng.normal(0, 0.004, 400), rng.uniform(0.0005, 0.004, 400), rng.choice([1, 2, 6, 12, np.inf], 400), strict=True):
        pl, pu = equivalence.one_sided(est, se, df, 0.005)
        lo, hi = equivalence.interval90(est, se, df)
        assert (max(pl, pu) < 0.05) == (lo > -0.005 and hi < 0.005), (est, se, df)
    assert equivalence.one_sided(np.nan, 0.001, 5, 0.005) != equivalence.one_sided(np.nan, 0.001, 5, 0.005)  # NaN in, NaN out


@pytest.mark.parametrize("est, se, significant, want", [
    (0.0010, 0.0010, None, "equivalent"),
    (0.0020, 0.0005, None, "equivalent"),  # detectable, but smaller than the margin: still "as good as"
    (0.0300, 0.0050, None, "better"),
    (-0.0300, 0.0050, None, "worse"),
    (0.0040, 0.0030, None, "non-inferior"),  # 90% CI [-0.0014, +0.0094]: not worse by the margin, not shown better
    (-0.0040, 0.0030, None, "non-superior"),
    (0.0000, 0.0100, None, "inconclusive"),
    (0.0300, 0.0050, False, "non-inferior"),  # not significant after Holm: no "better" claim
])
def test_each_verdict_in_its_case(est, se, significant, want):
    assert _row(est, se, significant=significant)["verdict"] == want


def test_verdict_sentences_read_the_pair_against_its_reference():
    """Each verdict in words, with the numbers of its interval; a row stored the other way round
    ("direct - binned") is turned, and so is its one-sided claim (plant: no turn -> "binned is
    better than direct")."""
    s = answer.verdict_sentence("binned", "direct", _row(0.001, 0.001), 0.005)
    assert s.startswith("binned is equivalent to direct within ±0.005 AUC: 90% CI [-0.0008, +0.0028] lies inside the margin")
    s = answer.verdict_sentence("binned", "direct", _row(-0.03, 0.005), 0.005)
    lo, hi = -0.03 - sps.t.ppf(0.975, 10) * 0.005, -0.03 + sps.t.ppf(0.975, 10) * 0.005
    assert s == f"binned is worse than direct by {-hi:.4f} to {-lo:.4f} in AUC (95% CI; p_Holm < 0.001)."
    stored = pd.DataFrame([_row(0.03, 0.005, a="direct", b="binned")])
    turned = answer._oriented(stored, "binned", "direct")
    assert answer.verdict_sentence("binned", "direct", turned, 0.005).startswith("binned is worse than direct by")
    stored = pd.DataFrame([_row(-0.004, 0.003, a="direct", b="binned")])  # direct non-superior to binned = binned non-inferior
    assert answer.verdict_sentence("binned", "direct", answer._oriented(stored, "binned", "direct"), 0.005).startswith(
        "binned is non-inferior to direct: not worse by 0.005 AUC or more (90% CI [-0.0014, +0.0094] above -0.005)")
    assert "inconclusive" in answer.verdict_sentence("binned", "direct", _row(0.0, 0.01), 0.005)


def test_the_answers_first_sentences_are_the_verdicts_against_direct():
    """Three tokenizers: after the headline, one verdict per pair, each tokenizer against direct
    (whatever the ranking), then the numbers (plants: pairs in rank order, 'direct is better
    than vqvae'; the margin of the table not used)."""
    eff = pd.DataFrame([_row(0.0008, 0.0012, a="binned", b="direct", margin=0.01), _row(-0.03, 0.005, a="vqvae", b="direct", margin=0.01),
                        _row(-0.031, 0.005, a="vqvae", b="binned", margin=0.01)], columns=stats.EFFECT_COLUMNS)
    eff.attrs["margin"] = 0.01
    toks = pd.DataFrame({"tokenizer": ["direct", "binned", "vqvae"], "mean": [0.80, 0.80, 0.77]})
    ans = answer.answer(toks, eff, pd.DataFrame())
    assert ans[0].startswith("No tokenizer is detectably best")
    assert ans[1].startswith("binned is equivalent to direct within ±0.01 AUC")
    assert ans[2].startswith("vqvae is worse than direct by")
    assert ans[3].startswith("vqvae is worse than binned by") or ans[3].startswith("binned is better than vqvae by")
    assert ans[4].startswith("binned - direct: ΔAUC = +0.0008") and "90% CI" in ans[4]
    method = next(s for s in ans if s.startswith("Method:"))
    assert "±0.01 AUC" in method and "primary (the tokenizer comparisons: 3 comparisons)" in method
    # the one pair not found is equivalent: no "could have detected" sentence for it (its 90%
    # interval already lies inside the margin); an inconclusive pair keeps it
    assert not any("could have detected" in x for x in ans)
    eff2 = pd.DataFrame([_row(0.0, 0.01, a="binned", b="direct", margin=0.01), *eff.iloc[1:].to_dict("records")], columns=stats.EFFECT_COLUMNS)
    eff2.attrs["margin"] = 0.01
    assert any("could have detected" in x for x in answer.answer(toks, eff2, pd.DataFrame()))


def test_the_margin_comes_from_the_grid_file_and_is_checked(tmp_path):
    base = {"name": "g", "scales": {"full": {"seeds": [0]}}}
    import yaml

    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**base, "report": {"margin": 0.01}}))
    assert load_grid(p, base_dir=tmp_path).report == {"margin": 0.01}
    p.write_text(yaml.safe_dump(base))
    assert load_grid(p, base_dir=tmp_path).report == {}
    for bad, words in ((-0.01, "must be an AUC difference between 0 and 0.5"), ("small", "must be a number"), (True, "must be a number")):
        p.write_text(yaml.safe_dump({**base, "report": {"margin": bad}}))
        with pytest.raises(BadSetting, match=f"report.margin {words}"):
            load_grid(p, base_dir=tmp_path)
    p.write_text(yaml.safe_dump({**base, "report": {"margn": 0.01}}))
    with pytest.raises(BadSetting, match=r"report: unknown keys \['margn'\]"):
        load_grid(p, base_dir=tmp_path)


# --------------------------------------------------------------------------- simulation

BOUNDARY = {("seed noise", 2): 0.1, ("seed noise", 3): 0.1, ("test-set noise", 2): 0.02, ("test-set noise", 3): 0.02}
SEED_SD = {"seed noise": 0.15, "test-set noise": 0.005}


@pytest.mark.simulation
def test_equivalence_is_claimed_at_most_5_percent_when_the_gap_equals_the_margin():
    """Each grid's margin is its own true gap (1.9-2.9 standard errors: where TOST has power and
    its size matters): equivalence is claimed in <= 5% of 600 grids (2 and 3 seeds, both noise
    regimes), and no world alone exceeds it by more than its binomial spread (plant: TOST at
    the 80% interval -> ~10%)."""
    rates = {}
    for (regime, n_seeds), k in BOUNDARY.items():
        rng = np.random.default_rng(77 + n_seeds)
        claims = []
        for _ in range(150):
            runs, scores, truth = simulate(rng, n_seeds=n_seeds, effect_k=k, cell_sd=0.0, seed_sd=SEED_SD[regime])
            claims.append(_main(stats.effects(runs, scores, metrics=["auc"], margin=truth))["verdict"] == "equivalent")
        rates[regime, n_seeds] = float(np.mean(claims))
    print("equivalence claimed at the margin: " + ", ".join(f"{r} {n} seeds {v:.3f}" for (r, n), v in rates.items()))
    assert np.mean(list(rates.values())) <= 0.05, rates
    assert max(rates.values()) <= 0.09, rates


@pytest.mark.simulation
def test_equivalence_is_found_at_a_zero_gap_with_thesis_like_noise():
    """48,000 test events (one run's test-set sd ~0.002 in AUC) and a seed sd of ~0.0025, two
    seeds, margin 0.005: binned and direct are called equivalent in >= 80% of grids."""
    rng = np.random.default_rng(5)
    found = []
    for _ in range(30):
        runs, scores, _ = simulate(rng, n_seeds=2, n_events=48_000, seed_sd=0.006)
        found.append(_main(stats.effects(runs, scores, metrics=["auc"], margin=0.005))["verdict"] == "equivalent")
    print(f"equivalence found at a zero gap, thesis-like noise, 2 seeds: {np.mean(found):.3f}")
    assert np.mean(found) >= 0.80


@pytest.mark.simulation
def test_a_winner_of_eight_standard_errors_is_always_named_at_two_seeds():
    """What a new user saw (direct 0.05 AUC above vqvae, two seeds, 'not detectable' beside an
    F of 203): with the pooled seed variance and Holm within the primary family, an effect of 8
    standard errors is named in every grid, with three tokenizers (plant: Holm over every row of
    the table; per-stratum Satterthwaite df)."""
    rng = np.random.default_rng(6)
    named, ratio = [], []
    for _ in range(40):
        runs, scores, truth = simulate(rng, n_seeds=2, effect_k=0.21, tokenizers=("direct", "binned", "vqvae"))
        eff = stats.effects(runs, scores)
        toks = stats.cell_intervals(runs, scores, by=("tokenizer",))
        named.append(answer.answer(toks, eff, pd.DataFrame())[0].startswith("Best tokenizer: binned."))
        if _main(eff)["seed_var_pooled"]:  # the effect in standard errors of the pooled interval (the wild-stratum guard widens some)
            ratio.append(truth / _main(eff)["se"])
    print(f"winner named at 2 seeds: {np.mean(named):.3f} (effect / se: median {np.median(ratio):.2f})")
    assert np.median(ratio) >= 8
    assert all(named)


def test_verdicts_cover_every_pair_of_three_tokenizers_once():
    rng = np.random.default_rng(9)
    runs, scores, _ = simulate(rng, n_seeds=2, tokenizers=("direct", "binned", "vqvae"))
    eff = stats.effects(runs, scores, metrics=["auc"])
    prim = eff[eff["family"] == "primary"]
    assert sorted(map(tuple, prim[["level_a", "level_b"]].to_numpy())) == sorted(
        (a, b) for b, a in itertools.combinations(["direct", "binned", "vqvae"], 2))
    assert set(prim["verdict"]) <= set(equivalence.VERDICTS)
    assert (eff[eff["kind"] == "interaction"]["verdict"] == "").all() and eff[eff["kind"] == "interaction"]["p_equiv"].isna().all()
