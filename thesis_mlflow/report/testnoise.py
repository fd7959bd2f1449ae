"""The test-set part of the noise: how run AUCs measured on one shared test set vary with the test sample.

Every run of a grid scores the same test events, so their AUCs' test-set errors are correlated
(that is what makes a matched difference precise). Two estimates of their covariance (R, R):

- ``delong`` (default): DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988).
  For a run, each signal event's share of backgrounds ranked below it (V10) and each
  background's share of signal events ranked above it (V01); the AUC is their mean, and
  cov(AUC_i, AUC_j) = cov_signal(V10_i, V10_j) / m + cov_background(V01_i, V01_j) / n. One sort
  per run, then one (R, m) x (m, R) product: a thesis-sized grid (108 runs x 48,000 events) in
  about a second, where 1,000 resamples cost minutes.
- ``bootstrap``: the covariance over paired resamples of the test events (one resample applied
  to every run at once), kept to check DeLong against (``tests/test_stats.py``) and for a
  notebook that wants it.

Runs on different test sets (different labels) are independent: zero covariance between them.
A run whose scores are not all finite (a diverged run) has no value (NaN).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.packing import cpu_budget
from thesis_mlflow.learn.metrics import BACKGROUNDS

METHODS = ("delong", "bootstrap")


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (B, n) at once; ties count one half.

    A bootstrap resample is a vector of event multiplicities, so B resamples of one test set
    cost one sort and a few (B, n) array operations.
    """
    order = np.argsort(scores, kind="stable")
    s, y = np.asarray(scores)[order], np.asarray(labels)[order].astype(bool)
    w = np.atleast_2d(weights)
    if len(s) == 0:
        return np.full(w.shape[0], np.nan)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first event of each group of tied scores
    if len(starts) == len(s):  # no ties (continuous scores): each positive beats the background below it
        if y.all() or not y.any():  # one class only: no pair to rank
            return np.full(w.shape[0], np.nan)
        # each class's weights gathered once, in score order (not the whole (B, n) array first: half the memory traffic)
        w_neg, w_pos = w[:, order[~y]], w[:, order[y]]  # (B, n_bkg), (B, n_sig)
        neg_cum = np.zeros((w.shape[0], w_neg.shape[1] + 1))
        np.cumsum(w_neg, axis=1, out=neg_cum[:, 1:])  # (B, 1 + n_bkg): background weight below, from none to all
        below = neg_cum[:, np.cumsum(~y)[y]]  # (B, n_sig): of the backgrounds sorted below each signal event
        num = np.einsum("ij,ij->i", w_pos, below)
        den = w_pos.sum(1) * neg_cum[:, -1]
    else:
        w = w[:, order].astype(np.float64, copy=False)  # sums of products: in float64 whatever the weights' type
        neg_g = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)  # (B, groups) background weight per score value
        pos_g = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        num = (pos_g * (below + 0.5 * neg_g)).sum(1)
        den = pos_g.sum(1) * neg_g.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """Multiplicities of ``n_boot`` resamples of n events (multinomial = drawing with replacement)."""
    rng = np.random.default_rng(rng)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def metric_mask(metric: str, labels: np.ndarray, process: np.ndarray | None) -> np.ndarray | None:
    """Events a metric is computed on: all for ``auc``; signal + one background for ``auc_vs_<bkg>``."""
    if metric == "auc":
        return None
    name = metric.removeprefix("auc_vs_")
    code = {v: k for k, v in BACKGROUNDS.items()}.get(name)
    if code is None or process is None:
        raise BadSetting(f"unknown metric {metric!r} (or no process labels stored): expected auc or auc_vs_<{'|'.join(BACKGROUNDS.values())}>")
    return (np.asarray(labels) == 1) | (np.asarray(process) == code)


def _groups(scores: dict[str, dict], run_ids: list[str], metric: str):
    """Runs that scored the same test events, with the events the metric counts:
    ``(members, labels, [scores of each finite member])``.

    The events are known by their labels (and a recorded ``test_set`` identity where a run has
    one), never by whether the version that logged a run also stored process labels: runs logged
    before process labels were stored share the covariance of the AUC with the runs on the very
    same events. A per-background metric needs the process labels: it groups the runs that have
    them by those too; a run without them has no per-background value (NaN, said on the page)."""
    groups: dict[bytes, list[int]] = {}
    for i, rid in enumerate(run_ids):
        sc = scores[rid]
        key = np.asarray(sc["labels"]).astype(np.int8).tobytes() + str(sc.get("test_set", "")).encode()
        if metric != "auc":
            proc = sc.get("process")
            if proc is None:
                continue  # logged before process labels were stored: no per-background value (NaN)
            key += b"|" + np.asarray(proc).astype(np.int8).tobytes()
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = scores[run_ids[members[0]]]
        mask = metric_mask(metric, first["labels"], first.get("process"))
        lab = np.asarray(first["labels"])[mask] if mask is not None else np.asarray(first["labels"])
        sc = [np.asarray(scores[run_ids[i]]["scores"], dtype=np.float64) for i in members]
        if mask is not None:
            sc = [s[mask] for s in sc]
        finite = [bool(np.isfinite(s).all()) for s in sc]  # a diverged run's NaN would rank as the highest score: no value
        yield [i for i, f in zip(members, finite, strict=True) if f], lab, [s for s, f in zip(sc, finite, strict=True) if f]


