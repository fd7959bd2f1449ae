"""The generate entry point through click's CliRunner, logged to a temporary SQLite store."""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.learn import data


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


def test_log_params_compares_meaning_not_spelling(mlflow_env, tmp_path):
    from thesis_mlflow.tracking import runs as tracking

    (tmp_path / "data").mkdir()
    with tracking.step_run("generate"):
        mlflow.log_params({"lr": "1e-4", "output": "data/x.h5", "flag": "True", "empty": "''"})
        tracking.log_params({"lr": 0.0001, "output": str(tmp_path / "data" / "x.h5"), "flag": True, "empty": "", "new": 3})
        with pytest.raises(ValueError, match="lr"):
            tracking.log_params({"lr": 0.001})
        run_id = mlflow.active_run().info.run_id
    p = mlflow.get_run(run_id).data.params
    assert p["lr"] == "1e-4" and p["new"] == "3"  # the user's spelling stays


def test_a_generated_file_is_logged_again_only_as_it_is(mlflow_env, tmp_path):
    """`generate --no-log` writes the file and its data card and logs nothing; `generate` with the
    same settings then logs that very file (same digest, not rewritten, tagged reused). Other
    settings, or a file changed after its card was written, are generated anew. Planted: reuse
    without comparing the digest, or without comparing the settings, each fails it."""
    out = tmp_path / "d" / "gen.h5"
    gen = lambda *a: CliRunner().invoke(main, ["generate", "--n-events", "400", "--output", str(out), *a])  # noqa: E731
    res = gen("--seed", "3", "--no-log")
    assert res.exit_code == 0 and "not logged" in res.output, res.output
    assert mlflow.search_runs(experiment_names=["test-exp"], output_format="list") == []
    first = data.sha256(out)
    stamp = out.stat().st_mtime_ns
    res = gen("--seed", "3")
    assert res.exit_code == 0, res.output
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert r.data.tags["generate.reused"] == "true" and r.data.params["output_sha256"] == first
    assert out.stat().st_mtime_ns == stamp and "generate_seconds" not in r.data.metrics and r.data.metrics["n_train"] == 320
    # other settings: generated anew (the seed changes the events)
    assert gen("--seed", "4").exit_code == 0
    runs = mlflow.search_runs(experiment_names=["test-exp"], order_by=["attributes.start_time DESC"], output_format="list")
    assert runs[0].data.tags["generate.reused"] == "false" and runs[0].data.params["output_sha256"] != first
    # a file changed after its card was written: not trusted, generated anew
    with open(out, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    assert gen("--seed", "4").exit_code == 0
    runs = mlflow.search_runs(experiment_names=["test-exp"], order_by=["attributes.start_time DESC"], output_format="list")
    assert runs[0].data.tags["generate.reused"] == "false"
    assert runs[0].data.params["output_sha256"] == data.sha256(out) == json.loads(out.with_suffix(".card.json").read_text())["sha256"]
