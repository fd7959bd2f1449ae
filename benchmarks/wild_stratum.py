"""One wild stratum at 2 and 3 seeds (issue #48, item 2): how often the pooled-variance interval of a
contrast covers when one stratum's seed sd is k times the others', and what a guard buys.

A unit-level simulation, vectorised over grids (numpy over a (grids, strata, seeds) array): S strata
of n seeds each, pure seed noise (no test-set part), the contrast the mean over strata of each
stratum's mean, its variance the pooled one (``report.stats.t_interval``'s homogeneous branch, with
df = S (n - 1)). "guarded": Cochran's share of the largest stratum variance tested at level ``a``
(critical value simulated under homogeneity); when it fires, a two-part Welch-Satterthwaite df (the
largest stratum on its own n - 1 df, the rest pooled): no spread-based guard reaches 0.93 at 8x or
16x, as a wild stratum's own spread (1 df at 2 seeds) often looks tame. "scatter": the guard the
report took (``report.stats.between_strata``): the strata's means scattered about the estimate,
against the pooled variance by an F test at ``stats.BETWEEN_GATE``; when it fires, the seed part
from that scatter with S - 1 df. It sees the wild stratum in its mean, where the error is. Prints
coverage of the 95% interval.

    .venv/bin/python benchmarks/wild_stratum.py [--grids 20000] [--level 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import special

from thesis_mlflow.report.stats import BETWEEN_GATE


def coverage(v: np.ndarray, crit: float | None) -> tuple[float, float]:
    """Coverage of 0 and the median df over grids ``v`` (M, S, n); ``crit``: Cochran's critical share (None: pooled)."""
    M, S, n = v.shape
    est = v.mean(axis=(1, 2))
    s2 = v.var(axis=2, ddof=1)  # (M, S)
    d = n - 1
    var = s2.mean(1) / (n * S)
    df = np.full(M, float(S * d))
    if crit is not None:
        fire = s2.max(1) / s2.sum(1) > crit
        w_max, w_rest = s2.max(1) / (n * S**2), (s2.sum(1) - s2.max(1)) / (n * S**2)
        df = np.where(fire, (w_max + w_rest) ** 2 / (w_max**2 / d + w_rest**2 / ((S - 1) * d)), df)
    q = special.stdtrit(df, 0.975)
    return float((np.abs(est) <= q * np.sqrt(var)).mean()), float(np.median(df))


def scatter_coverage(v: np.ndarray, gate: float) -> tuple[float, float]:
    """Coverage with the report's guard (no test-set part here), and how often it fired."""
    M, S, n = v.shape
    est = v.mean(axis=(1, 2))
    pooled = v.var(axis=2, ddof=1).mean(1) / (n * S)
    scatter = v.mean(2).var(axis=1, ddof=1) / S
    fire = scatter > special.fdtri(S - 1, S * (n - 1), gate) * pooled
    var, df = np.where(fire, scatter, pooled), np.where(fire, S - 1, S * (n - 1)).astype(float)
    return float((np.abs(est) <= special.stdtrit(df, 0.975) * np.sqrt(var)).mean()), float(fire.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=int, default=20000)
    ap.add_argument("--level", type=float, default=0.5, help="the guard's level under homogeneity")
    ap.add_argument("--gate", type=float, default=BETWEEN_GATE, help="the scatter guard's F quantile (default: the report's)")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    for S in (6, 12):
        for n in (2, 3):
            null = rng.normal(size=(10 * args.grids, S, n)).var(axis=2, ddof=1)
            crit = float(np.quantile(null.max(1) / null.sum(1), 1 - args.level))
            row = []
            for k in (1, 4, 8, 16):
                sd = np.ones(S)
                sd[0] = k
                v = rng.normal(size=(args.grids, S, n)) * sd[None, :, None]
                (c0, _), (c1, df1), (c2, f2) = coverage(v, None), coverage(v, crit), scatter_coverage(v, args.gate)
                row.append(f"k={k}: pooled {c0:.3f}, guarded {c1:.3f} (median df {df1:.1f}), scatter {c2:.3f} (fired {f2:.2f})")
            print(f"S={S}, {n} seeds: " + "; ".join(row))


if __name__ == "__main__":
    main()
