"""Test-set figures of merit, the way physicists quote them (pure numpy).

One home for what a train run logs at its end and what the report recomputes from stored
scores: ROC AUC and background rejection 1/eps_B at fixed signal efficiency, for signal
against all backgrounds and against each background process alone (the 4t analysis cares
which background a tokenizer loses on). Names sort together in the MLflow UI:
``test_auc``, ``test_rej_at_eff50`` (docs/design.md), ``test_auc_vs_ttZ``, ``test_rej50_vs_ttZ``.
"""

from __future__ import annotations

import numpy as np

# process labels of the raw files (docs/design.md section 3); 1 is the signal
PROCESSES = {1: "4t", 2: "ttH", 3: "ttW", 4: "ttWW", 5: "ttZ"}
BACKGROUNDS = {k: v for k, v in PROCESSES.items() if k != 1}
EFFICIENCIES = (0.3, 0.5, 0.7)  # signal efficiencies at which rejection is quoted


def roc_curve(is_signal: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of a binary ROC, the same arrays as scikit-learn's ``roc_curve``
    (collinear points dropped; tests/test_metrics.py compares them). In numpy because importing
    ``sklearn.metrics`` costs every train process ~1 s, and this is all it was used for."""
    y = np.asarray(is_signal).astype(bool)
    s = np.asarray(scores)
    order = np.argsort(s, kind="mergesort")[::-1]  # descending, ties in a fixed order
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last event of each distinct score
    tps = np.cumsum(y, dtype=np.float64)[last]
    fps = 1 + last - tps
    thresholds = s[last]
    if len(fps) > 2:  # drop the points on a straight line between their neighbours
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(is_signal: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC (ties count half); both classes must be present."""
    fpr, tpr, _ = roc_curve(is_signal, scores)
    return _area(fpr, tpr)


def rejection_at(is_signal: np.ndarray, scores: np.ndarray, eff: float) -> float:
    """Background rejection 1/eps_B at signal efficiency ``eff``.

    eps_B is read off the ROC curve by linear interpolation in signal efficiency; with no
    background event passing, the rejection is bounded by the number of background events
    (1/eps_B <= N_bkg), never infinite.
    """
    is_signal = np.asarray(is_signal).astype(bool)
    fpr, tpr, _ = roc_curve(is_signal, scores)
    return _rejection(fpr, tpr, int((~is_signal).sum()), eff)


def binary_metrics(is_signal: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``auc`` and ``rej30`` / ``rej50`` / ``rej70``; NaN when one class is absent."""
    is_signal = np.asarray(is_signal).astype(bool)
    if is_signal.all() or (~is_signal).all():
        return {"auc": float("nan"), **{f"rej{round(e * 100)}": float("nan") for e in EFFICIENCIES}}
    fpr, tpr, _ = roc_curve(is_signal, scores)  # one curve for the AUC and every rejection
    n_bkg = int((~is_signal).sum())
    return {"auc": _area(fpr, tpr), **{f"rej{round(e * 100)}": _rejection(fpr, tpr, n_bkg, e) for e in EFFICIENCIES}}


def _area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def _rejection(fpr: np.ndarray, tpr: np.ndarray, n_bkg: int, eff: float) -> float:
    """1/eps_B at ``eff`` on a ROC of ``n_bkg`` background events (see ``rejection_at``)."""
    eps_b = float(np.interp(eff, tpr, fpr))
    return 1.0 / max(eps_b, 1.0 / max(n_bkg, 1))


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
                out[f"test_auc_ovr_{name}"] = roc_auc(y, probs[:, code - 1])
    return out
