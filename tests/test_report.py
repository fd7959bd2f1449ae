"""The report: from a store filled through the MLflow API with known values to HTML/CSV/TeX."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from thesis_mlflow.report.build import run_report

GRID_DOC = {"name": "rep", "factors": {"tokenizer": ["direct", "binned"], "pooling": ["mean"], "met": [True], "vect": [4]},
            "scales": {"full": {"seeds": [0, 1]}}}


def _scores(rng, n, strength):
    labels = (rng.random(n) < 0.5).astype(np.int8)
    scores = 1 / (1 + np.exp(-(strength * (labels - 0.5) * 2 + rng.normal(0, 1, n))))
    return labels, scores


@pytest.fixture()
def filled_store(mlflow_env, tmp_path):
    """A grid of 4 expected cells: 3 finished with known metrics and scores, 1 never run."""
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    gfile = tmp_path / "rep.yaml"
    gfile.write_text(yaml.safe_dump(GRID_DOC))
    parent = c.create_run(exp, run_name="grid-rep", tags={"step": "grid", "grid.name": "rep"}).info.run_id
    c.log_param(parent, "scale_name", "full")
    c.log_artifact(parent, str(gfile), "grid")
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.5).astype(np.int8)  # the same test events for every run
    process = np.where(labels == 1, 1, rng.integers(2, 6, 2000)).astype(np.int8)
    known = {}
    for tok, seed, strength in (("direct", 0, 1.0), ("direct", 1, 1.2), ("binned", 0, 0.6)):
        scores = 1 / (1 + np.exp(-(strength * (labels - 0.5) * 2 + rng.normal(0, 1, 2000))))
        auc = roc_auc_score(labels, scores)
        rid = c.create_run(exp, run_name=f"{tok}-mean-met-4v-s{seed}",
                           tags={"step": "train", "grid.name": "rep", "mlflow.parentRunId": parent}).info.run_id
        for k, v in {"tokenizer": tok, "pooling": "mean", "met": "true", "vect": "4", "seed": seed, "n_params": 1000, "n_params_embedding": 50}.items():
            c.log_param(rid, k, v)
        for e in (1, 2):
            c.log_metric(rid, "val_auc", auc - 0.01 / e, step=e)
        rej50, rej70 = 10.0 + seed, 4.0 + seed
        for k, v in {"test_auc": auc, "test_rej_at_eff50": rej50, "test_rej_at_eff70": rej70, "train_seconds": 60.0}.items():
            c.log_metric(rid, k, v)
        buf = tmp_path / "test_scores.npz"
        np.savez(buf, labels=labels, scores=scores.astype(np.float32), process=process)
        c.log_artifact(rid, str(buf), "eval")
        c.set_terminated(rid, "FINISHED")
        keep = (labels == 1) | (process == 5)
        known[(tok, seed)] = {"auc": float(roc_auc_score(labels, scores.astype(np.float32))), "rej50": rej50, "rej70": rej70,
                              "auc_vs_ttZ": float(roc_auc_score(labels[keep], scores.astype(np.float32)[keep]))}
    return known


def test_report_tables_equal_logged_values(filled_store, tmp_path):
    out = run_report("rep", str(tmp_path / "out"), n_boot=50, echo=lambda *_: None)
    df = pd.read_csv(out / "summary.csv")
    assert {"tokenizer", "pooling", "met", "vect", "n_seeds", "test_auc_mean", "test_auc_std", "rej50_mean", "rej70_mean"} <= set(df.columns)
    d = df.set_index("tokenizer")
    k = filled_store
    assert d.loc["direct", "n_seeds"] == 2 and d.loc["binned", "n_seeds"] == 1
    assert d.loc["direct", "test_auc_mean"] == pytest.approx((k["direct", 0]["auc"] + k["direct", 1]["auc"]) / 2, abs=1e-5)
    assert d.loc["direct", "test_auc_std"] == pytest.approx(np.std([k["direct", 0]["auc"], k["direct", 1]["auc"]], ddof=1), abs=1e-5)
    assert d.loc["direct", "rej50_mean"] == pytest.approx(10.5) and d.loc["binned", "rej70_mean"] == pytest.approx(4.0)
    assert d.loc["direct", "met"] == True  # noqa: E712  (pandas reads "true" back as a bool)
    html_text = (out / "summary.html").read_text()
    # the matched comparison binned - direct exists for seed 0 only: the hand-computed difference
    delta = k["binned", 0]["auc"] - k["direct", 0]["auc"]
    eff = pd.read_csv(out / "effects.csv")
    row = eff[(eff["kind"] == "main") & (eff["comparison"] == "binned - direct")].iloc[0]
    assert row["n_pairs"] == 1 and row["n_seeds"] == 1 and row["estimate"] == pytest.approx(delta, abs=1e-6)
    assert row["ci_low"] < row["estimate"] < row["ci_high"] and 0 < row["p_holm"] <= 1
    ttz = eff[(eff["kind"] == "background") & (eff["at"] == "ttZ")].iloc[0]
    assert ttz["estimate"] == pytest.approx(k["binned", 0]["auc_vs_ttZ"] - k["direct", 0]["auc_vs_ttZ"], abs=1e-6)
    # the answer is written from these numbers, on the page and in the TeX
    assert f"{-delta:+.4f}" in html_text and "one seed per cell" in html_text.lower()
    bkg = pd.read_html(io.StringIO(html_text), match="rej30_mean")[0]
    direct_ttz = bkg[(bkg["tokenizer"] == "direct") & (bkg["background"] == "ttZ")].iloc[0]
    assert direct_ttz["auc_mean"] == pytest.approx((k["direct", 0]["auc_vs_ttZ"] + k["direct", 1]["auc_vs_ttZ"]) / 2, abs=1e-4)
    # plotly.js once, as a file beside a small page; PDFs for the thesis
    assert "<script src='plotly.min.js'>" in html_text and len(html_text) < 1_000_000 and (out / "plotly.min.js").stat().st_size > 1e6
    for pdf in ("auc_by_cell", "effects", "backgrounds", "rejection", "val_auc"):
        assert (out / "figures" / f"{pdf}.pdf").read_bytes()[:5] == b"%PDF-"
    # the missing cell is listed as missing
    missing = pd.read_html(io.StringIO(html_text), match="NOT STARTED")[0]
    assert len(missing) == 1 and missing.iloc[0]["tokenizer"] == "binned" and missing.iloc[0]["seed"] == 1
    tex = (out / "summary.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and rf"\num{{{k['binned', 0]['auc']:.4f}" in tex
    assert r"\paragraph{Result.}" in tex and f"{-delta:+.4f}" in tex and r"\pm" in tex
    # logged to a run tagged step=report
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'report'", output_format="list")
    assert r.data.tags["grid.name"] == "rep"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "report")}
    assert arts == {"report/summary.html", "report/plotly.min.js", "report/summary.csv", "report/summary.tex", "report/effects.csv",
                    "report/figures"}
    # nothing queued or running any more and one cell missing: the parent left RUNNING is closed as FAILED
    (parent,) = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'grid'", output_format="list")
    assert parent.info.status == "FAILED"


def test_report_of_unknown_grid_fails_clearly(mlflow_env):
    with pytest.raises(ValueError, match="no runs of grid 'nope'"):
        run_report("nope", echo=lambda *_: None)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(filled_store, tmp_path):
    if CHROMIUM is None:
        pytest.fail("headless Chromium not found: `make test` installs Debian's chromium package (apt-get install chromium)")
    out = run_report("rep", str(tmp_path / "out"), n_boot=20, echo=lambda *_: None, margin=0.01)
    page = (out / "summary.html").resolve()
    text = page.read_text()
    assert "equivalence margin ±0.01 AUC (report --margin)" in text and "±0.01 AUC by two one-sided tests" in text
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=8000",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("Error" in ln or "Uncaught" in ln)]
    assert console == [], console
    # plotly drew every figure: each div got its SVG
    assert dom.stdout.count('class="main-svg"') >= 3 * 2
    shot = tmp_path / "shot.png"
    r = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1300,2400", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file()
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10  # not a blank page
    assert (img < 128).mean() > 0.005  # some ink: text, axes, bars


def test_the_margin_comes_from_report_margin_then_the_grid_file_then_the_default(filled_store):
    """``report --margin`` wins over the grid file's ``report.margin``, which wins over the
    default; the page says which it used (plant: the grid file's margin ignored)."""
    from dataclasses import replace

    from thesis_mlflow.report.build import build, collect

    data = collect("rep")
    for given, in_file, want, where in ((None, None, 0.005, "the default"), (None, 0.02, 0.02, "the grid file's report.margin"),
                                        (0.03, 0.02, 0.03, "report --margin")):
        r = build("rep", replace(data, margin=in_file), n_boot=20, margin=given)
        assert r.margin == want and r.effects.attrs["margin"] == want
        assert any(f"equivalence margin ±{want:g} AUC ({where})" in n for n in r.notes), r.notes
        # the first screen's forest plot shades that margin, whichever source gave it
        (band,) = [sh for sh in r.forests[0].layout.shapes if sh.type == "rect"]
        assert (band.x0, band.x1) == (-want, want)
        assert verdict_table_margin(r) == f"±{want:g}"


def verdict_table_margin(r) -> str:
    from thesis_mlflow.report.answer import verdict_table

    (m,) = set(verdict_table(r.effects, r.margin)["margin"])
    return m


def _trace_colors(tr) -> set:
    out = set()
    for attr in ("line", "marker"):
        c = getattr(getattr(tr, attr, None), "color", None)
        if isinstance(c, str):
            out.add(c.lower())
    if getattr(tr, "fillcolor", None):
        out.add(tr.fillcolor.lower())
    return out


def test_one_colour_per_tokenizer_in_every_figure_and_pdf(filled_store, tmp_path, monkeypatch):
    """Every trace of the page that draws a tokenizer (by its name or legend group) has that
    tokenizer's colour (``report.palette``), and no other trace uses a tokenizer's colour; the
    PDFs' lines and markers likewise; epochs read as whole numbers and the rejection panels show
    one label per decade (plants: a figure with its own colour map; ttH in direct's colour)."""
    from thesis_mlflow.report import figures
    from thesis_mlflow.report.build import build, collect, write_pdfs
    from thesis_mlflow.report.palette import TOKENIZER_COLORS

    r = build("rep", collect("rep"), n_boot=20)
    reserved = {c.lower() for c in TOKENIZER_COLORS.values()}
    seen_toks = set()
    for fig in [*r.forests, *r.figures]:
        for tr in fig.data:
            tok = next((t for t in TOKENIZER_COLORS if t in (tr.legendgroup, tr.name, (tr.name or "").split(" (")[0])), None)
            colors = _trace_colors(tr)
            if tok is not None and colors:
                seen_toks.add(tok)
                assert colors == {TOKENIZER_COLORS[tok]}, (fig.layout.title.text, tr.name, colors)
            else:
                assert not (colors & reserved), (fig.layout.title.text, tr.name, colors)
    assert seen_toks == {"direct", "binned"}
    learning = next(f for f in r.figures if "Validation AUC" in (f.layout.title.text or ""))
    assert learning.layout.xaxis.tickformat == "d"
    rejection = next(f for f in r.figures if "Rejection against efficiency" in (f.layout.title.text or ""))
    assert rejection.layout.yaxis.type == "log" and rejection.layout.yaxis.dtick == 1

    drawn: list = []
    save = figures._save

    def keep(fig, path):
        for ax in fig.axes:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label in TOKENIZER_COLORS:
                    c = h.get_color() if hasattr(h, "get_color") else h.lines[0].get_color()
                    drawn.append((path.name, label, str(c).lower()))
            if path.name == "val_auc.pdf":
                assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    write_pdfs(r, tmp_path / "pdf")
    toks = drawn
    assert {f for f, _, _ in toks} >= {"auc_by_cell.pdf", "backgrounds.pdf", "rejection.pdf", "val_auc.pdf"}
    assert all(c == TOKENIZER_COLORS[label] for _, label, c in toks), toks


@pytest.mark.parametrize("margin", [None, 0.01])
def test_the_forest_plot_shades_the_margin_the_report_used(filled_store, tmp_path, margin):
    """The first screen's forest plot: its shaded band spans exactly -margin..+margin, the margin
    the verdicts used (the default, or report --margin); the 90% interval is drawn thicker than
    the 95%; the TeX includes the same forest as a figure."""
    from thesis_mlflow.report.build import build, collect

    r = build("rep", collect("rep"), n_boot=20, margin=margin)
    want = 0.005 if margin is None else margin
    assert r.margin == want
    primary = r.forests[0]
    (band,) = [sh for sh in primary.layout.shapes if sh.type == "rect"]
    assert (band.x0, band.x1) == (-want, want)
    widths = sorted({tr.line.width for tr in primary.data if tr.mode == "lines"})
    assert widths == [1.5, 7]
    assert {tr.name for tr in primary.data if tr.mode == "markers"} <= set(report_verdicts())
    assert r"\includegraphics[width=\linewidth]{figures/effects.pdf}" in r.tex() and f"$\\pm${want:g} AUC" in r.tex()


def report_verdicts():
    from thesis_mlflow.report.equivalence import VERDICTS

    return VERDICTS


def test_the_first_screen_answers_and_the_page_never_scrolls_sideways(filled_store, tmp_path):
    """In Chromium at 1400 x 900, as a reader opens it: the verdict table and the forest plot of
    the tokenizer pairs lie within the first two screen heights (positions from the DOM), and the
    page is no wider than the window (wide tables scroll in their own box)."""
    if CHROMIUM is None:
        pytest.fail("headless Chromium not found: `make test` installs Debian's chromium package (apt-get install chromium)")
    import json

    out = run_report("rep", str(tmp_path / "out"), n_boot=20, echo=lambda *_: None)
    page = out / "summary.html"
    probe = ("<script>window.addEventListener('load', () => setTimeout(() => { const r = s => document.querySelector(s)"
             ".getBoundingClientRect(); const o = {verdicts: r('#verdicts').bottom, forest: r('#forest-primary').bottom, "
             "forest_h: r('#forest-primary').height, scroll_w: document.documentElement.scrollWidth, inner_w: window.innerWidth}; "
             "const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(o); document.body.appendChild(p); }, 300));"
             "</script>")
    probed = out / "probed.html"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=8000", "--window-size=1400,900"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    got = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout).group(1).replace("&quot;", '"'))
    assert got["forest_h"] > 100, got  # drawn, not an empty box
    assert got["verdicts"] <= 2 * 900 and got["forest"] <= 2 * 900, got
    assert got["scroll_w"] <= got["inner_w"], got
