"""Every entry point of ``MLproject`` through ``mlflow run --env-manager local``, as a user types
it: its default parameters, in a copy of the project whose default data file is small (made by
``generate``, itself run as an entry point). MLflow Projects logs every parameter of the entry
point before the step starts; a step that then logs one of those names with another value (the
report's ``margin=grid`` once became ``margin=0.005``) fails here.

Only what would take minutes is made small, on the command line, and listed in ``SMALL``: the
number of generated events, the epochs of ``train``, and the grid file ``grid`` runs (a grid named
like the thesis grid, so that ``report`` runs with every default)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from thesis_mlflow.paths import ROOT

pytestmark = pytest.mark.slow

EXPERIMENT = "entry-points"
# entry point -> the parameters given (everything else at MLproject's default)
SMALL = {
    "generate": {"n_events": "3000"},
    "binning": {},
    "vqvae": {},
    "compare": {"theirs": "data/binned/4tops_synthetic_v4_b5_signed_all.h5"},  # required (no default): our own file
    "train": {"pooling": "max", "tokenizer": "binned", "epochs": "1"},  # the command as the user wrote it, one epoch
    "grid": {"grid": "tiny_grid.yaml"},
    "rehearse": {"grid": "tiny_grid.yaml", "steps": "3"},
    "report": {},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, template_store):
    """A copy of the project (MLproject, the steps, the configs) and a tracking store of its own."""
    root = tmp_path_factory.mktemp("project")
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(ROOT / name, root / name)
    for name in ("steps", "configs"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(template_store, root / "mlflow.db")
    doc = {"name": "binning_vs_direct", "data": str(root / "data" / "4tops_synthetic.h5"),
           "factors": {"tokenizer": ["direct"], "pooling": ["max"], "met": [True], "vect": [4]},
           "scales": {"full": {"seeds": [0], "train": {"epochs": 1, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                                      "max_train_events": 600, "max_eval_events": 300}}}}
    (root / "tiny_grid.yaml").write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    return root, uri


def test_every_entry_point_is_tested_here():
    entry_points = set(yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"])
    assert entry_points == set(SMALL), entry_points ^ set(SMALL)


@pytest.mark.parametrize("entry", list(SMALL))
def test_an_entry_point_runs_through_mlflow_run_with_its_defaults(project, entry):
    root, uri = project
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    for k in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(k, None)
    cmd = [str(bin_dir / "mlflow"), "run", str(root), "-e", entry, "--env-manager", "local", "--experiment-name", EXPERIMENT,
           *(a for k, v in SMALL[entry].items() for a in ("-P", f"{k}={v}"))]
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    mine = [r for r in runs if f"Run (ID '{r.info.run_id}') succeeded" in res.stderr]
    assert len(mine) == 1, res.stderr[-2000:]
    r = mine[0]
    assert r.info.status == "FINISHED"
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][entry]["parameters"]
    assert set(declared) <= set(r.data.params), set(declared) - set(r.data.params)  # MLflow's own params, each kept as given
    for k, v in SMALL[entry].items():
        assert r.data.params[k] == v
    if entry == "generate":  # the step agrees with what MLflow logged, and logged the file it wrote
        from thesis_mlflow.learn import data

        assert r.data.params["output_sha256"] == data.sha256(root / "data" / "4tops_synthetic.h5")
    if entry == "train":  # attached to mlflow's own run; its binning reused from the binning entry point
        assert r.data.params["n_params"] and "test_auc" in r.data.metrics
    if entry == "rehearse":  # the forecast on the rehearsal's own parent, not on the grid's
        assert r.data.tags.get("grid.name") != "binning_vs_direct" and "full run: 1 cells in 1 packs" in res.stdout + res.stderr
    if entry == "report":
        assert r.data.params["margin"] == "grid" and float(r.data.params["equivalence_margin"]) == 0.005
