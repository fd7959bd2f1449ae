"""The summary page's figures (plotly, offline): the forest of effects against the margin, AUC per
cell, background rejection with ratio panels, score distributions, learning curves, the binning
and the codebook. One colour per tokenizer (``report.palette``). The thesis's PDF figures are
``report.figures``."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from thesis_mlflow.report.answer import verdict_rows
from thesis_mlflow.report.palette import NEUTRAL, POOLING_COLORS, PROCESS_COLORS, other_color, tokenizer_color
from thesis_mlflow.report.tables import FACTOR_ORDER
from thesis_mlflow.spec import METS, VECTS


def _label(row) -> str:
    return f"{row['tokenizer']}-{row['pooling']}-{'met' if row['met'] else 'nomet'}-{row['vect']}v"


def fig_auc_panels(cells: pd.DataFrame) -> go.Figure:
    combos = list(itertools.product(METS, VECTS))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"MET {'in' if m else 'out'}, {v}-vectors" for m, v in combos], shared_yaxes=True)
    for i, (met, vect) in enumerate(combos):
        sub = cells[(cells["met"] == met) & (cells["vect"] == vect)]
        for pool in FACTOR_ORDER["pooling"]:
            s = sub[sub["pooling"] == pool]
            err = {"type": "data", "symmetric": False, "array": (s["auc_ci_high"] - s["test_auc_mean"]).fillna(0),
                   "arrayminus": (s["test_auc_mean"] - s["auc_ci_low"]).fillna(0)}
            fig.add_trace(go.Bar(x=s["tokenizer"], y=s["test_auc_mean"], error_y=err,
                                 name=pool, marker_color=POOLING_COLORS[pool], legendgroup=pool, showlegend=i == 0),
                          row=i // 2 + 1, col=i % 2 + 1)
    lo = max(0.5, float(cells["test_auc_mean"].min()) - 0.03) if len(cells) else 0.5
    fig.update_yaxes(range=[lo, 1.0 if not len(cells) else min(1.0, float(cells["test_auc_mean"].max()) + 0.02)], title_text="test AUC")
    fig.update_layout(barmode="group", title="Test AUC by tokenizer and pooling (mean over seeds, 95% t interval: seeds and test events)", height=650, legend_title="pooling")
    return fig


def fig_rejection(bands: pd.DataFrame, reference: str = "direct") -> go.Figure:
    """Background rejection 1/eps_B against signal efficiency per tokenizer, one column per
    background (and all together): geometric mean over seeds and matched cells, 95% band from
    the seed spread (``curves.rejection_bands``); below, the ratio to ``reference`` on the same
    cells and seeds, with its band."""
    panels = list(dict.fromkeys(bands["background"]))
    ratio = reference in set(bands["tokenizer"]) and bands["tokenizer"].nunique() > 1
    fig = make_subplots(rows=2 if ratio else 1, cols=max(len(panels), 1), subplot_titles=[f"vs {b}" for b in panels], shared_xaxes=True,
                        row_heights=[0.7, 0.3] if ratio else None, vertical_spacing=0.06)
    def trace(x, y, lo, hi, c, tok, row, col, show):
        keep = np.isfinite(lo) & np.isfinite(hi)
        if keep.any():
            fig.add_trace(go.Scatter(x=list(x[keep]) + list(x[keep])[::-1], y=list(hi[keep]) + list(lo[keep])[::-1], fill="toself",
                                     line={"width": 0}, fillcolor=c, opacity=0.2, hoverinfo="skip", showlegend=False, legendgroup=tok),
                          row=row, col=col)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=tok, line={"color": c}, legendgroup=tok, showlegend=show), row=row, col=col)

    for i, bkg in enumerate(panels):
        sub = bands[bands["background"] == bkg]
        for tok in dict.fromkeys(sub["tokenizer"]):
            s = sub[sub["tokenizer"] == tok]
            c = tokenizer_color(tok)
            trace(s["eff"].to_numpy(), s["rejection"].to_numpy(), s["lo"].to_numpy(), s["hi"].to_numpy(), c, tok, 1, i + 1, i == 0)
            if ratio and tok != reference:
                trace(s["eff"].to_numpy(), s["ratio"].to_numpy(), s["ratio_lo"].to_numpy(), s["ratio_hi"].to_numpy(), c, tok, 2, i + 1, False)
        if ratio:
            fig.add_hline(y=1.0, line_color=tokenizer_color(reference), row=2, col=i + 1)
    # one label per decade: with a panel per background, plotly's 2 and 5 between decades overlap
    fig.update_yaxes(type="log", dtick=1, exponentformat="power", row=1)
    fig.update_yaxes(title_text="background rejection 1/ε_B", row=1, col=1)
    if ratio:
        fig.update_yaxes(title_text=f"ratio to {reference}", row=2, col=1)
    fig.update_xaxes(title_text="signal efficiency", row=2 if ratio else 1)
    n = int(bands["n_cells"].max()) if len(bands) else 0
    fig.update_layout(title=f"Rejection against efficiency per tokenizer: geometric mean over seeds and the {n} matched cells, "
                            "95% band from the seed spread; ratio to the reference on the same cells and seeds", height=560 if ratio else 430)
    return fig


def fig_scores(hist: pd.DataFrame, cal: pd.DataFrame) -> go.Figure:
    """Signal-score distributions per process (one panel per tokenizer) and the calibration curve."""
    toks = list(dict.fromkeys(hist["tokenizer"])) if len(hist) else list(dict.fromkeys(cal["tokenizer"]))
    fig = make_subplots(rows=1, cols=len(toks) + 1, subplot_titles=[*(f"{t}: score per process" for t in toks), "calibration"])
    for i, tok in enumerate(toks):
        for proc, g in hist[hist["tokenizer"] == tok].groupby("process", sort=False):
            fig.add_trace(go.Scatter(x=(g["lo"] + g["hi"]) / 2, y=g["density"], mode="lines", line={"shape": "hvh", "color": PROCESS_COLORS.get(proc, NEUTRAL)},
                                     name=proc, legendgroup=proc, showlegend=i == 0), row=1, col=i + 1)
    for tok, g in cal.groupby("tokenizer", sort=False):
        fig.add_trace(go.Scatter(x=g["mean_score"], y=g["signal_fraction"], mode="lines+markers", name=f"{tok} (calibration)",
                                 legendgroup=tok, line={"color": tokenizer_color(tok)}, marker={"color": tokenizer_color(tok)}),
                      row=1, col=len(toks) + 1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#888"}, showlegend=False),
                  row=1, col=len(toks) + 1)
    fig.update_layout(title="Test scores over seeds and matched cells: density per process, and fraction of signal per score bin",
                      height=380)
    return fig


def fig_learning(bands: pd.DataFrame) -> go.Figure:
    """Validation AUC against epoch per tokenizer: mean over seeds and matched cells with its 95%
    band (``curves.learning_bands``; MLflow's UI shows each run, or a group's min / mean / max)."""
    fig = go.Figure()
    for tok in dict.fromkeys(bands["tokenizer"]):
        s = bands[bands["tokenizer"] == tok].dropna(subset=["lo", "hi"])
        c = tokenizer_color(tok)
        if len(s):
            fig.add_trace(go.Scatter(x=list(s["epoch"]) + list(s["epoch"])[::-1], y=list(s["hi"]) + list(s["lo"])[::-1], fill="toself",
                                     line={"width": 0}, fillcolor=c, opacity=0.2, hoverinfo="skip", showlegend=False, legendgroup=tok))
        s = bands[bands["tokenizer"] == tok]
        fig.add_trace(go.Scatter(x=s["epoch"], y=s["val_auc"], mode="lines", name=tok, line={"color": c}, legendgroup=tok))
    n = int(bands["n_cells"].max()) if len(bands) else 0
    fig.update_layout(title=f"Validation AUC against epoch per tokenizer: mean over seeds and the {n} matched cells, 95% band from the "
                            "seed spread", xaxis_title="epoch", yaxis_title="val AUC", height=480)
    fig.update_xaxes(tickformat="d", dtick=1 if len(bands) and bands["epoch"].max() <= 12 else None)  # epochs are whole numbers
    return fig


def fig_binning(binning_runs: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for i, r in enumerate(binning_runs.itertuples()):
        pops = {c: getattr(r, c) for c in binning_runs.columns if c.startswith("pop_")}
        fig.add_trace(go.Bar(x=list(pops), y=list(pops.values()), name=f"vect={r.vect} phi={r.phi} fit_on={r.fit_on}",
                             marker_color=other_color(i)))
    fig.update_layout(title="Binning occupancy on train (each bin should hold ~1/n_bins)", yaxis_title="fraction", barmode="group", height=450)
    return fig


def fig_codebook(vq_hist: dict[str, dict[str, list[tuple[int, float]]]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["codebook usage", "perplexity"])
    for i, (name, h) in enumerate(vq_hist.items()):
        for col, key in ((1, "codebook_usage"), (2, "perplexity")):
            if h.get(key):
                x, y = zip(*h[key], strict=True)
                fig.add_trace(go.Scatter(x=x, y=y, name=f"{name} {key}", mode="lines+markers", line={"color": other_color(i)}), row=1, col=col)
    fig.update_layout(title="VQ-VAE codebook health against epoch", height=420)
    return fig


VERDICT_SYMBOLS = {"equivalent": "diamond", "better": "triangle-right", "worse": "triangle-left", "non-inferior": "square",
                   "non-superior": "square-open", "inconclusive": "circle-open"}


def fig_forest(eff: pd.DataFrame, margin: float, primary: bool = True, reference: str = "direct") -> go.Figure:
    """The comparisons against the ±margin band (shaded): the 90% interval thick (TOST reads it),
    the 95% thin, a marker per verdict. ``primary``: the tokenizer pairs, each read against
    ``reference`` and drawn in its tokenizer's colour; else every other row but the per-background
    ones (other factors, interactions), neutral."""
    if primary:
        rows = verdict_rows(eff, reference)
    else:
        rest = eff[(eff["family"] != "primary") & (eff["kind"] != "background")] if len(eff) else eff
        rows = [r._asdict() for r in rest.itertuples(index=False)]
    rows = rows[::-1]  # plotly draws the first category at the bottom
    fig = go.Figure()
    fig.add_vrect(x0=-margin, x1=margin, fillcolor="#888888", opacity=0.18, line_width=0, layer="below")
    fig.add_vline(x=0, line_dash="dot", line_color=NEUTRAL)
    labels = [f"{r['level_a']} - {r['level_b']}" + (f" ({r['at']})" if r.get("at") else "" if primary else f" [{r['factor']}]")
              for r in rows]
    for r, y in zip(rows, labels, strict=True):
        c, group = (tokenizer_color(r["level_a"]), r["level_a"]) if primary else (NEUTRAL, None)
        for lo, hi, width in ((r["ci_low"], r["ci_high"], 1.5), (r["ci90_low"], r["ci90_high"], 7)):
            fig.add_trace(go.Scatter(x=[lo, hi], y=[y, y], mode="lines", line={"color": c, "width": width}, legendgroup=group,
                                     showlegend=False, hoverinfo="skip"))
    for verdict, symbol in VERDICT_SYMBOLS.items():
        sel = [(r, y) for r, y in zip(rows, labels, strict=True) if r.get("verdict") == verdict]
        if sel:
            fig.add_trace(go.Scatter(x=[r["estimate"] for r, _ in sel], y=[y for _, y in sel], mode="markers", name=verdict,
                                     marker={"symbol": symbol, "size": 12, "color": "white", "line": {"color": NEUTRAL, "width": 2}}))
    bare = [(r, y) for r, y in zip(rows, labels, strict=True) if r.get("verdict") not in VERDICT_SYMBOLS]
    if bare:  # interactions: no equivalence test, the estimate alone
        fig.add_trace(go.Scatter(x=[r["estimate"] for r, _ in bare], y=[y for _, y in bare], mode="markers", name="estimate (no verdict)",
                                 marker={"symbol": "circle", "size": 8, "color": NEUTRAL}))
    what = "Tokenizer comparisons" if primary else "Other factors and interactions"
    fig.update_layout(title=f"{what} against the ±{margin:g} AUC margin (shaded): 90% interval thick (TOST), 95% thin; marker: verdict",
                      xaxis_title="ΔAUC", height=max(260, 46 * len(rows) + 140), margin={"l": 260}, legend_title="verdict")
    return fig


def fig_backgrounds(bkg: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["AUC against one background", "rejection 1/ε_B at ε_S = 50%"])
    for tok in [t for t in FACTOR_ORDER["tokenizer"] if t in set(bkg["tokenizer"])]:
        s = bkg[bkg["tokenizer"] == tok]
        fig.add_trace(go.Bar(x=s["background"], y=s["auc_mean"], name=tok, legendgroup=tok, marker_color=tokenizer_color(tok),
                             error_y={"type": "data", "symmetric": False, "array": s["auc_ci_high"] - s["auc_mean"],
                                      "arrayminus": s["auc_mean"] - s["auc_ci_low"]}), row=1, col=1)
        fig.add_trace(go.Bar(x=s["background"], y=s["rej50_mean"], name=tok, legendgroup=tok, showlegend=False,
                             marker_color=tokenizer_color(tok)), row=1, col=2)
    if len(bkg):
        fig.update_yaxes(range=[max(0.5, float(bkg["auc_ci_low"].min()) - 0.02), min(1.0, float(bkg["auc_ci_high"].max()) + 0.02)], row=1, col=1)
    fig.update_layout(barmode="group", title="Per background process (mean over cells and seeds)", height=450, legend_title="tokenizer")
    return fig
