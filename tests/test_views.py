"""Results where the user looks: saved views in a real browser, the query API, the README example."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric, Param

from thesis_mlflow.report import results
from thesis_mlflow.server import process as server
from thesis_mlflow.tracking import views

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GRID = "binning_vs_direct-demo"
AUC = {("direct", 0): 0.80, ("direct", 1): 0.82, ("binned", 0): 0.76, ("binned", 1): 0.78, ("vqvae", 0): 0.73, ("vqvae", 1): 0.75}  # means 0.81, 0.77, 0.74


@pytest.fixture(scope="module")
def filled_server(shared_server, tmp_path_factory):
    """The session's real mlflow server (with its login), an experiment of this module holding a grid of 12 finished
    cells (3 tokenizers x 2 poolings x 2 seeds): more than the 10 runs MLflow's charts show by default. The
    client is the server's admin, through ``~/.mlflow/credentials``, as the user who started it."""
    tmp = tmp_path_factory.mktemp("views")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        srv = shared_server
        server.install_client_credentials(srv.root, home)
        mlflow.set_tracking_uri(srv.uri)
        c = mlflow.MlflowClient(srv.uri)
        exp = c.create_experiment("views-test")
        parent = c.create_run(exp, run_name=f"grid-{GRID}", tags={"step": "grid", "grid.name": GRID}).info.run_id
        rng = np.random.default_rng(0)
        names = []
        for tok, pool, seed in itertools.product(["direct", "binned", "vqvae"], ["mean", "max"], [0, 1]):
            name = f"{tok}-{pool}-met-4v-s{seed}"
            rid = c.create_run(exp, run_name=name, tags={"step": "train", "grid.name": GRID, "mlflow.parentRunId": parent,
                                                         "grid.cell": f"tokenizer={tok},pooling={pool},met=true,vect=4,seed={seed}"}).info.run_id
            c.log_batch(rid, params=[Param(k, str(v)) for k, v in {"tokenizer": tok, "pooling": pool, "met": "true", "vect": "4", "seed": seed,
                                                                   "n_params": 1000, "n_params_embedding": 64}.items()],
                        metrics=[Metric("val_auc", AUC[(tok, seed)] - 0.03 / e, 0, e) for e in (1, 2, 3)]
                        + [Metric(k, v, 0, 0) for k, v in {"test_auc": AUC[(tok, seed)], "test_rej_at_eff50": 10.0, "test_rej_at_eff70": 4.0,
                                                           "train_seconds": 60.0}.items()])
            labels = (rng.random(300) < 0.5).astype(np.int8)
            npz = tmp / "test_scores.npz"
            np.savez(npz, labels=labels, scores=rng.random(300).astype(np.float32), process=np.where(labels == 1, 1, 2).astype(np.int8))
            c.log_artifact(rid, str(npz), "eval")
            c.set_terminated(rid, "FINISHED")
            names.append(name)
        c.create_run(exp, run_name="binning-v4", tags={"step": "binning"})  # not a cell: never in the views
    yield srv, exp, names, home


@pytest.fixture()
def grid_on_server(filled_server, monkeypatch):
    srv, exp, names, home = filled_server
    monkeypatch.setenv("HOME", str(home))  # the client's login: ~/.mlflow/credentials
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "views-test")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(srv.uri)
    return srv, exp, names


def _dom_text(url: str, tmp_path: Path, ready: str, root: Path, width: int = 1900) -> str:
    """The rendered page's text, as a browser that has the login of the server at ``root`` (its
    admin's) sees it (``ready``: a text the rendered page has, see ``_dom_text_direct``)."""
    from .test_server import _logged_in_browser_proxy

    srv_uri = url.split("/#/")[0]
    user, password = server.credentials(root)
    with _logged_in_browser_proxy(srv_uri, user, password) as base:
        return _dom_text_direct(url.replace(srv_uri, base), tmp_path, ready, width)


