"""The PhD summary from plain tables (built by ``steps/report.py`` from MLflow queries).

Inputs are a runs table (one row per train run: factors, status, metrics) and, per finished
run, the stored test labels and scores. Outputs: the per-cell table, main effects, paired
comparisons with bootstrap intervals on the test events, plotly figures, and the HTML / CSV
/ LaTeX files.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CELL = ["tokenizer", "pooling", "met", "vect"]
FACTOR_ORDER = {"tokenizer": ["direct", "binned", "binned_ambre", "vqvae"], "pooling": ["cls", "mean", "max"], "met": [True, False], "vect": [4, 5]}
# The comparisons the study is about: (a, b) on the tokenizer factor, matched on everything else.
PAIRS = [("binned", "direct"), ("vqvae", "direct"), ("binned", "binned_ambre")]


# --------------------------------------------------------------------------- AUC, bootstrap


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (B, n) at once; ties count one half.

    A bootstrap resample is a vector of multiplicities, so B resamples of the same test
    set cost one sort instead of B.
    """
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order].astype(bool), np.atleast_2d(weights)[:, order]
    _, grp = np.unique(s, return_inverse=True)
    wn = np.where(y, 0.0, w)  # (B, n) negative weights
    wp = np.where(y, w, 0.0)
    n_groups = grp.max() + 1 if len(grp) else 0
    neg_g = np.zeros((w.shape[0], n_groups))
    pos_g = np.zeros((w.shape[0], n_groups))
    for b in range(w.shape[0]):  # group sums (ties); loops over B only
        neg_g[b] = np.bincount(grp, wn[b], n_groups)
        pos_g[b] = np.bincount(grp, wp[b], n_groups)
    below = np.cumsum(neg_g, axis=1) - neg_g
    num = (pos_g * (below + 0.5 * neg_g)).sum(1)
    den = pos_g.sum(1) * neg_g.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Multiplicities of ``n_boot`` resamples of n events (multinomial = resampling with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


# --------------------------------------------------------------------------- tables


def cell_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell over seeds (finished runs only count)."""
    fin = runs[runs["status"] == "FINISHED"].dropna(subset=["test_auc"])
    g = fin.groupby(CELL, dropna=False)
    t = pd.DataFrame({
        "n_seeds": g["test_auc"].count(),
        "test_auc_mean": g["test_auc"].mean(),
        "test_auc_std": g["test_auc"].std(ddof=1),
        "rej50_mean": g["test_rej_at_eff50"].mean(),
        "rej70_mean": g["test_rej_at_eff70"].mean(),
        "n_params": g["n_params"].first(),
        "n_params_embedding": g["n_params_embedding"].first(),
        "train_minutes_mean": g["train_seconds"].mean() / 60,
    }).reset_index()
    for k in ("n_params", "n_params_embedding"):
        t[k] = t[k].astype("Int64")  # counts, not measurements
    return sort_cells(t)


def sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    key = {f: (lambda s, f=f: s.map(lambda v: FACTOR_ORDER[f].index(v) if v in FACTOR_ORDER[f] else 99)) for f in CELL}
    return df.sort_values(CELL, key=lambda s: key[s.name](s)).reset_index(drop=True)


def main_effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean test AUC per level of each factor, with its standard error over runs."""
    fin = runs[runs["status"] == "FINISHED"].dropna(subset=["test_auc"])
    rows = []
    for f in CELL:
        for lv, grp in fin.groupby(f):
            a = grp["test_auc"].to_numpy()
            rows.append({"factor": f, "level": lv, "n_runs": len(a), "auc_mean": a.mean(),
                         "auc_sem": a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.nan})
    return pd.DataFrame(rows)


def paired_comparisons(runs: pd.DataFrame, scores: dict[str, dict], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """AUC(a) - AUC(b) over cells matched on pooling, met, vect and seed.

    The interval is a paired bootstrap over test events: each resample is applied to both
    runs of every pair (they score the same test events), and the mean difference over pairs
    is recomputed, so the spread reflects the finite test set.
    """
    fin = runs[(runs["status"] == "FINISHED") & runs["run_id"].isin(scores)]
    key = ["pooling", "met", "vect", "seed"]
    rows = []
    weights_cache: dict[int, np.ndarray] = {}
    for a, b in PAIRS:
        A = fin[fin["tokenizer"] == a].set_index(key)
        B = fin[fin["tokenizer"] == b].set_index(key)
        common = A.index.intersection(B.index)
        if len(common) == 0:
            continue
        diffs, boot = [], []
        for k in common:
            ra, rb = A.loc[k, "run_id"], B.loc[k, "run_id"]
            sa, sb = scores[ra], scores[rb]
            diffs.append(float(A.loc[k, "test_auc"]) - float(B.loc[k, "test_auc"]))
            if len(sa["labels"]) != len(sb["labels"]) or not np.array_equal(sa["labels"], sb["labels"]):
                continue  # different test events: no paired resampling possible for this pair
            n = len(sa["labels"])
            w = weights_cache.setdefault(n, bootstrap_weights(n, n_boot, seed))
            boot.append(weighted_auc(sa["scores"], sa["labels"], w) - weighted_auc(sb["scores"], sb["labels"], w))
        row = {"comparison": f"{a} - {b}", "n_pairs": len(diffs), "delta_auc_mean": float(np.mean(diffs))}
        if boot:
            m = np.mean(boot, axis=0)  # (n_boot,) mean difference per resample
            row.update(ci_low=float(np.percentile(m, 2.5)), ci_high=float(np.percentile(m, 97.5)), n_bootstrap=n_boot,
                       n_pairs_bootstrapped=len(boot))
        rows.append(row)
    return pd.DataFrame(rows)


def missing_cells(expected: list[dict], runs: pd.DataFrame) -> pd.DataFrame:
    """Expected cells (incl. seed) without a finished run, with what is known about them."""
    have = {}
    for r in runs.itertuples():
        have[(r.tokenizer, r.pooling, r.met, r.vect, r.seed)] = r
    rows = []
    for e in expected:
        k = (e["tokenizer"], e["pooling"], e["met"], e["vect"], e["seed"])
        r = have.get(k)
        if r is None:
            rows.append({**e, "state": "NOT STARTED", "epochs_done": 0})
        elif r.status != "FINISHED" or pd.isna(r.test_auc):
            rows.append({**e, "state": r.status, "epochs_done": int(r.epochs_done) if not pd.isna(r.epochs_done) else 0})
    return pd.DataFrame(rows, columns=["tokenizer", "pooling", "met", "vect", "seed", "state", "epochs_done"])


# --------------------------------------------------------------------------- figures


def _label(row) -> str:
    return f"{row['tokenizer']}-{row['pooling']}-{'met' if row['met'] else 'nomet'}-{row['vect']}v"


def fig_auc_panels(cells: pd.DataFrame) -> go.Figure:
    combos = list(itertools.product([True, False], [4, 5]))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[f"MET {'in' if m else 'out'}, {v}-vectors" for m, v in combos], shared_yaxes=True)
    colors = {"cls": "#1f77b4", "mean": "#ff7f0e", "max": "#2ca02c"}
    for i, (met, vect) in enumerate(combos):
        sub = cells[(cells["met"] == met) & (cells["vect"] == vect)]
        for pool in FACTOR_ORDER["pooling"]:
            s = sub[sub["pooling"] == pool]
            fig.add_trace(go.Bar(x=s["tokenizer"], y=s["test_auc_mean"], error_y={"type": "data", "array": s["test_auc_std"].fillna(0)},
                                 name=pool, marker_color=colors[pool], legendgroup=pool, showlegend=i == 0),
                          row=i // 2 + 1, col=i % 2 + 1)
    lo = max(0.5, float(cells["test_auc_mean"].min()) - 0.03) if len(cells) else 0.5
    fig.update_yaxes(range=[lo, 1.0 if not len(cells) else min(1.0, float(cells["test_auc_mean"].max()) + 0.02)], title_text="test AUC")
    fig.update_layout(barmode="group", title="Test AUC by tokenizer and pooling (mean ± std over seeds)", height=650, legend_title="pooling")
    return fig


def fig_roc(curves: dict[str, dict]) -> go.Figure:
    """Background rejection 1/eps_B against signal efficiency, the HEP way."""
    from sklearn.metrics import roc_curve

    fig = go.Figure()
    for name, sc in curves.items():
        fpr, tpr, _ = roc_curve(sc["labels"], sc["scores"])
        keep = (fpr > 0) & (tpr > 0.05)
        idx = np.unique(np.linspace(0, keep.sum() - 1, min(400, int(keep.sum()))).astype(int)) if keep.sum() else []
        fig.add_trace(go.Scatter(x=tpr[keep][idx], y=1 / fpr[keep][idx], mode="lines", name=name))
    fig.update_layout(title="ROC of the best cell per tokenizer (seed with the highest AUC)", xaxis_title="signal efficiency",
                      yaxis_title="background rejection 1/ε_B", yaxis_type="log", height=500)
    return fig


def fig_val_auc(histories: dict[str, list[tuple[int, float]]]) -> go.Figure:
    fig = go.Figure()
    for name, h in sorted(histories.items()):
        if h:
            x, y = zip(*h, strict=True)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line={"width": 1}, marker={"size": 3}))
    fig.update_layout(title="Validation AUC against epoch, all runs", xaxis_title="epoch", yaxis_title="val AUC", height=550)
    return fig


