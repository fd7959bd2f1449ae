"""The written answer, driven through the cases where it would be wrong: a clear winner, a tie,
a winner over one tokenizer only, a partial grid whose unmatched means disagree with the
matched difference, runs without random streams, and (by simulation) a world with no
tokenizer effect, where no winner may be named, and one with a clear effect, where it must be."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from tests.test_stats import simulate
from thesis_mlflow.report import answer, documents, stats, tables

POOL = ["cls", "mean", "max"]


def grid(k: dict, n_seeds=3, seed_sd=0.03, n_events=600, rng=None, cells=None):
    """Runs and scores with latent separation ``k[(tokenizer, pooling, met)]`` (+ seed noise)."""
    rng = rng or np.random.default_rng(0)
    y = (rng.random(n_events) < 0.5).astype(np.int8)
    shared = rng.normal(size=n_events)
    proc = np.where(y == 1, 1, rng.integers(2, 6, n_events)).astype(np.int8)
    rows, scores = [], {}
    for (tok, pool, met), kc in k.items():
        for s in range(n_seeds):
            kk = kc + rng.normal(0, seed_sd)
            rid = f"{tok}-{pool}-{met}-s{s}"
            scores[rid] = {"labels": y, "process": proc, "scores": kk * (2 * y - 1) + 0.95 * shared + 0.3 * rng.normal(size=n_events)}
            rows.append({"run_id": rid, "status": "FINISHED", "test_auc": 0.5, "tokenizer": tok, "pooling": pool, "met": met, "vect": 4, "seed": s,
                         "rng_stream": f"x{len(rows)}"})
    return pd.DataFrame(rows), scores


def words(runs, scores, streams=None):
    eff = stats.effects(runs, scores, n_boot=200, metrics=["auc"])
    toks = stats.cell_intervals(runs, scores, by=("tokenizer",), n_boot=200)
    return answer.answer(toks, eff, pd.DataFrame(), streams=streams), eff


def test_a_clear_winner_is_named_with_its_matched_differences():
    k = {(t, p, m): 0.5 + {"direct": 0.0, "binned": 0.0, "vqvae": 0.15}[t] for t in ("direct", "binned", "vqvae") for p in POOL
         for m in (True, False)}
    ans, _ = words(*grid(k))
    assert ans[0].startswith("Best tokenizer: vqvae.")
    assert any(s.startswith("vqvae - direct:") and "(found at 5% after Holm)" in s for s in ans)
    assert any(s.startswith("binned - direct:") and "not detectable" in s for s in ans) or any(
        s.startswith("direct - binned:") and "not detectable" in s for s in ans)


def test_a_tie_names_no_winner_and_says_what_could_have_been_seen():
    k = {(t, p, m): 0.5 for t in ("direct", "binned", "vqvae") for p in POOL for m in (True, False)}
    ans, _ = words(*grid(k, rng=np.random.default_rng(3)))
    text = " ".join(ans)
    assert "Best tokenizer" not in text
    assert ans[0].startswith("No tokenizer is detectably best")
    assert "could have detected a tokenizer difference of about" in text


def test_beating_one_other_is_not_enough():
    """binned beats direct clearly but not vqvae: no winner."""
    k = {(t, p, m): 0.5 + {"direct": 0.0, "binned": 0.15, "vqvae": 0.15}[t] for t in ("direct", "binned", "vqvae") for p in POOL
         for m in (True, False)}
    ans, _ = words(*grid(k, rng=np.random.default_rng(4)))
    assert ans[0].startswith("No tokenizer is detectably best")
    assert any(("binned - direct:" in s or "vqvae - direct:" in s) and "(found" in s for s in ans)


def test_partial_grid_whose_unmatched_means_disagree_is_flagged():
    """binned was run only with MET (where every model does better) and is worse than direct
    there: its unmatched mean is higher, its matched difference negative. The answer must rank
    by the matched difference and say why the means mislead."""
    k = {("direct", p, m): (0.9 if m else 0.3) for p in POOL for m in (True, False)}
    k.update({("binned", p, True): 0.8 for p in POOL})
    runs, scores = grid(k, rng=np.random.default_rng(5))
    ans, eff = words(runs, scores)
    main = eff[(eff["kind"] == "main") & (eff["factor"] == "tokenizer")].iloc[0]
    assert main["estimate"] < 0 and main["n_pairs"] == 9  # matched on the 3 MET cells x 3 seeds only
    assert ans[0].startswith("Best tokenizer: direct.")
    assert any(s.startswith("Caution: binned's mean over its own cells") and "direct - binned = +" in s for s in ans)


def test_method_sentence_and_the_warning_for_runs_without_streams():
    k = {(t, p, m): 0.5 for t in ("direct", "binned") for p in POOL for m in (True,)}
    runs, scores = grid(k)
    ans, _ = words(runs, scores, streams=(0, len(runs)))
    assert any(s.startswith("Method: runs are independent replicates by construction") and "scheme 2" in s for s in ans)
    assert not any(s.startswith("Warning:") for s in ans)
    ans, _ = words(runs, scores, streams=(4, len(runs)))
    warn = [s for s in ans if s.startswith("Warning:")]
    assert warn and warn[0].startswith(f"Warning: 4 of {len(runs)} runs carry no random-stream id") and "78%" in warn[0]


def test_a_comparison_read_from_its_strata_scatter_is_named_and_no_other():
    """The wild-stratum guard's sentence names exactly the comparisons whose seed part came from
    the strata's scatter (``seed_var_pooled`` False) and says why; with none, no sentence (plants:
    the sentence always, or naming every row)."""
    k = {(t, p, m): 0.5 + (0.1 if t == "binned" else 0) for t in ("direct", "binned") for p in POOL for m in (True, False)}
    eff = stats.effects(*grid(k, n_seeds=2), n_boot=50, metrics=["auc"])
    assert eff["seed_var_pooled"].all()
    assert not any("scatter more than the seeds explain" in s for s in answer._caveats(eff, None))
    wild = eff.copy()
    row = wild.index[(wild["kind"] == "main") & (wild["factor"] == "tokenizer")][0]
    wild.loc[row, "seed_var_pooled"] = False
    said = [s for s in answer._caveats(wild, None) if "scatter more than the seeds explain" in s]
    assert len(said) == 1 and said[0].startswith(f"1 comparison ({wild.loc[row, 'comparison']} tokenizer)"), said
    assert "strata minus one degrees of freedom" in said[0]


def test_one_seed_everywhere_says_test_noise_only_and_names_no_winner():
    """A clear difference on one seed is significant against test-set noise alone: the answer
    says what it found but names no best tokenizer (the training variance is unknown)."""
    k = {(t, p, m): 0.5 + (0.3 if t == "binned" else 0) for t in ("direct", "binned") for p in POOL for m in (True,)}
    ans, _ = words(*grid(k, n_seeds=1))
    assert any("cover test-set noise only" in s for s in ans)
    assert ans[0].startswith("On this one seed, binned beats every other tokenizer") and "no tokenizer is named best yet" in ans[0]
    assert not any(s.startswith("Best tokenizer") for s in ans)


@pytest.mark.simulation
def test_no_winner_in_a_world_without_tokenizer_effect_and_one_with_a_clear_effect():
    rng = np.random.default_rng(77)
    named_null, named_effect = [], []
    for i in range(40):
        for effect, bucket in ((0.0, named_null), (0.1, named_effect)):
            runs, scores, _ = simulate(rng, effect_k=effect)
            eff = stats.effects(runs, scores, n_boot=100, seed=i, metrics=["auc"])
            toks = stats.cell_intervals(runs, scores, by=("tokenizer",), n_boot=100, seed=i)
            bucket.append(answer.answer(toks, eff, pd.DataFrame())[0].startswith("Best tokenizer: binned."))
    print(f"winner named: {np.mean(named_null):.3f} without an effect, {np.mean(named_effect):.3f} with a two-seed-sd effect")
    assert np.mean(named_null) <= 0.05
    assert np.mean(named_effect) >= 0.80


def test_ranking_uses_matched_differences():
    eff = pd.DataFrame([
        {"kind": "main", "factor": "tokenizer", "level_a": "binned", "level_b": "direct", "estimate": 0.02, "significant": True},
        {"kind": "main", "factor": "tokenizer", "level_a": "vqvae", "level_b": "direct", "estimate": -0.01, "significant": False},
        {"kind": "main", "factor": "tokenizer", "level_a": "vqvae", "level_b": "binned", "estimate": -0.03, "significant": True},
    ]).assign(ci_low=0.0, ci_high=0.0)
    r = answer.ranking(eff)
    assert r["tokenizer"].tolist() == ["binned", "direct", "vqvae"]
    assert r.set_index("tokenizer").loc["binned", ["beats", "loses"]].tolist() == [2, 0]
    assert math.isclose(r.set_index("tokenizer").loc["direct", "score"], (-0.02 + 0.01) / 2)
    assert list(itertools.chain(r.columns)) == ["tokenizer", "score", "beats", "loses", "n_others"]


@pytest.mark.simulation
def test_omnibus_holds_its_level_and_finds_a_clear_effect():
    """The F test of every tokenizer term together: ~5% false positives without a tokenizer
    effect, and it finds a two-seed-sd effect; the mixed model's seed (shared-luck) component is
    ~0 for independent replicates and large when seed luck is shared across cells."""
    rng = np.random.default_rng(5)
    null, power = [], []
    for _ in range(30):
        for effect, bucket in ((0.0, null), (0.1, power)):
            runs, scores, _ = simulate(rng, effect_k=effect)
            tab, comps = stats.omnibus(runs, scores, n_boot=5)
            bucket.append(tab["p_value"].iloc[0] < 0.05)
    print(f"omnibus: false positives {np.mean(null):.3f}, power {np.mean(power):.3f}")
    assert np.mean(null) <= 0.10 and np.mean(power) >= 0.70
    runs, scores, _ = simulate(rng, shared_luck=0.0, seed_sd=0.15)
    _, indep = stats.omnibus(runs, scores, n_boot=20)
    runs, scores, _ = simulate(rng, shared_luck=0.9, seed_sd=0.15)
    _, shared = stats.omnibus(runs, scores, n_boot=20)
    assert shared["seed_var"] > 3 * indep["seed_var"] and shared["seed_var"] > 0.2 * shared["within_var"]


def test_omnibus_on_a_grid_it_cannot_fit_says_why():
    k = {(t, p, m): 0.5 for t in ("direct",) for p in POOL for m in (True,)}
    runs, scores = grid(k)
    tab, comps = stats.omnibus(runs, scores, n_boot=20)
    assert not len(tab) and "at least 2 tokenizers" in comps["note"]
    assert answer.omnibus_sentences(tab, comps) == ["Factorial model not fitted: needs at least 2 tokenizers and 2 seeds."]


def test_overtraining_flags_large_train_test_gaps_only():
    runs = pd.DataFrame([{"name": n, "status": "FINISHED", "tokenizer": "direct", "pooling": "cls", "met": True, "vect": 4, "seed": i,
                          "train_auc": tr, "test_auc": te} for i, (n, tr, te) in enumerate((("a", 0.90, 0.85), ("b", 0.86, 0.85),
                                                                                               ("c", np.nan, 0.8)))])
    chk = tables.overtraining(runs)
    assert chk["name"].tolist() == ["a", "b"] and chk["flagged"].tolist() == [True, False]
    assert chk["gap"].iloc[0] == pytest.approx(0.05)
    assert not len(tables.overtraining(runs.drop(columns=["train_auc"])))  # runs from before train_auc: no check, no crash


def test_tokenizer_table_shows_parameter_counts():
    k = {(t, p, m): 0.5 for t in ("direct", "binned") for p in ("cls", "max") for m in (True,)}
    runs, scores = grid(k)
    runs["n_params"] = runs["tokenizer"].map({"direct": 1000, "binned": 900}) + (runs["pooling"] == "cls") * 72
    runs["n_params_embedding"] = runs["tokenizer"].map({"direct": 56, "binned": 6000})
    t = tables.tokenizer_table(runs, scores, n_boot=20).set_index("tokenizer")
    assert t.loc["direct", ["params_min", "params_max", "params_embedding"]].tolist() == [1056, 1128, 56]
    assert t.loc["binned", ["params_min", "params_max"]].tolist() == [6900, 6972]


def test_an_unfitted_factorial_model_says_why_and_nothing_after_it():
    """The page's factorial section: the reason it was not fitted, and no stray "none" table
    after it (plant: the empty table's "none" back)."""
    r = documents.Report(grid="g", cells=pd.DataFrame(), effects=pd.DataFrame(), missing=pd.DataFrame(),
                      components={"note": "needs at least 2 tokenizers and 2 seeds"})
    page = r.html()
    section = page.split("<h2>Is there a tokenizer effect at all? (factorial model)</h2>")[1].split("<h2>")[0]
    assert section == "<p>Factorial model not fitted: needs at least 2 tokenizers and 2 seeds.</p>\n"


@pytest.mark.simulation
@pytest.mark.parametrize("df", [2, 9, 18])
def test_the_detectable_difference_is_found_with_80_percent_power(df):
    """A true difference of exactly ``detectable`` (3 tests: Holm's strictest level 0.05 / 3),
    estimated with normal noise of sd ``se`` and a standard error that is itself estimated with
    ``df`` degrees of freedom, as the report's rows are: the two-sided t test finds it 80% of the
    time (+-0.01; 400,000 draws, sd of the estimate ~0.0006). The central-quantile formula it
    replaced fell to 0.79 at 9 df and 0.72 at 2 df (simulated here)."""
    from scipy import stats as sps

    from thesis_mlflow.report.answer import detectable

    rng = np.random.default_rng(df)
    se, n, k = 0.004, 400_000, 3
    delta = detectable({"se": se, "df": df}, k)
    est = delta + se * rng.standard_normal(n)
    se_hat = se * np.sqrt(rng.chisquare(df, n) / df)
    found = np.abs(est / se_hat) > sps.t.ppf(1 - 0.05 / (2 * k), df)
    print(f"\ndetectable at {df} df: {delta:.5f} (se {se}); power {found.mean():.4f}")
    assert abs(found.mean() - 0.80) <= 0.01, found.mean()
