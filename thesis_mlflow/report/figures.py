"""The report's main figures as vector PDF, in the style particle physicists publish (mplhep).

Same tables as the interactive page (``thesis_mlflow.report.charts``), drawn with matplotlib's Agg
backend (no display on a cluster node). Each function writes one file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thesis_mlflow.report.palette import NEUTRAL, tokenizer_color
from thesis_mlflow.spec import TOKENIZERS

TOKENIZER_ORDER = list(TOKENIZERS)


def _plt():
    import logging

    import matplotlib

    # matplotlib's PDF backend subsets fonts with fontTools, which logs every table it touches at
    # INFO (228 lines per report): the report's own lines are what a user should see
    logging.getLogger("fontTools").setLevel(logging.WARNING)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.ROOT)
    plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 9, "pdf.fonttype": 42})  # 42: editable text
    return plt


def _label(ax, grid: str) -> None:
    ax.text(1.0, 1.01, f"Simulation · grid {grid}", transform=ax.transAxes, fontsize=9, va="bottom", ha="right")


def auc_by_cell(cells: pd.DataFrame, grid: str, path: Path) -> Path:
    """Test AUC of every cell with its 95% interval, grouped by MET / vect, coloured by tokenizer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    cells = cells.reset_index(drop=True)
    x = np.arange(len(cells))
    for tok in [t for t in TOKENIZER_ORDER if t in set(cells["tokenizer"])]:
        sel = cells["tokenizer"] == tok
        c = cells[sel]
        lo = (c["test_auc_mean"] - c["auc_ci_low"]).fillna(0).clip(lower=0)
        hi = (c["auc_ci_high"] - c["test_auc_mean"]).fillna(0).clip(lower=0)
        ax.errorbar(x[sel.to_numpy()], c["test_auc_mean"], yerr=[lo, hi], fmt="o", ms=4, capsize=2, color=tokenizer_color(tok), label=tok)
    ax.set_xticks(x, [f"{r.pooling} {'MET' if r.met else 'no MET'} {r.vect}v" for r in cells.itertuples()], rotation=90, fontsize=7)
    ax.set_ylabel("test AUC (mean over seeds, 95% CI)")
    ax.legend(title="tokenizer", ncol=4, loc="lower left", bbox_to_anchor=(0.0, 1.06), frameon=False)
    _label(ax, grid)
    return _save(fig, path)


def effects_forest(eff: pd.DataFrame, grid: str, path: Path, margin: float = 0.005) -> Path:
    """Every comparison (but the per-background ones) against the ±margin band (shaded): the 90%
    interval thick (TOST reads it), the 95% thin; a filled marker is significant after Holm. The
    page's forest plots, as one figure for the thesis."""
    plt = _plt()
    e = eff[eff["kind"] != "background"].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(e) + 1.4))
    ax.axvspan(-margin, margin, color="#888888", alpha=0.2, lw=0, label=f"±{margin:g} AUC margin")
    y = np.arange(len(e))[::-1]
    for yi, r in zip(y, e.itertuples(), strict=True):
        c = tokenizer_color(r.level_a) if r.family == "primary" else NEUTRAL
        ax.plot([r.ci_low, r.ci_high], [yi, yi], color=c, lw=1.0)
        if np.isfinite(getattr(r, "ci90_low", np.nan)):
            ax.plot([r.ci90_low, r.ci90_high], [yi, yi], color=c, lw=4.0, solid_capstyle="butt")
        ax.plot([r.estimate], [yi], "o", ms=5, color=c, mfc=c if r.significant else "white")
    ax.axvline(0, ls=":", color="k", lw=1)
    ax.set_yticks(y, [f"{r.comparison} " + (f"({r.at})" if r.at else f"[{r.factor}]") for r in e.itertuples()], fontsize=7)
    ax.set_xlabel(r"$\Delta$ test AUC (90% $t$ interval thick, 95% thin)")
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    _label(ax, grid)
    return _save(fig, path)