def fig_binning(binning_runs: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for r in binning_runs.itertuples():
        pops = {c: getattr(r, c) for c in binning_runs.columns if c.startswith("pop_")}
        fig.add_trace(go.Bar(x=list(pops), y=list(pops.values()), name=f"vect={r.vect} phi={r.phi} fit_on={r.fit_on}"))
    fig.update_layout(title="Binning occupancy on train (each bin should hold ~1/n_bins)", yaxis_title="fraction", barmode="group", height=450)
    return fig


def fig_codebook(vq_hist: dict[str, dict[str, list[tuple[int, float]]]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["codebook usage", "perplexity"])
    for name, h in vq_hist.items():
        for col, key in ((1, "codebook_usage"), (2, "perplexity")):
            if h.get(key):
                x, y = zip(*h[key], strict=True)
                fig.add_trace(go.Scatter(x=x, y=y, name=f"{name} {key}", mode="lines+markers"), row=1, col=col)
    fig.update_layout(title="VQ-VAE codebook health against epoch", height=420)
    return fig


# --------------------------------------------------------------------------- documents


@dataclass
class Report:
    grid: str
    cells: pd.DataFrame
    effects: pd.DataFrame
    pairs: pd.DataFrame
    missing: pd.DataFrame
    figures: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def csv(self) -> str:
        out = self.cells.copy()
        out["met"] = out["met"].map(lambda v: "true" if v else "false")  # as the runs' params spell it
        return out.to_csv(index=False, float_format="%.6g")

    def tex(self) -> str:
        lines = [r"\begin{table}[htbp]", r"\centering", r"\small", r"\begin{tabular}{llllrccc}", r"\toprule",
                 r"Tokenizer & Pooling & MET & Vect & $n$ & AUC & $R_{50}$ & $R_{70}$ \\", r"\midrule"]
        for r in self.cells.itertuples():
            std = "" if pd.isna(r.test_auc_std) else rf" \pm {r.test_auc_std:.4f}"
            lines.append(rf"{r.tokenizer.replace('_', chr(92) + '_')} & {r.pooling} & {'yes' if r.met else 'no'} & {r.vect} & {r.n_seeds} & "
                         rf"${r.test_auc_mean:.4f}{std}$ & {r.rej50_mean:.1f} & {r.rej70_mean:.1f} \\")
        lines += [r"\bottomrule", r"\end{tabular}",
                  rf"\caption{{Test AUC (mean $\pm$ standard deviation over $n$ seeds) and background rejection $R_\epsilon = 1/\epsilon_B$ "
                  rf"at signal efficiency $\epsilon$, grid \texttt{{{self.grid.replace('_', chr(92) + '_')}}}.}}",
                  r"\label{tab:tokenization}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        def table(df: pd.DataFrame) -> str:
            return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="t") if len(df) else "<p>none</p>"

        parts = [f"<h1>Tokenization study — {html.escape(self.grid)}</h1>"]
        parts += [f"<p class=note>{html.escape(n)}</p>" for n in self.notes]
        parts.append(f"<h2>Missing cells ({len(self.missing)})</h2>" + (table(self.missing) if len(self.missing) else "<p>none: every expected cell has a finished run</p>"))
        parts.append("<h2>Per cell (over seeds)</h2>" + table(self.cells))
        parts.append("<h2>Main effects</h2>" + table(self.effects))
        parts.append("<h2>Paired comparisons (matched pooling, MET, vect, seed; 95% paired bootstrap over test events)</h2>" + table(self.pairs))
        for i, fig in enumerate(self.figures):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
        style = ("body{font-family:sans-serif;margin:2em;max-width:1300px} table.t{border-collapse:collapse;font-size:13px;margin:1em 0}"
                 "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right} .note{color:#555}")
        return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.grid)} summary</title><style>{style}</style></head><body>" \
               + "\n".join(parts) + "</body></html>"