def structural_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's components of one run: ``V10`` (m,) per signal event in the events' order, the
    share of backgrounds scored below it (ties one half); ``V01`` (n,) per background, the share
    of signal events scored above it. The AUC is the mean of either. One sort: each group of
    tied scores knows how many of each class lie below it and within it."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    order = np.argsort(s)
    ss, yy = s[order], y[order]
    new = np.r_[True, ss[1:] != ss[:-1]]
    g = np.cumsum(new) - 1  # (N,) tie group of each sorted event
    bounds = np.r_[np.flatnonzero(new), len(ss)]  # where each tie group starts, and the end
    pos_at = np.r_[0, np.cumsum(yy)][bounds]  # signal events sorted before each bound
    pos_below, pos_in = pos_at[:-1], np.diff(pos_at)
    neg_below, neg_in = bounds[:-1] - pos_below, np.diff(bounds) - pos_in
    v = np.where(yy, (neg_below[g] + 0.5 * neg_in[g]) / max(n, 1), (m - pos_below[g] - 0.5 * pos_in[g]) / max(m, 1))
    out = np.empty_like(v)
    out[order] = v
    return out[y], out[~y]


def delong_aucs(scores: dict[str, dict], run_ids: list[str], metric: str = "auc") -> tuple[np.ndarray, np.ndarray]:
    """``(auc (R,), cov (R, R))``: each run's AUC and DeLong's covariance of the AUCs' test-set
    errors (a run without a value: NaN AUC)."""
    R = len(run_ids)
    auc = np.full(R, np.nan)
    cov = np.zeros((R, R))  # runs on different test sets: independent
    for members, lab, sc in _groups(scores, run_ids, metric):
        y = np.asarray(lab).astype(bool)
        m, n = int(y.sum()), int((~y).sum())
        if not members or m < 2 or n < 2:
            continue
        v10 = np.empty((len(members), m))
        v01 = np.empty((len(members), n))
        for k, s in enumerate(sc):
            v10[k], v01[k] = structural_components(s, y)
        auc[members] = v10.mean(1)
        v10 -= v10.mean(1, keepdims=True)
        v01 -= v01.mean(1, keepdims=True)
        c = v10 @ v10.T / (m * (m - 1)) + v01 @ v01.T / (n * (n - 1))  # (G, G)
        cov[np.ix_(members, members)] = c
    return auc, cov


def boot_cov(boot: np.ndarray) -> np.ndarray:
    """The covariance (R, R) over resamples of run AUCs ``boot`` (R, B): resamples where a used
    run has no value are left out; fewer than two resamples: no test-set part (zeros)."""
    boot = np.asarray(boot, dtype=float)
    ok = np.isfinite(boot).all(0) if boot.size else np.zeros(0, bool)
    if ok.sum() < 2:
        return np.zeros((boot.shape[0], boot.shape[0]))
    return np.atleast_2d(np.cov(boot[:, ok], ddof=1))


_cache: dict[tuple, tuple[dict, tuple[np.ndarray, np.ndarray]]] = {}


def run_aucs(scores: dict[str, dict], run_ids: list[str], metric: str = "auc", method: str = "delong", n_boot: int = 1000,
             seed: int = 0, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(auc (R,), cov (R, R))``: each run's AUC on its test set and the covariance of the
    runs' test-set errors (``method``: ``delong`` or ``bootstrap`` with ``n_boot`` paired
    resamples drawn from ``seed``). The report asks for the same runs for several tables: the
    last few answers are kept (same inputs, same numbers, so the tables agree)."""
    if method not in METHODS:
        raise BadSetting(f"test-set noise method must be one of {', '.join(METHODS)}; got {method!r}")
    key = (id(scores), tuple(run_ids), metric, method, *((n_boot, seed, chunk) if method == "bootstrap" else ()))  # DeLong has no draws
    hit = _cache.get(key)
    if hit is not None and hit[0] is scores:
        return hit[1]
    if method == "delong":
        out = delong_aucs(scores, run_ids, metric)
    else:
        auc, boot = bootstrap_aucs(scores, run_ids, metric, n_boot, seed, chunk)
        cov = np.zeros((len(run_ids), len(run_ids)))
        ok = np.flatnonzero(np.isfinite(auc))
        cov[np.ix_(ok, ok)] = boot_cov(boot[ok])
        out = (auc, cov)
    if len(_cache) > 16:
        _cache.clear()
    _cache[key] = (scores, out)
    return out


def bootstrap_aucs(scores: dict[str, dict], run_ids: list[str], metric: str, n_boot: int, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``(auc (R,), boot (R, n_boot))``: each run's AUC and its AUC under ``n_boot`` resamples of
    the test events. Runs that scored the same test events (same labels) share the resamples:
    that is what makes the bootstrap of a difference paired."""
    auc = np.full(len(run_ids), np.nan)
    boot = np.full((len(run_ids), n_boot), np.nan)
    rng = np.random.default_rng(seed)
    for members, lab, sc in _groups(scores, run_ids, metric):
        n = len(lab)
        for i, s in zip(members, sc, strict=True):
            auc[i] = weighted_auc(s, lab, np.ones(n))[0]
        # the runs of one resample chunk side by side: numpy's sorts, gathers and sums release the GIL
        # (the demo's report: 12.6 s -> 7 s on 2 cores); small test sets stay in this thread
        threads = min(len(members), _CORES) if n * chunk >= _THREADED_FROM else 1
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="auc") if threads > 1 else contextlib.nullcontext() as pool:
            each = pool.map if pool is not None else map
            for lo in range(0, n_boot, chunk):  # (chunk, n) weights at a time: memory stays small for 30k-event test sets
                w = bootstrap_weights(n, min(chunk, n_boot - lo), rng).astype(np.float32)  # counts: exact, half the memory traffic
                for i, b in zip(members, each(lambda s, w=w, lab=lab: weighted_auc(s, lab, w), sc), strict=True):
                    boot[i, lo : lo + len(w)] = b
    return auc, boot


_CORES = min(8, cpu_budget())
_THREADED_FROM = 100_000  # events x resamples per call below which a thread hand-off costs more than it saves