def backgrounds(bkg: pd.DataFrame, grid: str, path: Path) -> Path:
    """AUC of signal against each background alone, per tokenizer, with intervals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    procs = list(dict.fromkeys(bkg["background"]))
    toks = [t for t in TOKENIZER_ORDER if t in set(bkg["tokenizer"])]
    width = 0.8 / max(len(toks), 1)
    for i, tok in enumerate(toks):
        s = bkg[bkg["tokenizer"] == tok].set_index("background").reindex(procs)
        xs = np.arange(len(procs)) + (i - (len(toks) - 1) / 2) * width
        ax.errorbar(xs, s["auc_mean"], yerr=[(s["auc_mean"] - s["auc_ci_low"]).clip(lower=0), (s["auc_ci_high"] - s["auc_mean"]).clip(lower=0)],
                    fmt="s", ms=4, capsize=2, color=tokenizer_color(tok), label=tok)
    ax.set_xticks(np.arange(len(procs)), [f"4t vs {p}" for p in procs])
    ax.set_ylabel("test AUC (95% CI)")
    ax.legend(title="tokenizer")
    _label(ax, grid)
    return _save(fig, path)


def rejection(bands: pd.DataFrame, grid: str, path: Path, reference: str = "direct") -> Path:
    """Background rejection 1/eps_B against signal efficiency per tokenizer, all backgrounds:
    geometric mean over seeds and matched cells with its 95% band (``curves.rejection_bands``),
    and below it the ratio to ``reference`` on the same cells and seeds, with its band (as
    flavour-tagging plots show a tagger against a reference, e.g. puma's ``RocPlot``)."""
    plt = _plt()
    toks = [t for t in TOKENIZER_ORDER if t in set(bands["tokenizer"])]
    with_ratio = reference in toks and len(toks) > 1
    fig, axes = plt.subplots(2 if with_ratio else 1, 1, figsize=(6, 6 if with_ratio else 4.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.2] if with_ratio else [1], "hspace": 0.06})
    ax = axes[0, 0]
    for tok in toks:
        _curve(ax, bands[bands["tokenizer"] == tok], "eff", "rejection", "lo", "hi", tok)
    ax.set_yscale("log")
    ax.set_ylabel(r"background rejection $1/\varepsilon_B$")
    n = int(bands["n_cells"].max()) if len(bands) else 0
    # the legend in the lower left, which falling rejection curves leave empty, far from the header
    # above the top right corner (its title sat on the header before)
    ax.legend(loc="lower left", fontsize=8, frameon=False, title=f"mean over seeds, {n} matched cells\n95% band", title_fontsize=7)
    _label(ax, grid)
    if with_ratio:
        rx = axes[1, 0]
        for tok in toks:
            if tok != reference:
                _curve(rx, bands[bands["tokenizer"] == tok].dropna(subset=["ratio"]), "eff", "ratio", "ratio_lo", "ratio_hi", tok, label=False)
        rx.axhline(1.0, color=tokenizer_color(reference), lw=1.2)
        rx.set_ylabel(f"ratio to {reference}", fontsize=9)
        rx.set_xlabel(r"signal efficiency $\varepsilon_S$")
    else:
        ax.set_xlabel(r"signal efficiency $\varepsilon_S$")
    return _save(fig, path)


def learning(bands: pd.DataFrame, grid: str, path: Path) -> Path:
    """Validation AUC against epoch per tokenizer: mean over seeds and matched cells, 95% band
    (``curves.learning_bands``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for tok in [t for t in TOKENIZER_ORDER if t in set(bands["tokenizer"])]:
        _curve(ax, bands[bands["tokenizer"] == tok], "epoch", "val_auc", "lo", "hi", tok)
    ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib, as _plt

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("validation AUC")
    n = int(bands["n_cells"].max()) if len(bands) else 0
    ax.legend(loc="lower right", fontsize=8, frameon=False, title=f"mean over seeds, {n} matched cells\n95% band", title_fontsize=7)
    _label(ax, grid)
    return _save(fig, path)


def _curve(ax, s: pd.DataFrame, x: str, y: str, lo: str, hi: str, tok: str, label: bool = True) -> None:
    """One tokenizer's mean curve and, where it has one, its band."""
    if not len(s):
        return
    ax.plot(s[x], s[y], lw=1.5, color=tokenizer_color(tok), label=tok if label else None)
    band = s.dropna(subset=[lo, hi])
    if len(band):
        ax.fill_between(band[x], band[lo], band[hi], color=tokenizer_color(tok), alpha=0.25, lw=0)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="pdf", bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
