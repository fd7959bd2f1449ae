"""compare: agreement of two binned files, the convention finder, odd layouts, binned_ambre training."""

from __future__ import annotations

import json

import h5py
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.learn import data
from thesis_mlflow.learn import prebinned as cmp
from thesis_mlflow.learn.binning import Binning, write_binned

from .conftest import write_colleague_layouts


@pytest.fixture(scope="module")
def binned_files(tmp_path_factory, tiny_raw):
    d = tmp_path_factory.mktemp("cmp")
    raw = data.read_raw(tiny_raw)
    out = {}
    for phi in ("signed", "abs"):
        b = Binning(phi_convention=phi).fit(raw["train"])
        out[phi] = d / f"{phi}.h5"
        write_binned(out[phi], b, raw, "x")
    out["combined"], out["shuffled"] = write_colleague_layouts(out["abs"], d)
    out["dir"] = d
    return out


def test_file_against_itself_agrees_fully(binned_files):
    from thesis_mlflow.pipeline.compare import run_compare

    s, *_ = run_compare(str(binned_files["signed"]), str(binned_files["signed"]), None, 5, 4)
    assert s["distribution"]["tokens"]["overlap"] == pytest.approx(1.0) and s["distribution"]["tokens"]["js"] == pytest.approx(0.0, abs=1e-12)
    assert s["aligned"] and s["events"]["identical_token_fraction"] == 1.0 and s["events"]["identical_event_fraction"] == 1.0
    conf = np.array(s["events"]["confusion"]["b_phi"])
    assert np.all(conf == np.diag(np.diag(conf)))  # all on the diagonal


def test_convention_finder_identifies_other_phi(binned_files, tiny_raw):
    from thesis_mlflow.pipeline.compare import run_compare

    s, *_ = run_compare(str(binned_files["signed"]), str(binned_files["combined"]), str(tiny_raw), 5, 4)
    assert s["best_match"]["phi"] == "abs" and s["best_match"]["fit_on"] == "all"
    assert s["best_match"]["score"] == 1.0 and s["best_match"]["measure"] == "identical_token_fraction"
    assert s["theirs_layout"]["combined"] is True
    assert s["aligned"] and s["events"]["agree_id"] == 1.0 and s["events"]["agree_b_phi"] < 0.9  # same events, other phi bins
    assert s["events"]["agree_b_pT"] == 1.0


def test_row_shuffled_copy_same_distribution_not_aligned(binned_files):
    from thesis_mlflow.pipeline.compare import run_compare

    s, *_ = run_compare(str(binned_files["abs"]), str(binned_files["shuffled"]), None, 5, 4)
    assert s["distribution"]["tokens"]["overlap"] == pytest.approx(1.0) and s["distribution"]["tokens"]["js"] == pytest.approx(0.0, abs=1e-12)
    assert s["aligned"] is False and "events" not in s


def test_reader_accepts_other_names_and_splits(tmp_path, binned_files):
    tf = cmp.read_tokens(binned_files["combined"])
    assert tf.combined and tf.keys == {"all": ("tokens", "labels")}
    src = cmp.read_tokens(binned_files["signed"])
    with h5py.File(tmp_path / "named.h5", "w") as f:
        for s, short in (("train", "training"), ("val", "validation"), ("test", "testing")):
            f[f"inputs_{short}"] = src.X[s]
            f[f"targets_{short}"] = src.y[s]
    tf2 = cmp.read_tokens(tmp_path / "named.h5")
    assert list(tf2.X) == ["train", "val", "test"] and np.array_equal(tf2.X["val"], src.X["val"])
    info = cmp.inspect(binned_files["combined"])
    assert info["datasets"]["tokens"]["shape"][1] == 20 and info["datasets"]["tokens"]["dtype"] == "float32"


def test_corrupt_and_incompatible_files(tmp_path, binned_files):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n" + b"garbage" * 100)
    with pytest.raises(data.DataFormatError, match="not a readable HDF5"):
        cmp.read_tokens(bad)
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        f["X"] = np.zeros((10, 92))
        f["y"] = np.ones(10)
    with pytest.raises(data.DataFormatError, match=r"no token array of shape \[N, 20\]"):
        cmp.read_tokens(tmp_path / "wide.h5")
    res = CliRunner().invoke(main, ["compare", "--ours", str(binned_files["signed"]), "--theirs", str(bad)])
    assert res.exit_code == 1 and "not a readable HDF5" in res.output


def test_compare_entry_point_logs_summary(mlflow_env, binned_files, tiny_raw):
    res = CliRunner().invoke(main, ["compare", "--ours", str(binned_files["signed"]), "--theirs", str(binned_files["combined"]), "--raw", str(tiny_raw)])
    assert res.exit_code == 0, res.output
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert r.data.tags["step"] == "compare" and r.data.params["best_phi"] == "abs"
    s = json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/compare/summary.json"))
    assert s["best_match"]["phi"] == "abs"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "compare")}
    assert arts == {"compare/summary.json", "compare/compare.html"}


def test_a_colleague_file_of_the_other_vect_is_refused(mlflow_env, binned_files, tiny_raw):
    from .test_train import TINY

    path = binned_files["signed"]  # made with vect=4 (its attributes say so)
    res = CliRunner().invoke(main, ["train", "--tokenizer", "binned_ambre", "--binned-path", str(path), "--data", str(tiny_raw),
                                    "--vect", "5", "--epochs", "1", *TINY])
    assert res.exit_code == 1 and f"binned file {path} was made with vect=4, but vect=5 was requested" in res.output
    assert mlflow.search_runs(experiment_names=["test-exp"], output_format="list") == []


@pytest.mark.parametrize("which, how", [("combined", "aligned_with_raw"), ("shuffled", "seeded_80_10_10_seed0")])
def test_train_on_combined_colleague_file(mlflow_env, binned_files, tiny_raw, which, how):
    from .test_train import TINY

    res = CliRunner().invoke(main, ["train", "--tokenizer", "binned_ambre", "--binned-path", str(binned_files[which]), "--data", str(tiny_raw),
                                    "--epochs", "1", *TINY])
    assert res.exit_code == 0, res.output
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert r.data.params["ambre_split"] == how and r.data.params["tokenizer"] == "binned_ambre" and r.data.params["vect"] == "4"
