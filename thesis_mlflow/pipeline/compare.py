"""The ``compare`` step: our binned file (or binning run) against a file made elsewhere.

Structure, token and per-component agreement, row alignment, and which phi / fit_on
convention reproduces their file (``compare/summary.json``, key ``best_match``), with an
offline plotly page. The readers and measures are ``thesis_mlflow.learn.prebinned``'s.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from thesis_mlflow.errors import BadInput, MissingInput
from thesis_mlflow.learn import data
from thesis_mlflow.learn import prebinned as cmp
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.paths import resolve
from thesis_mlflow.tracking import queries
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)


def resolve_ours(ours: str) -> Path:
    p = resolve(ours)
    if p.is_file():
        return p
    if len(ours) == 32 and all(ch in "0123456789abcdef" for ch in ours):
        arts = queries.artifact_paths(ours, "binned")
        if not arts:
            raise BadInput(f"run {ours} has no binned/ artifact (is it a binning run?)")
        return queries.artifact_path(ours, arts[0])
    raise MissingInput(f"--ours {ours}: neither a file nor a binning run id")


def _aligned_view(ours: cmp.TokenFile, theirs: cmp.TokenFile):
    """Our rows in the order that matches theirs, trying the plausible split combinations."""
    xt, yt = theirs.stacked()
    names = [s for s in data.SPLITS if s in ours.X]
    for combo in (names, ["train", "test"], ["train"], ["test"]):
        if all(s in ours.X for s in combo):
            xo, yo = ours.stacked(combo)
            if cmp.rows_align(xo, yo, xt, yt):
                return combo, xo, xt
    return None, ours.stacked()[0], xt


def run_compare(ours_arg: str, theirs_arg: str, raw: str | None, n_bins: int, vect: int) -> tuple[dict, cmp.TokenFile, cmp.TokenFile, Binning]:
    """The comparison summary, and the two files and the decoder it used (for the figures)."""
    theirs_path = resolve(theirs_arg)
    structure = cmp.inspect(theirs_path)
    theirs = cmp.read_tokens(theirs_path)
    ours = cmp.read_tokens(resolve_ours(ours_arg))
    raw_splits = data.read_raw(resolve(raw)) if raw else None  # validated before anything is logged
    b = Binning(n_bins=int(ours.attrs.get("n_bins", n_bins)), vect=int(ours.attrs.get("vect", vect)))
    xo_all, _ = ours.stacked()
    xt_all, _ = theirs.stacked()
    summary = {"ours": str(ours.path), "theirs": str(theirs_path), "theirs_structure": structure,
               "theirs_layout": {"splits": list(theirs.X), "keys": theirs.keys, "combined": theirs.combined,
                                 "n_events": int(len(xt_all)), "vocabulary_used": int(len(np.unique(xt_all)))}}
    dist = cmp.histogram_agreement(xo_all, xt_all, max(b.vocab_size, int(xt_all.max()) + 1))
    comp_o, comp_t = cmp.decoded_components(xo_all, b), cmp.decoded_components(xt_all, b)
    summary["distribution"] = {"tokens": dist, **{k: cmp.histogram_agreement(comp_o[k], comp_t[k]) for k in comp_o}}
    combo, xo, xt = _aligned_view(ours, theirs)
    summary["aligned"] = combo is not None
    summary["aligned_splits"] = combo
    if combo is not None:
        summary["events"] = cmp.event_agreement(xo, xt, b)
    if raw_splits is not None:
        scores = {}
        for phi in ("signed", "abs"):
            for fit_on in ("all", "background"):
                cand = Binning(n_bins=b.n_bins, vect=b.vect, phi_convention=phi, fit_on=fit_on).fit(raw_splits["train"])
                toks = {s: cand.transform(raw_splits[s]) for s in data.SPLITS}
                cand_file = cmp.TokenFile(toks, {s: raw_splits[s].y for s in data.SPLITS}, {}, {}, Path("candidate"))
                c_combo, cx, tx = _aligned_view(cand_file, theirs)
                if c_combo is not None:
                    score, how = float((cx == tx).mean()), "identical_token_fraction"
                else:
                    score, how = 1 - cmp.histogram_agreement(cand_file.stacked()[0], xt_all, max(b.vocab_size, int(xt_all.max()) + 1))["js"], "1-js"
                scores[f"phi={phi},fit_on={fit_on}"] = {"score": score, "measure": how, "phi": phi, "fit_on": fit_on}
        best = max(scores, key=lambda k: scores[k]["score"])
        summary["conventions"] = scores
        summary["best_match"] = {"phi": scores[best]["phi"], "fit_on": scores[best]["fit_on"], "score": scores[best]["score"],
                                 "measure": scores[best]["measure"]}
    return summary, ours, theirs, b


def figure_page(summary: dict, xo: np.ndarray, xt: np.ndarray, b: Binning) -> str:
    import plotly.graph_objects as go

    figs = []
    n = max(b.vocab_size, int(xt.max()) + 1)
    po, pt = np.bincount(xo.ravel(), minlength=n)[1:], np.bincount(xt.ravel(), minlength=n)[1:]
    f = go.Figure([go.Scatter(y=po / max(po.sum(), 1), name="ours", mode="lines"), go.Scatter(y=pt / max(pt.sum(), 1), name="theirs", mode="lines")])
    f.update_layout(title="Token frequencies (padding excluded)", xaxis_title="token - 1", yaxis_type="log", height=420)
    figs.append(f)
    co, ct = cmp.decoded_components(xo, b), cmp.decoded_components(xt, b)
    for k in co:
        m = max(int(co[k].max(initial=0)), int(ct[k].max(initial=0))) + 1
        a, c = np.bincount(co[k], minlength=m)[1:], np.bincount(ct[k], minlength=m)[1:]
        g = go.Figure([go.Bar(y=a / max(a.sum(), 1), x=list(range(1, m)), name="ours"), go.Bar(y=c / max(c.sum(), 1), x=list(range(1, m)), name="theirs")])
        js = summary["distribution"][k]["js"]
        g.update_layout(title=f"{k}: JS divergence {js:.4f} bits", barmode="group", height=320)
        figs.append(g)
    if "conventions" in summary:
        s = summary["conventions"]
        figs.append(go.Figure(go.Bar(x=list(s), y=[v["score"] for v in s.values()])).update_layout(
            title=f"Which convention reproduces their file ({next(iter(s.values()))['measure']})", height=350))
    body = "".join(fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs))
    head = f"<h1>ours vs theirs</h1><pre>{json.dumps({k: v for k, v in summary.items() if k not in ('theirs_structure', 'events')}, indent=1, default=str)[:4000]}</pre>"
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>compare</title></head><body style='font-family:sans-serif'>{head}{body}</body></html>"


def log_comparison(ours: str, theirs: str, raw: str | None, n_bins: int, vect: int) -> tuple[str, dict, dict]:
    """Compare, then log the comparison as a ``compare`` run; returns (run id, summary, logged metrics)."""
    summary, o, t, b = run_compare(ours, theirs, raw or None, n_bins, vect)
    with tracking.step_run("compare", run_name=f"compare-{Path(theirs).stem}") as run:
        tracking.log_params({"ours": summary["ours"], "theirs": summary["theirs"], "raw": raw or "", "aligned": summary["aligned"]})
        if "best_match" in summary:
            tracking.log_params({"best_phi": summary["best_match"]["phi"], "best_fit_on": summary["best_match"]["fit_on"]})
        m = {"token_overlap": summary["distribution"]["tokens"]["overlap"], "token_js": summary["distribution"]["tokens"]["js"]}
        m.update({f"js_{k}": v["js"] for k, v in summary["distribution"].items() if k != "tokens"})
        if "events" in summary:
            m.update({k: v for k, v in summary["events"].items() if isinstance(v, float)})
        tracking.log_metrics(m)
        tracking.log_dict(summary, "compare/summary.json")
        d = Path(tempfile.mkdtemp())
        (d / "compare.html").write_text(figure_page(summary, o.stacked()[0], t.stacked()[0], b))
        tracking.log_artifact(d / "compare.html", "compare")
        return run.info.run_id, summary, m
