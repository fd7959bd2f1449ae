"""Test-set figures of merit, the way physicists quote them (pure numpy / scikit-learn).

One home for what a train run logs at its end and what the report recomputes from stored
scores: ROC AUC and background rejection 1/eps_B at fixed signal efficiency, for signal
against all backgrounds and against each background process alone (the 4t analysis cares
which background a tokenizer loses on). Names sort together in the MLflow UI:
``test_auc``, ``test_rej_at_eff50`` (DESIGN.md), ``test_auc_vs_ttZ``, ``test_rej50_vs_ttZ``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

# process labels of the raw files (DESIGN.md section 3); 1 is the signal
PROCESSES = {1: "4t", 2: "ttH", 3: "ttW", 4: "ttWW", 5: "ttZ"}
BACKGROUNDS = {k: v for k, v in PROCESSES.items() if k != 1}
EFFICIENCIES = (0.3, 0.5, 0.7)  # signal efficiencies at which rejection is quoted


def rejection_at(is_signal: np.ndarray, scores: np.ndarray, eff: float) -> float:
    """Background rejection 1/eps_B at signal efficiency ``eff``.

    eps_B is read off the ROC curve by linear interpolation in signal efficiency; with no
    background event passing, the rejection is bounded by the number of background events
    (1/eps_B <= N_bkg), never infinite.
    """
    is_signal = np.asarray(is_signal).astype(bool)
    fpr, tpr, _ = roc_curve(is_signal, scores)
    eps_b = float(np.interp(eff, tpr, fpr))
    n_bkg = max(int((~is_signal).sum()), 1)
    return 1.0 / max(eps_b, 1.0 / n_bkg)


def binary_metrics(is_signal: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``auc`` and ``rej30`` / ``rej50`` / ``rej70``; NaN when one class is absent."""
    is_signal = np.asarray(is_signal).astype(bool)
    if is_signal.all() or (~is_signal).all():
        return {"auc": float("nan"), **{f"rej{round(e * 100)}": float("nan") for e in EFFICIENCIES}}
    out = {"auc": float(roc_auc_score(is_signal, scores))}
    for e in EFFICIENCIES:
        out[f"rej{round(e * 100)}"] = rejection_at(is_signal, scores, e)
    return out


def test_metrics(is_signal: np.ndarray, scores: np.ndarray, process: np.ndarray | None = None,
                 probs: np.ndarray | None = None) -> dict[str, float]:
    """The metrics a train run logs at its end (names as logged).

    ``process``: original label 1-5 per test event (per-background figures: signal against
    that background alone). ``probs``: (N, 5) class probabilities of a ``multiclass`` run
    (one-vs-rest AUC per class, ``test_auc_ovr_<process>``).
    """
    m = binary_metrics(is_signal, scores)
    out = {"test_auc": m["auc"], **{f"test_rej_at_eff{round(e * 100)}": m[f"rej{round(e * 100)}"] for e in EFFICIENCIES}}
    if process is not None:
        process = np.asarray(process)
        sig = np.asarray(is_signal).astype(bool)
        for code, name in BACKGROUNDS.items():
            keep = sig | (process == code)
            if not (process == code).any() or not sig.any():
                continue  # a task without this background (4t_vs_ttH)
            b = binary_metrics(sig[keep], np.asarray(scores)[keep])
            out[f"test_auc_vs_{name}"] = b["auc"]
            for e in EFFICIENCIES:
                out[f"test_rej{round(e * 100)}_vs_{name}"] = b[f"rej{round(e * 100)}"]
    if probs is not None and process is not None:
        for code, name in PROCESSES.items():
            y = np.asarray(process) == code
            if y.any() and not y.all():
                out[f"test_auc_ovr_{name}"] = float(roc_auc_score(y, probs[:, code - 1]))
    return out
