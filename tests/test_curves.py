"""Curves over seeds and matched cells (thesis_mlflow.report.curves): known values, matched cells only,
the band from the seed spread, and a calibration check on a calibrated model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thesis_mlflow.learn.metrics import roc_curve
from thesis_mlflow.report import curves


def _runs(spec):
    return pd.DataFrame([{"run_id": rid, "tokenizer": t, "pooling": p, "met": True, "vect": 4, "seed": s, "status": "FINISHED", "test_auc": 0.5}
                         for rid, t, p, s in spec])


def test_matched_cells_are_those_every_tokenizer_has():
    runs = _runs([("a", "direct", "cls", 0), ("b", "direct", "max", 0), ("c", "binned", "max", 0), ("d", "binned", "max", 1)])
    assert sorted(curves.matched(runs)["run_id"]) == ["b", "c", "d"]


def test_log_rejection_reads_the_roc_at_each_efficiency():
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.5).astype(int)
    s = rng.normal(y * 1.5, 1)
    got = curves.log_rejection(y, s, eff=np.array([0.5]))[0]
    fpr, tpr, _ = roc_curve(y, s)
    assert 10**got == pytest.approx(1 / np.interp(0.5, tpr, fpr))
    thr = np.quantile(s[y == 1], 0.5)  # by hand: the background fraction above the signal median
    assert 10**got == pytest.approx(1 / (s[y == 0] > thr).mean(), rel=0.02)


def test_band_is_the_geometric_mean_over_seeds_and_cells_not_the_best_run():
    """Plant: the best run per tokenizer (the old figure) -> the curve sits at the best seed's
    rejection, not at the geometric mean, and there is no band."""
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.5).astype(np.int8)
    proc = np.where(y == 1, 1, 5).astype(np.int8)
    spec, scores = [], {}
    for cell in ("cls", "max"):
        for seed, k in enumerate((0.8, 1.0, 1.2)):
            rid = f"{cell}{seed}"
            spec.append((rid, "direct", cell, seed))
            scores[rid] = {"labels": y, "process": proc, "scores": rng.normal(y * k, 1)}
    runs = _runs(spec)
    bands = curves.rejection_bands(runs, scores)
    at = bands[bands["eff"] == 0.5].iloc[0]
    logs = {rid: curves.log_rejection(y, scores[rid]["scores"], eff=np.array([0.5]))[0] for rid in scores}
    want = np.mean([np.mean([logs[f"{c}{s}"] for s in range(3)]) for c in ("cls", "max")])
    assert at["rejection"] == pytest.approx(10**want) and at["n_cells"] == 2 and at["n_runs"] == 6
    assert at["lo"] < at["rejection"] < at["hi"] < 10 ** max(logs.values())
    ttz = curves.rejection_bands(runs, scores, "ttZ")
    assert (ttz["background"] == "ttZ").all() and len(ttz) == len(bands)  # every background here is ttZ: the same curve
    np.testing.assert_allclose(ttz["rejection"], bands["rejection"])


def test_one_seed_gives_a_curve_without_a_band():
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.5).astype(np.int8)
    scores = {"a": {"labels": y, "scores": rng.normal(y, 1)}}
    b = curves.rejection_bands(_runs([("a", "direct", "cls", 0)]), scores)
    assert len(b) and b["lo"].isna().all()


def test_calibration_of_a_calibrated_model_lies_on_the_diagonal():
    rng = np.random.default_rng(3)
    p = rng.random(40000)
    y = (rng.random(40000) < p).astype(np.int8)
    scores = {"a": {"labels": y, "scores": p, "process": np.where(y == 1, 1, 2)}}
    cal = curves.calibration(_runs([("a", "direct", "cls", 0)]), scores)
    assert len(cal) == 10
    np.testing.assert_allclose(cal["signal_fraction"], cal["mean_score"], atol=0.02)
    h = curves.score_histograms(_runs([("a", "direct", "cls", 0)]), scores)
    assert set(h["process"]) == {"4t", "ttH"}
    for _, g in h.groupby("process"):
        assert (g["density"] * (g["hi"] - g["lo"])).sum() == pytest.approx(1.0)


def _two_tokenizers(n_seeds=3, cells=("cls", "max")):
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.5).astype(np.int8)
    proc = np.where(y == 1, 1, 5).astype(np.int8)
    spec, scores = [], {}
    for tok, k in (("direct", 1.0), ("binned", 1.3)):
        for cell in cells:
            for seed in range(n_seeds):
                rid = f"{tok}-{cell}{seed}"
                spec.append((rid, tok, cell, seed))
                scores[rid] = {"labels": y, "process": proc, "scores": rng.normal(y * (k + 0.1 * rng.normal()), 1)}
    return _runs(spec), scores


def test_the_ratio_to_direct_is_the_mean_of_matched_ratios_with_its_band():
    """On complete matched cells the geometric mean of the paired ratios is the ratio of the
    curves; direct against itself is 1 with no width; the band, from the spread of the pairs'
    ratios, holds the ratio; a grid without the reference has no ratio (plants: the ratio of
    arithmetic means; a ratio against a missing reference)."""
    runs, scores = _two_tokenizers()
    b = curves.rejection_bands(runs, scores)
    d, s = (b[b["tokenizer"] == t].set_index("eff") for t in ("direct", "binned"))
    np.testing.assert_allclose(s["ratio"], s["rejection"] / d["rejection"], rtol=1e-9)
    np.testing.assert_allclose(d["ratio"], 1.0) and np.testing.assert_allclose(d["ratio_lo"], 1.0)
    assert (s["ratio_lo"] < s["ratio"]).all() and (s["ratio"] < s["ratio_hi"]).all() and (s["ratio"] > 1).mean() > 0.9
    without = curves.rejection_bands(runs[runs["tokenizer"] == "binned"], scores)
    assert without["ratio"].isna().all()  # no reference in the grid: no ratio


def test_learning_bands_average_matched_cells_over_common_epochs():
    """Mean over matched cells of the mean over seeds, per epoch; a run still training shortens
    its tokenizer's curve to the epochs every run has (plant: the epochs of any run -> a KeyError
    or a curve bent by the short run)."""
    runs, _ = _two_tokenizers(n_seeds=2)
    runs["name"] = runs["run_id"]
    hist = {r: [(e, 0.7 + 0.01 * e + (0.02 if r.startswith("binned") else 0) + 0.001 * i) for e in range(1, 6)]
            for i, r in enumerate(runs["run_id"])}
    hist["direct-max1"] = hist["direct-max1"][:3]  # still training
    lb = curves.learning_bands(runs, hist)
    d = lb[lb["tokenizer"] == "direct"]
    assert d["epoch"].tolist() == [1, 2, 3] and lb[lb["tokenizer"] == "binned"]["epoch"].tolist() == [1, 2, 3, 4, 5]
    want = np.mean([np.mean([hist[f"direct-{c}{s}"][0][1] for s in range(2)]) for c in ("cls", "max")])
    assert d.iloc[0]["val_auc"] == pytest.approx(want) and d.iloc[0]["lo"] < want < d.iloc[0]["hi"]
    assert (lb["n_cells"] == 2).all()


def test_rejection_figure_has_a_ratio_panel_and_its_header_clears_the_legend(tmp_path, monkeypatch):
    """The PDF: a rejection panel and a ratio panel to direct; the header above the axes and the
    legend (with its title) never meet: the legend sits in the lower half, which the falling
    curves leave empty (its title sat on the header before)."""
    from thesis_mlflow.report import figures

    runs, scores = _two_tokenizers()
    bands = curves.rejection_bands(runs, scores)
    seen = {}
    save = figures._save

    def keep(fig, path):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        ax = fig.axes[0]
        seen["axes"] = len(fig.axes)
        legend = ax.get_legend().get_window_extent(r)
        seen["overlap"] = [t.get_window_extent(r).overlaps(legend) for t in ax.texts]
        seen["legend_low"] = legend.y1 < ax.get_window_extent(r).y0 + 0.5 * ax.get_window_extent(r).height
        seen["ratio_label"] = fig.axes[-1].get_ylabel()
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    out = figures.rejection(bands, "g", tmp_path / "rejection.pdf")
    assert out.read_bytes()[:5] == b"%PDF-"
    assert seen["axes"] == 2 and seen["ratio_label"] == "ratio to direct"
    assert seen["overlap"] and not any(seen["overlap"])
    assert seen["legend_low"]  # in the lower half, nowhere near the header (plant: the old upper placement)
    lb = curves.learning_bands(runs.assign(name=runs["run_id"]), {r: [(1, 0.7), (2, 0.75)] for r in runs["run_id"]})
    assert figures.learning(lb, "g", tmp_path / "val_auc.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_point_infinite_each_way_in_two_cells_is_left_out_without_a_warning():
    """One cell's ratio +inf and another's -inf at an efficiency (no background left in one curve,
    then in the other: what a 2-seed demo's report printed as numpy's "invalid value encountered
    in reduce"): the mean there is NaN, so no point, and nothing is printed; finite points are
    the plain means (plant: the errstate dropped -> the warning, an error here)."""
    import warnings

    values = {("a",): np.array([[0.5, np.inf], [0.7, np.inf]]), ("b",): np.array([[0.9, -np.inf], [1.1, -np.inf]])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, lo, hi = curves._band(values, 0.05)
    assert mean[0] == pytest.approx(0.8) and np.isnan(mean[1])
    assert lo[0] < 0.8 < hi[0]
