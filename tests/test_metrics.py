"""Figures of merit at values known in closed form (metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from thesis_mlflow.learn import metrics

N = 20_000


def _known_roc():
    """Signal scores uniform on (0, 1); background scores with P(b > t) = (1 - t)^2. At signal
    efficiency e the cut is t = 1 - e, so eps_B = e^2 and the rejection is 1 / e^2; the AUC is
    P(s > b) = 2/3. Quantile grids instead of random draws: exact up to 1/N."""
    u = (np.arange(N) + 0.5) / N
    s = u
    b = 1 - np.sqrt(u)  # P(b > t) = P(sqrt(u) < 1 - t) = (1 - t)^2
    return np.r_[np.ones(N, bool), np.zeros(N, bool)], np.r_[s, b]


@pytest.mark.parametrize("eff", [0.3, 0.5, 0.7])
def test_rejection_at_fixed_efficiency_is_one_over_eps_b(eff):
    y, scores = _known_roc()
    assert metrics.rejection_at(y, scores, eff) == pytest.approx(1 / eff**2, rel=2e-3)


def test_binary_metrics_known_values_and_names():
    y, scores = _known_roc()
    m = metrics.binary_metrics(y, scores)
    assert m["auc"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["rej30"] == pytest.approx(1 / 0.09, rel=2e-3) and m["rej70"] == pytest.approx(1 / 0.49, rel=2e-3)
    assert m["rej30"] > m["rej50"] > m["rej70"]  # harder cuts reject more


def test_rejection_is_bounded_by_the_background_count():
    y = np.r_[np.ones(10, bool), np.zeros(4, bool)]
    scores = np.r_[np.linspace(0.6, 1, 10), np.linspace(0, 0.4, 4)]  # fully separated
    assert metrics.rejection_at(y, scores, 0.5) == 4.0  # 1/eps_B <= N_bkg, never infinite


def test_per_background_figures_use_that_background_only():
    """Signal against ttZ alone: the other backgrounds' events must not enter."""
    y, scores = _known_roc()
    process = np.where(y, 1, 5)  # every background event a ttZ
    rng = np.random.default_rng(0)
    easy = rng.uniform(0, 0.01, 5000)  # ttH events far below every signal score
    m = metrics.test_metrics(np.r_[y, np.zeros(5000, bool)], np.r_[scores, easy], np.r_[process, np.full(5000, 2)])
    assert m["test_auc_vs_ttZ"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["test_rej50_vs_ttZ"] == pytest.approx(4.0, rel=2e-3)
    assert m["test_auc_vs_ttH"] > 0.99
    assert m["test_auc"] > m["test_auc_vs_ttZ"]  # all backgrounds together: the easy ttH raise it


def test_one_class_only_gives_nan_not_an_error():
    m = metrics.binary_metrics(np.ones(5, bool), np.arange(5.0))
    assert all(np.isnan(v) for v in m.values()) and set(m) == {"auc", "rej30", "rej50", "rej70"}


def test_one_background_event_bounds_the_rejection_at_one():
    y = np.r_[np.ones(10, bool), np.zeros(1, bool)]
    assert metrics.rejection_at(y, np.r_[np.linspace(0.6, 1, 10), [0.1]], 0.5) == 1.0


def test_only_background_gives_nan_too():
    m = metrics.binary_metrics(np.zeros(5, bool), np.arange(5.0))
    assert all(np.isnan(v) for v in m.values())


def test_logged_names_and_backgrounds_a_task_does_not_have():
    """The names a train run logs (docs/design.md), and no per-background figure for a background the
    task leaves out (4t_vs_ttH has ttH only), nor one-vs-rest AUCs without the process labels."""
    y, scores = _known_roc()
    assert set(metrics.test_metrics(y, scores)) == {"test_auc", "test_rej_at_eff30", "test_rej_at_eff50", "test_rej_at_eff70"}
    process = np.where(y, 1, 2)
    m = metrics.test_metrics(y, scores, process)
    assert {k for k in m if "_vs_" in k} == {"test_auc_vs_ttH", "test_rej30_vs_ttH", "test_rej50_vs_ttH", "test_rej70_vs_ttH"}
    probs = np.zeros((len(y), 5))
    probs[np.arange(len(y)), process - 1] = 1.0  # a perfect multiclass classifier
    assert not any(k.startswith("test_auc_ovr") for k in metrics.test_metrics(y, scores, None, probs))
    ovr = {k: v for k, v in metrics.test_metrics(y, scores, process, probs).items() if k.startswith("test_auc_ovr")}
    assert ovr == {"test_auc_ovr_4t": 1.0, "test_auc_ovr_ttH": 1.0}  # classes absent from the test set are left out


@pytest.mark.parametrize("n, levels", [(3, 0), (50, 4), (2000, 0), (2000, 7), (5000, 100)])
def test_roc_equals_scikit_learn(n, levels):
    """The numpy ROC (which spares every train process the import of sklearn.metrics) gives
    scikit-learn's arrays and AUC, ties (few score levels) included."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(n + levels)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    scores = rng.normal(y * 0.8, 1.0)
    if levels:
        scores = np.round(scores * levels) / levels
    for got, want in zip(metrics.roc_curve(y, scores), sk_roc_curve(y, scores), strict=True):
        np.testing.assert_array_equal(got, want)
    assert metrics.roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
