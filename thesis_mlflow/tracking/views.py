"""Saved views of the MLflow runs table for a grid, written as experiment tags.

MLflow 3.15+ keeps a saved view as the experiment tag ``mlflow.sharedViewState.<id>`` whose
value is ``{"name", "createdAt", "state": "deflate;" + base64(zlib(json))}``; a link with
``?viewStateShareKey=<id>`` opens it, and the page's Views menu lists it. The views this
project writes have ids starting ``thesis-`` and names starting ``[thesis-mlflow]``: they are
updated in place on every grid run / report, and tags of any other id (views a user saved)
are never touched.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from thesis_mlflow.spec import FACTORS
from thesis_mlflow.tracking import queries
from thesis_mlflow.tracking import runs as tracking

TAG_PREFIX = "mlflow.sharedViewState."
ID_PREFIX = "thesis-"
NAME_PREFIX = "[thesis-mlflow]"
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"  # opens the experiment on its runs table, not the GenAI overview
MAX_TAG = 5000  # MLflow's limit on an experiment tag value
METRICS = ("test_auc", "test_rej_at_eff50", "test_rej_at_eff70", "test_acc")


@dataclass(frozen=True)
class View:
    id: str
    name: str
    state: dict
    mode: str = "TABLE"  # TABLE or CHART (the runs page's compareRunsMode)


def _param(k: str) -> str:
    return f"params.`{k}`"


def _metric(k: str) -> str:
    return f"metrics.`{k}`"


def grid_views(grid: str) -> list[View]:
    """The views of a grid: all cells by test AUC, one grouped by each factor, and charts."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", grid)
    # test AUC first, then the factors: the figure the user came for within the first screen
    columns = [_metric("test_auc"), *(_param(k) for k in (*FACTORS, "seed")), *(_metric(k) for k in METRICS if k != "test_auc"),
               _param("n_params"), _param("n_params_embedding")]
    base = {"searchFilter": queries.grid_filter(grid), "orderByKey": _metric("test_auc"), "orderByAsc": False, "selectedColumns": columns,
            "columnOrder": columns,
            "runsHiddenMode": "SHOW_ALL"}  # charts plot every cell of the grid, not MLflow's default first 10 runs
    views = [View(f"{ID_PREFIX}{slug}-cells", f"{NAME_PREFIX} {grid}: cells by test AUC", base)]
    for f in FACTORS:
        group = {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": f}]}
        views.append(View(f"{ID_PREFIX}{slug}-by-{f}", f"{NAME_PREFIX} {grid}: mean by {f}", {**base, "groupBy": group}))
    views.append(View(f"{ID_PREFIX}{slug}-charts", f"{NAME_PREFIX} {grid}: charts (test AUC, val AUC per epoch)", {**base, **charts()},
                      mode="CHART"))
    return views


SECTION = "thesis-main"


def charts() -> dict:
    """The charts view's own first section (MLflow's RunsChartsCardConfig objects, as its UI
    saves them): validation AUC against epoch for every cell, test AUC per cell, and a parallel
    coordinates chart from the four factors to test AUC (the whole grid in one picture). MLflow
    adds its generated charts of the other metrics below, in its own sections."""
    card = {"runsCountToCompare": 200, "metricSectionId": SECTION, "deleted": False, "isGenerated": False}
    line = {**card, "uuid": "thesis-val-auc", "type": "LINE", "displayName": "validation AUC per epoch", "metricKey": "val_auc",
            "selectedMetricKeys": ["val_auc"], "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {"xMin": None, "xMax": None, "yMin": None, "yMax": None}, "xAxisKey": "step", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": False, "useGlobalLineSmoothing": True}
    bar = {**card, "uuid": "thesis-test-auc", "type": "BAR", "displayName": "test AUC per cell", "metricKey": "test_auc"}
    parallel = {**card, "uuid": "thesis-parallel", "type": "PARALLEL", "displayName": "factors -> test AUC",
                "selectedParams": list(FACTORS), "selectedMetrics": ["test_auc"], "showAllRuns": True}
    section = {"uuid": SECTION, "name": "thesis-mlflow: the grid at a glance", "display": True, "isReordered": False, "deleted": False,
               "isGenerated": False}
    return {"compareRunCharts": [line, bar, parallel], "compareRunSections": [section], "isAccordionReordered": True}


def encode(view: View, created_ms: int) -> str:
    """The tag value MLflow's UI reads: an envelope with the zlib-deflated, base64 state."""
    state = "deflate;" + base64.b64encode(zlib.compress(json.dumps(view.state, separators=(",", ":")).encode())).decode()
    value = json.dumps({"name": view.name, "createdAt": created_ms, "state": state}, separators=(",", ":"))
    if len(value) > MAX_TAG:
        raise ValueError(f"view {view.name!r} is {len(value)} characters; MLflow keeps at most {MAX_TAG} in a tag")
    return value


def decode(value: str) -> dict:
    """A saved view's tag value -> {"name", "createdAt", "state": dict}."""
    env = json.loads(value)
    state = env["state"]
    if state.startswith("deflate;"):
        state = zlib.decompress(base64.b64decode(state[len("deflate;"):])).decode()
    return {**env, "state": json.loads(state)}


def url(base_uri: str, experiment_id: str, view: View) -> str:
    return f"{base_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={view.id}&compareRunsMode={view.mode}"


def write_views(grid: str, experiment_id: str) -> dict[str, str]:
    """Write (or update in place) the grid's views and the experiment's kind; returns {view name: link}."""
    tags = queries.experiment_tags(experiment_id)
    if tags.get(KIND_TAG) != KIND:
        tracking.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    out = {}
    now = int(time.time() * 1000)
    for v in grid_views(grid):
        key = TAG_PREFIX + v.id
        created = now
        if key in tags:  # ours from an earlier run: keep its creation time, replace the rest
            try:
                old = decode(tags[key])
                if not str(old.get("name", "")).startswith(NAME_PREFIX):
                    continue  # a user's view that happens to use this id: leave it alone
                created = int(old.get("createdAt", now))
            except (ValueError, KeyError, zlib.error):
                continue
        value = encode(v, created)
        if tags.get(key) != value:
            tracking.set_experiment_tag(experiment_id, key, value)
        out[v.name] = url(tracking.tracking_uri(), experiment_id, v) if tracking.tracking_uri().startswith("http") else v.id
    return out


def echo_views(grid: str, experiment_id: str, echo: Callable[[str], None]) -> dict[str, str]:
    """Write (or refresh) the grid's views and show their links."""
    links = write_views(grid, experiment_id)
    echo(f"saved views of {grid} in the MLflow UI (also in its Views menu):")
    for name, link in links.items():
        echo(f"  {name.split(': ', 1)[-1]:<40} {link}")
    return links