def _dom_text_direct(url: str, tmp_path: Path, ready: str = "", width: int = 1900) -> str:
    """Chromium's DOM after the page's scripts ran. The page is done when ``ready`` is in it; on a
    busy machine the first virtual-time budget may end before, so it is tried again with more
    (a deadline, not a fixed sleep)."""
    for budget in (20000, 60000):
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync", "--disable-background-networking",
                 "--disable-component-update", f"--user-data-dir={tempfile.mkdtemp(prefix='chrome-', dir=tmp_path)}", f"--window-size={width},2400",
                 f"--virtual-time-budget={budget}"]
        res = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-2000:]
        text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", res.stdout, flags=re.S)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
        if ready in text:
            break
    return text


def test_views_open_in_a_real_browser(grid_on_server, tmp_path):
    if CHROMIUM is None:
        pytest.fail("headless Chromium not found: `make test` installs Debian's chromium package (apt-get install chromium)")
    srv, exp, names = grid_on_server
    links = views.write_views(GRID, exp)
    assert len(links) == 6 and all(u.startswith(f"{srv.uri}/#/experiments/{exp}/runs?viewStateShareKey=thesis-") for u in links.values())
    by_name = {k.split(": ", 1)[1]: v for k, v in links.items()}
    # all cells, the factor columns and test AUC, without a click
    # at 1600 px (a laptop; MLflow's assistant panel takes a quarter): the runs table draws only
    # the columns in view, so test AUC and its values being in the DOM means they are on screen
    text = _dom_text(by_name["cells by test AUC"], tmp_path, "12 matching runs", srv.root, width=1600)
    assert "cells by test AUC" in text and "Sort: test_auc" in text
    assert sorted(set(re.findall(r"(?:direct|binned|vqvae)-(?:mean|max)-met-4v-s[01]", text))) == sorted(names)
    assert "binning-v4" not in text and f"grid-{GRID}" not in text  # the grid's cells only
    for col in ("test_auc", "tokenizer", "pooling", "met", "vect", "seed"):
        assert re.search(rf"\b{col}\b", text), col
    assert "0.82" in text and "0.73" in text and "12 matching runs" in text
    # grouped by tokenizer: one group per level, each with its average
    text = _dom_text(by_name["mean by tokenizer"], tmp_path, "Group by: tokenizer", srv.root)
    assert re.findall(r"Group: (\w+) (\d+)", text) == [("direct", "4"), ("binned", "4"), ("vqvae", "4")]
    assert "0.81 (average)" in text and "0.77 (average)" in text and "0.74 (average)" in text
    text = _dom_text(by_name["mean by pooling"], tmp_path, "Group by: pooling", srv.root)
    assert sorted(re.findall(r"Group: (\w+) 6", text)) == ["max", "mean"]
    # charts: test AUC per cell and val_auc against epoch, every one of the 12 cells (MLflow's
    # default would show the first 10 only)
    text = _dom_text(by_name["charts (test AUC, val AUC per epoch)"], tmp_path, "Parallel Coordinates", srv.root)
    assert "test_auc" in text and "val_auc" in text and "Step" in text
    # our section first: validation AUC per epoch, test AUC per cell, the factors' parallel coordinates
    # to test AUC; MLflow's generated charts of the other metrics after it
    at = [text.find(t) for t in ("thesis-mlflow: the grid at a glance (3)", "val_auc 1 ", "test_auc 0.", "Parallel Coordinates",
                                 "tokenizer", "test_auc Model metrics", "test_rej_at_eff50")]
    assert -1 not in at and at == sorted(at), at
    assert [n for n in names if n not in text] == []
    assert text.count("Hide run") == len(names) == 12  # each cell's eye is open: all 12 charted (MLflow's default hides the 11th on)


