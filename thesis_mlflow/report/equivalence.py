"""Is one tokenizer as good as another? Equivalence and non-inferiority within a margin (TOST).

A difference that is not detectable is not the same as no difference: "binned is as good as
direct" needs its own test. With a margin delta in AUC (``report: {margin: ...}`` in the grid
file, ``report --margin``; ``MARGIN`` by default), the difference d = a - b of a matched
contrast, with the standard error and degrees of freedom of its t interval, gets two one-sided
tests (Schuirmann's TOST; Lakens 2017):

- ``p_lower``: of H0 d <= -delta ("a is worse than b by the margin or more"); rejected: a is
  non-inferior to b;
- ``p_upper``: of H0 d >= +delta; rejected: b is non-inferior to a;
- both rejected (``p_equiv`` = the larger p < alpha): a and b are equivalent within +-delta. It is
  exactly "the 1 - 2 alpha (90%) interval lies inside (-delta, +delta)", the interval the page
  shows beside the 95% one. TOST is an intersection-union test: each pair's verdict holds at
  alpha without a correction for its two one-sided tests.

One verdict per pair, read "level_a relative to level_b", first that applies:
``equivalent`` (within the margin; a difference may still be detectable, then smaller than the
margin), ``better`` / ``worse`` (the two-sided test after Holm in its family), ``non-inferior``
(a is not worse than b by the margin), ``non-superior`` (a is not better than b by the margin,
i.e. b is non-inferior to a), ``inconclusive``.

Checked by simulation in ``tests/test_stats.py``: equivalence claimed in <= 5% of grids whose
true gap equals the margin, and in >= 80% at a zero gap with thesis-like noise.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from thesis_mlflow.spec import MARGIN, check_margin  # noqa: F401 - the grid file checks its margin there (no numpy)

VERDICTS = ("equivalent", "better", "worse", "non-inferior", "non-superior", "inconclusive")


def one_sided(estimate: float, se: float, df: float, margin: float) -> tuple[float, float]:
    """``(p_lower, p_upper)``: p of H0 d <= -margin and of H0 d >= +margin, from the t statistic
    with ``df`` degrees of freedom (normal when infinite). NaN in, NaN out."""
    if not (np.isfinite(estimate) and np.isfinite(se)):
        return float("nan"), float("nan")
    if se == 0:
        return (0.0 if estimate > -margin else 1.0), (0.0 if estimate < margin else 1.0)
    cdf = (lambda x: special.stdtr(df, x)) if np.isfinite(df) else special.ndtr
    return float(cdf(-(estimate + margin) / se)), float(cdf((estimate - margin) / se))


def interval90(estimate: float, se: float, df: float, alpha: float = 0.05) -> tuple[float, float]:
    """The 1 - 2 alpha interval: inside (-margin, +margin) exactly when TOST claims equivalence."""
    q = float(special.stdtrit(df, 1 - alpha)) if np.isfinite(df) else float(special.ndtri(1 - alpha))
    return estimate - q * se, estimate + q * se


def verdict(estimate: float, significant: bool, p_lower: float, p_upper: float, alpha: float = 0.05) -> str:
    """One of ``VERDICTS`` for level_a relative to level_b (see the module's order)."""
    if not np.isfinite(estimate):
        return "inconclusive"
    lower, upper = p_lower < alpha, p_upper < alpha  # NaN compares False: no claim
    if lower and upper:
        return "equivalent"
    if significant:
        return "better" if estimate > 0 else "worse"
    if lower:
        return "non-inferior"
    if upper:
        return "non-superior"
    return "inconclusive"
