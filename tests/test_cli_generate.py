"""The generate entry point through click's CliRunner, logged to a temporary SQLite store."""

from __future__ import annotations

import json

import mlflow
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow import data


def test_generate_logs_run(mlflow_env, tmp_path):
    out = tmp_path / "d" / "gen.h5"
    res = CliRunner().invoke(main, ["generate", "--n-events", "400", "--seed", "3", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert data.validate_file(out) == {"train": 320, "val": 40, "test": 40}
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["sha256"] == data.sha256(out)
    runs = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["step"] == "generate"
    assert r.data.params["n_events"] == "400" and r.data.params["seed"] == "3"
    assert r.data.params["output_sha256"] == card["sha256"]
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "data")]
    assert arts == ["data/gen.card.json"]
    assert r.inputs.dataset_inputs[0].dataset.name == "gen.h5"


def test_generate_refuses_bad_values(mlflow_env, tmp_path):
    out = tmp_path / "gen.h5"
    res = CliRunner().invoke(main, ["generate", "--n-events", "3", "--output", str(out)])
    assert res.exit_code == 2 and "n-events" in res.output
    res = CliRunner().invoke(main, ["generate", "--seed", "abc", "--output", str(out)])
    assert res.exit_code == 2 and "seed" in res.output
    assert not out.exists()
    assert mlflow.search_runs(experiment_names=["test-exp"], output_format="list") == []


def test_validate_command(tiny_raw, tmp_path):
    res = CliRunner().invoke(main, ["validate", str(tiny_raw)])
    assert res.exit_code == 0 and "train=2400" in res.output
    bad = tmp_path / "bad.h5"
    bad.write_text("x")
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1 and "not a readable HDF5" in res.output