def test_views_update_in_place_and_leave_user_views_alone(grid_on_server):
    c = mlflow.MlflowClient()
    exp = c.create_experiment("views-update")  # tags only: the views need no runs
    user_key = views.TAG_PREFIX + "my-own-view"
    c.set_experiment_tag(exp, user_key, '{"name": "mine", "createdAt": 1, "state": "{}"}')
    squatted = views.TAG_PREFIX + views.grid_views(GRID)[1].id  # a user's view under one of our ids
    c.set_experiment_tag(exp, squatted, '{"name": "also mine", "createdAt": 2, "state": "{}"}')
    views.write_views(GRID, exp)
    first = {k: v for k, v in c.get_experiment(exp).tags.items() if k.startswith(views.TAG_PREFIX)}
    views.write_views(GRID, exp)  # a re-run: same tags, no pile-up
    tags = c.get_experiment(exp).tags
    second = {k: v for k, v in tags.items() if k.startswith(views.TAG_PREFIX)}
    assert second == first and len(second) == 7  # 5 of ours written, the squatted id kept, the user's view
    assert tags[user_key].startswith('{"name": "mine"') and '"also mine"' in tags[squatted]
    assert tags[views.KIND_TAG] == views.KIND
    ours = views.decode(second[views.TAG_PREFIX + views.grid_views(GRID)[0].id])
    assert ours["name"].startswith(views.NAME_PREFIX) and ours["state"]["orderByKey"] == "metrics.`test_auc`"
    assert ours["state"]["searchFilter"] == f"tags.`grid.name` = '{GRID}' and tags.step = 'train'"
    # a view written by an older version (other columns): refreshed in place, its creation time kept
    cells = views.grid_views(GRID)[0]
    stale = views.View(cells.id, cells.name, {**cells.state, "selectedColumns": ["params.`old`"]})
    c.set_experiment_tag(exp, views.TAG_PREFIX + cells.id, views.encode(stale, 123))
    views.write_views(GRID, exp)
    tags = c.get_experiment(exp).tags
    assert tags[views.TAG_PREFIX + cells.id] == views.encode(cells, 123)
    assert tags[user_key].startswith('{"name": "mine"') and '"also mine"' in tags[squatted]


def test_query_api(grid_on_server):
    _, exp, names = grid_on_server
    runs = results.grid_runs(GRID)
    assert sorted(runs["name"]) == sorted(names) and set(runs["status"]) == {"FINISHED"}
    assert runs.loc[runs.name == "direct-max-met-4v-s1", "test_auc"].item() == pytest.approx(0.82)
    assert runs["met"].dtype == bool and runs["vect"].tolist() == [4] * 12
    cells = results.cell_table(GRID)
    assert len(cells) == 6 and set(cells["n_seeds"]) == {2}
    assert cells.set_index(["tokenizer", "pooling"]).loc[("binned", "max"), "test_auc_mean"] == pytest.approx(0.77)
    hist = results.histories(GRID, "val_auc")
    assert len(hist) == 12 * 3 and sorted(set(hist["step"])) == [1, 2, 3]
    s = results.test_scores(runs.run_id.iloc[0])
    assert set(s) == {"labels", "scores", "process"} and s["scores"].shape == (300,)
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        results.grid_runs(GRID, experiment="nope")
    with pytest.raises(ValueError, match="not found"):
        results.test_scores("0123456789abcdef0123456789abcdef")


def test_query_api_pages(grid_on_server, monkeypatch):
    monkeypatch.setattr(results, "PAGE", 5)  # 12 runs come back over three pages
    assert len(results.grid_runs(GRID)) == 12


def test_readme_example_runs(grid_on_server, capsys):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- results-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README has no results example"
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "direct-max-met-4v-s1" in out and "test events of" in out


def test_views_show_every_cell_and_test_auc_first():
    """MLflow's charts plot only the first 10 runs unless told otherwise (a grid has 36 or 108 cells);
    the table puts test AUC before the factors (it was past the right edge at 1600 px)."""
    from thesis_mlflow.tracking import views

    for v in views.grid_views("g"):
        assert v.state["runsHiddenMode"] == "SHOW_ALL"
        assert v.state["selectedColumns"][0] == "metrics.`test_auc`" and v.state["columnOrder"] == v.state["selectedColumns"]
        assert views.decode(views.encode(v, 0))["state"]["runsHiddenMode"] == "SHOW_ALL"


