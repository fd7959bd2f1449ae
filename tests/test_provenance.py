"""Every run says which code, environment and device made it; a grid refuses code with
uncommitted changes unless told, and then records the diff."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.errors import BadSetting
from thesis_mlflow.tracking import provenance


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(root), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@example.org")
    run("config", "user.name", "t")
    (root / "a.py").write_text("x = 1\n")
    run("add", "a.py")
    run("commit", "-qm", "first")
    return root


def test_code_of_a_clean_and_a_dirty_tree(tmp_path):
    root = _repo(tmp_path)
    clean = provenance.code_state(root)
    assert clean.commit and len(clean.commit) == 40 and not clean.dirty and clean.diff == ""
    assert provenance.check_clean(False, root) == clean
    (root / "a.py").write_text("x = 2\n")
    (root / "new.py").write_text("y = 1\n")
    provenance.code_state.cache_clear()
    dirty = provenance.code_state(root)
    assert dirty.dirty and dirty.commit == clean.commit and set(dirty.changed) == {"a.py", "new.py"}
    assert "-x = 1\n+x = 2" in dirty.diff and "# untracked: new.py" in dirty.diff and dirty.label.endswith("-dirty")
    with pytest.raises(BadSetting, match="uncommitted changes .*a.py.*--allow-dirty"):
        provenance.check_clean(False, root)
    assert provenance.check_clean(True, root).dirty  # allowed: the caller records the diff
    provenance.code_state.cache_clear()
    assert provenance.code_state(tmp_path).commit is None  # not a git checkout: says so, refuses nothing
    provenance.code_state.cache_clear()


def test_a_train_run_records_code_environment_and_device(mlflow_env, tiny_raw):
    res = CliRunner().invoke(main, ["train", "--tokenizer", "direct", "--epochs", "1", "--data", str(tiny_raw), "--d-model", "16",
                                    "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--max-train-events", "200",
                                    "--max-eval-events", "100", "--system-metrics", "false"])
    assert res.exit_code == 0, res.output
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'train'", output_format="list")
    t = r.data.tags
    code = provenance.code_state()
    assert t.get("mlflow.source.git.commit") == code.commit and t["code.dirty"] == ("true" if code.dirty else "false")
    assert t["mlflow.source.name"] == "thesis-mlflow train" and t["mlflow.user"] and t["host"]
    import importlib.metadata

    import torch

    assert t["env.torch"] == importlib.metadata.version("torch") and t["env.numpy"] == importlib.metadata.version("numpy")
    assert t["env.cuda"] == (torch.version.cuda or "none") and t["env.python"].count(".") == 2
    assert t["env.mlflow"] == mlflow.__version__ and t["device"].startswith("CPU: ")
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "provenance")}
    assert arts == ({"provenance/diff.patch"} if code.dirty else set())
    assert r.data.params["rng_stream"]  # and its random stream (spec.RunStream)


def test_mixed_code_is_flagged_in_grid_status():
    from thesis_mlflow.grid.status import FINISHED, RUNNING, CellState, GridStatus

    cells = [CellState("a", FINISHED, "r1", code="0123456789ab"), CellState("b", RUNNING, "r2", code="0123456789ab"),
             CellState("c", FINISHED, "r3", code="ba9876543210-dirty"), CellState("d", "not started")]
    st = GridStatus("g", cells)
    assert set(st.code_versions()) == {"0123456789ab", "ba9876543210-dirty"}
    text = st.render(with_logs=False)
    assert "MIXED CODE: 0123456789ab (2 cells: a, b), ba9876543210-dirty (1 cells: c)" in text
    assert "MIXED CODE" not in GridStatus("g", cells[:2]).render(with_logs=False)


TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "64", "--warmup-steps", "5",
        "--max-train-events", "300", "--max-eval-events", "100", "--system-metrics", "false"]


def test_reproduce_a_cell_from_its_run_id(mlflow_env, tiny_raw, monkeypatch):
    """A tiny CPU run made again from its run id: identical test scores. With a setting planted
    different (the learning rate), the same code and environment: "different", exit 1."""
    res = CliRunner().invoke(main, ["train", "--tokenizer", "binned", "--pooling", "mean", "--epochs", "2", "--seed", "1",
                                    "--data", str(tiny_raw), *TINY])
    assert res.exit_code == 0, res.output
    (orig,) = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'train'", output_format="list")
    res = CliRunner().invoke(main, ["reproduce", orig.info.run_id])
    assert res.exit_code == 0, res.output
    assert f"reproduction of run {orig.info.run_id}" in res.output and ": identical (largest test-score difference 0" in res.output
    runs = mlflow.search_runs(experiment_names=["test-exp"], filter_string=f"tags.`reproduction.of` = '{orig.info.run_id}'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["reproduction.verdict"] == "identical"
    assert runs[0].data.params["rng_stream"] == orig.data.params["rng_stream"]

    from thesis_mlflow.pipeline import reproduce as R

    real = R.spec_of
    monkeypatch.setattr(R, "spec_of", lambda run: real(run).replace(lr=real(run).lr * 3))
    res = CliRunner().invoke(main, ["reproduce", orig.info.run_id])
    assert res.exit_code == 1 and ": different (largest test-score difference" in res.output, res.output
    assert "this cell does not reproduce" in res.output


def test_reproduce_refuses_what_it_cannot_remake(mlflow_env):
    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    rid = c.create_run(exp, tags={"step": "train"}).info.run_id
    for k, v in {"tokenizer": "direct", "pooling": "cls", "met": "true", "vect": "4", "seed": "0", "data": "x.h5"}.items():
        c.log_param(rid, k, v)  # a run of the bare-seed scheme: no rng_stream
    res = CliRunner().invoke(main, ["reproduce", rid])
    assert res.exit_code == 1 and "did not record ['rng_stream']" in res.output, res.output
    res = CliRunner().invoke(main, ["reproduce", "nope"])
    assert res.exit_code == 1 and "not found" in res.output
