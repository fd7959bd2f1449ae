"""Curves over seeds and matched cells (thesis_mlflow.report.curves): known values, matched cells only,
the band from the seed spread, and a calibration check on a calibrated model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thesis_mlflow.learn.metrics import roc_curve
from thesis_mlflow.report import curves


def _runs(spec):
    return pd.DataFrame([{"run_id": rid, "tokenizer": t, "pooling": p, "met": True, "vect": 4, "seed": s, "status": "FINISHED"}
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