def test_the_view_state_the_browser_test_checked():
    """The exact state MLflow's UI reads (its field names are a contract only the browser test can
    check, and it runs against a server): ids, names, columns, order, grouping, chart mode."""
    from thesis_mlflow.tracking import views

    vs = views.grid_views("my grid/1")
    assert [v.id for v in vs] == ["thesis-my_grid_1-cells", "thesis-my_grid_1-by-tokenizer", "thesis-my_grid_1-by-pooling",
                                  "thesis-my_grid_1-by-met", "thesis-my_grid_1-by-vect", "thesis-my_grid_1-charts"]
    assert [v.name for v in vs] == ["[thesis-mlflow] my grid/1: cells by test AUC", *(f"[thesis-mlflow] my grid/1: mean by {f}" for f in
                                    ("tokenizer", "pooling", "met", "vect")), "[thesis-mlflow] my grid/1: charts (test AUC, val AUC per epoch)"]
    assert [v.mode for v in vs] == ["TABLE"] * 5 + ["CHART"]
    cols = ["metrics.`test_auc`", "params.`tokenizer`", "params.`pooling`", "params.`met`", "params.`vect`", "params.`seed`",
            "metrics.`test_rej_at_eff50`", "metrics.`test_rej_at_eff70`", "metrics.`test_acc`", "params.`n_params`", "params.`n_params_embedding`"]
    base = {"searchFilter": "tags.`grid.name` = 'my grid/1' and tags.step = 'train'", "orderByKey": "metrics.`test_auc`", "orderByAsc": False,
            "selectedColumns": cols, "columnOrder": cols, "runsHiddenMode": "SHOW_ALL"}
    assert vs[0].state == base and vs[5].state == {**base, **views.charts()}
    cards = vs[5].state["compareRunCharts"]
    assert [(c["type"], c.get("metricKey"), c.get("xAxisKey")) for c in cards] == [("LINE", "val_auc", "step"), ("BAR", "test_auc", None),
                                                                                    ("PARALLEL", None, None)]
    assert cards[2]["selectedParams"] == ["tokenizer", "pooling", "met", "vect"] and cards[2]["selectedMetrics"] == ["test_auc"]
    assert {c["metricSectionId"] for c in cards} == {vs[5].state["compareRunSections"][0]["uuid"]} and vs[5].state["isAccordionReordered"]
    assert all(c["runsCountToCompare"] >= 108 for c in cards)  # the thesis grid's 108 cells, not MLflow's 10
    assert vs[1].state == {**base, "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "tokenizer"}]}}
    value = views.encode(vs[1], 5)
    env = json.loads(value)
    assert value == json.dumps(env, separators=(",", ":")) and list(env) == ["name", "createdAt", "state"] and env["createdAt"] == 5
    assert env["state"].startswith("deflate;")
    raw = zlib.decompress(base64.b64decode(env["state"][len("deflate;"):])).decode()
    assert raw == json.dumps(vs[1].state, separators=(",", ":"))  # compact: a 5000-character tag holds more
    assert views.decode(value) == {"name": vs[1].name, "createdAt": 5, "state": vs[1].state}


def test_a_view_longer_than_a_tag_is_refused(monkeypatch):
    from thesis_mlflow.tracking import views

    v = views.grid_views("g")[0]
    n = len(views.encode(v, 0))
    monkeypatch.setattr(views, "MAX_TAG", n)
    views.encode(v, 0)  # exactly at the limit: kept
    monkeypatch.setattr(views, "MAX_TAG", n - 1)
    with pytest.raises(ValueError, match=f"is {n} characters; MLflow keeps at most {n - 1}"):
        views.encode(v, 0)
