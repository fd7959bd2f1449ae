"""Ambre-style tokens: the formula on hand-made events, decode, quantiles, conventions, the step."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.learn import data
from thesis_mlflow.learn.binning import Binning, phi_bins, read_binned, write_binned

from .conftest import make_event_rows

EDGES = {"pt": [30.0, 50.0, 80.0, 120.0], "eta": [-1.0, -0.3, 0.3, 1.0], "met": [20.0, 40.0, 60.0, 100.0], "e": [50.0, 90.0, 150.0, 250.0]}


def _split(rows, labels=None):
    X = np.stack(rows)
    return data.Split(X=X, y=np.asarray(labels or [1] * len(rows)))


def _binning(**kw):
    b = Binning(**kw)
    b.edges = {k: np.asarray(v) for k, v in EDGES.items() if k in b.features}
    return b


def test_formula_on_hand_made_objects():
    # (id, E, pT, eta, phi) -> expected bins (b_pT, b_eta, b_phi)
    objs = [
        (1, 100.0, 25.0, -2.0, -np.pi),   # pT bin 1, eta bin 1, phi exactly -pi -> bin 1
        (2, 200.0, 55.0, 0.0, 0.0),       # pT 3, eta 3, phi 0 -> signed bin 3
        (7, 900.0, 500.0, 2.4, 3.0),      # pT 5, eta 5, phi 3.0 -> bin 5
        (3, 40.0, 30.0, -1.0, 1.5),       # exactly at edges: pT 30 -> bin 2, eta -1 -> bin 2; phi 1.5 -> bin 4
    ]
    row = make_event_rows(objs, met=0.0, met_phi=np.pi)
    tok = _binning().transform(_split([row]))[0]
    expect = [125 * 0 + 25 * 0 + 5 * 0 + 1, 125 * 1 + 25 * 2 + 5 * 2 + 3, 125 * 6 + 25 * 4 + 5 * 4 + 5, 125 * 2 + 25 * 1 + 5 * 1 + 4]
    assert tok[:4].tolist() == expect
    assert np.all(tok[4:18] == 0)  # padding stays 0
    assert tok[18] == 876  # MET exactly 0 -> first MET bin
    assert tok[19] == 881  # MET-phi exactly +pi wraps to -pi -> first bin


def test_plus_pi_equals_minus_pi_and_abs_convention():
    phi = np.array([-np.pi, np.pi, -0.1, 0.1, np.pi - 1e-4, np.float32(-np.pi)])
    assert phi_bins(phi, 5, "signed").tolist() == [1, 1, 3, 3, 5, 1]
    assert phi_bins(phi, 5, "abs").tolist() == [5, 5, 1, 1, 5, 5]


def test_abs_vs_signed_exactly_as_specified():
    rng = np.random.default_rng(0)
    phi = rng.uniform(-np.pi, np.pi, 100_000)
    s = phi_bins(phi, 5, "signed")
    a = phi_bins(phi, 5, "abs")
    np.testing.assert_array_equal(s, np.floor((phi + np.pi) / (2 * np.pi / 5)).astype(int) + 1)
    np.testing.assert_array_equal(a, np.floor(np.abs(phi) / (np.pi / 5)).astype(int) + 1)
    # both equally populated on uniform phi (the "width pi/5 over [-pi, pi)" bug would put 60% in bin 5)
    for b in (s, a):
        frac = np.bincount(b, minlength=6)[1:] / len(b)
        assert np.all(np.abs(frac - 0.2) < 0.01)


def test_full_and_one_object_events_and_vect5():
    rng = np.random.default_rng(1)
    full = [(int(rng.integers(1, 8)), 300.0, float(rng.uniform(20, 200)), float(rng.uniform(-2.4, 2.4)), float(rng.uniform(-3, 3))) for _ in range(18)]
    one = [(5, 60.0, 45.0, 0.5, -2.0)]
    sp = _split([make_event_rows(full), make_event_rows(one)])
    for vect in (4, 5):
        b = _binning(vect=vect)
        tok = b.transform(sp)
        assert tok.shape == (2, 20)
        assert np.all(tok[0, :18] > 0) and tok[1, 0] > 0 and np.all(tok[1, 1:18] == 0)
        dec = b.decode(tok[:, :18])
        np.testing.assert_array_equal(dec["id"][0], [o[0] for o in full])
        assert dec["id"][1, 0] == 5 and dec["b_pT"][1, 0] == 2 and dec["b_eta"][1, 0] == 4 and dec["b_phi"][1, 0] == 1
        assert tok[:, :18].max() <= b.n_object_tokens
        assert np.all((tok[:, 18] > b.n_object_tokens) & (tok[:, 18] <= b.n_object_tokens + 5))
        assert np.all((tok[:, 19] > b.n_object_tokens + 5) & (tok[:, 19] < b.vocab_size))
    b5 = _binning(vect=5)
    assert b5.vocab_size == 4386 and _binning().vocab_size == 886
    # E = 300 for the full event -> E bin 5; the one-object event E = 60 -> bin 2
    dec = b5.decode(b5.transform(sp)[:, :18])
    assert np.all(dec["b_E"][0] == 5) and dec["b_E"][1, 0] == 2


@pytest.mark.parametrize("vect", [4, 5])
@pytest.mark.parametrize("n_bins", [3, 5, 7])
def test_decode_inverts_encode(vect, n_bins):
    rng = np.random.default_rng(n_bins)
    b = Binning(n_bins=n_bins, vect=vect)
    n = 5000
    comps = {k: rng.integers(1, n_bins + 1, n) for k in ("b_pT", "b_eta", "b_phi", "b_E")}
    ids = rng.integers(1, 8, n)
    tok = b.encode_components(ids, comps["b_pT"], comps["b_eta"], comps["b_phi"], comps["b_E"] if vect == 5 else None)
    assert tok.min() >= 1 and tok.max() <= b.n_object_tokens
    combos = np.stack([ids] + [comps[k] for k in ("b_pT", "b_eta", "b_phi")] + ([comps["b_E"]] if vect == 5 else []), axis=1)
    assert len(np.unique(tok)) == len(np.unique(combos, axis=0))  # distinct inputs <-> distinct tokens
    dec = b.decode(tok)
    np.testing.assert_array_equal(dec["id"], ids)
    for k in ("b_pT", "b_eta", "b_phi") + (("b_E",) if vect == 5 else ()):
        np.testing.assert_array_equal(dec[k], comps[k])
    # every token decodes and re-encodes to itself
    allt = np.arange(1, b.n_object_tokens + 1)
    d = b.decode(allt)
    np.testing.assert_array_equal(b.encode_components(d["id"], d["b_pT"], d["b_eta"], d["b_phi"], d.get("b_E")), allt)


def test_quantile_bins_equally_populated(tiny_splits):
    from thesis_mlflow.learn import synthetic

    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=40_000, seed=5))["train"]
    b = Binning(vect=5).fit(sp)
    dec = b.decode(b.transform(sp))
    for key in ("b_pT", "b_eta", "b_E"):
        frac = np.bincount(dec[key][:, :18][sp.valid], minlength=6)[1:] / sp.valid.sum()
        assert np.all(np.abs(frac - 0.2) < 0.01), (key, frac)
    met = dec["met"][:, 18]
    frac = np.bincount(met[sp.met > 0], minlength=6)[1:] / (sp.met > 0).sum()
    assert np.all(np.abs(frac - 0.2) < 0.01)


def test_fit_on_background_uses_only_labels_2_to_5(tiny_splits):
    tr = tiny_splits["train"]
    b_all = Binning(fit_on="all").fit(tr)
    b_bg = Binning(fit_on="background").fit(tr)
    bg = data.Split(X=tr.X[tr.y != 1], y=tr.y[tr.y != 1])
    np.testing.assert_allclose(b_bg.edges["pt"], Binning().fit(bg).edges["pt"])
    assert not np.allclose(b_all.edges["pt"], b_bg.edges["pt"])


def test_save_load_roundtrip(tmp_path, tiny_splits):
    b = Binning(vect=5, phi_convention="abs").fit(tiny_splits["train"])
    b2 = Binning.load(b.save(tmp_path / "e.json"))
    np.testing.assert_array_equal(b.transform(tiny_splits["val"]), b2.transform(tiny_splits["val"]))


def test_read_binned_limits(tmp_path, tiny_splits):
    """Only the first N events of a split are read, the same as reading all and cutting."""
    b = Binning().fit(tiny_splits["train"])
    path = tmp_path / "b.h5"
    write_binned(path, b, tiny_splits, "0" * 64)
    full, some = read_binned(path), read_binned(path, limits={"train": 50, "val": None})
    assert len(some.X["train"]) == 50 and len(some.X["val"]) == len(full.X["val"]) and len(some.X["test"]) == len(full.X["test"])
    np.testing.assert_array_equal(some.X["train"], full.X["train"][:50])
    np.testing.assert_array_equal(some.y["train"], full.y["train"][:50])


@pytest.mark.parametrize("kw, msg", [({"n_bins": 1}, "n_bins"), ({"vect": 3}, "vect"), ({"phi_convention": "deg"}, "signed, abs"), ({"fit_on": "signal"}, "all, background")])
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Binning(**kw)


def test_binning_step_logs_everything(mlflow_env, tiny_raw, tmp_path):
    out = tmp_path / "b" / "binned.h5"
    args = ["binning", "--input", str(tiny_raw), "--output", str(out), "--vect", "5", "--phi", "abs", "--fit-on", "background"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    bd = read_binned(out)
    assert bd.X["train"].shape == (2400, 20)
    assert bd.attrs["vocab_size"] == 4386 and bd.attrs["phi_convention"] == "abs" and bd.attrs["fit_on"] == "background"
    assert bd.attrs["source_sha256"] == data.sha256(tiny_raw) and bd.attrs["vect"] == 5
    assert set(bd.attrs["edges"]) == {"pt", "eta", "met", "e"} and len(bd.attrs["edges"]["pt"]) == 4
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert r.info.status == "FINISHED" and r.data.tags["step"] == "binning"
    p = r.data.params
    assert (p["n_bins"], p["vect"], p["phi"], p["fit_on"], p["input_sha256"]) == ("5", "5", "abs", "background", data.sha256(tiny_raw))
    m = r.data.metrics
    assert 0 < m["vocab_used_fraction"] <= 1 and m["unknown_id_count"] == 0
    for f in ("pt", "eta", "e"):
        pops = [m[f"pop_{f}_bin{i}"] for i in range(1, 6)]
        assert abs(sum(pops) - 1) < 1e-9
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "binned")}
    assert arts == {"binned/binned.h5"}
    edges = json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/binning/edges.json"))
    assert edges["vocab_size"] == 4386
    assert r.inputs.dataset_inputs[0].dataset.digest == data.sha256(tiny_raw)[:36]


def test_binning_reused_not_recomputed(mlflow_env, tiny_raw):
    from thesis_mlflow.pipeline.upstream import find_or_run
    from thesis_mlflow.spec import BinningSpec

    rid1, p1 = find_or_run(BinningSpec(str(tiny_raw)))
    rid2, p2 = find_or_run(BinningSpec(str(tiny_raw)))
    assert rid1 == rid2 and p1 == p2
    rid3, _ = find_or_run(BinningSpec(str(tiny_raw), phi="abs"))
    assert rid3 != rid1
    # file deleted: the artifact is used instead, still no new run
    p1.unlink()
    rid4, p4 = find_or_run(BinningSpec(str(tiny_raw)))
    assert rid4 == rid1 and p4.is_file()
    assert len(mlflow.search_runs(experiment_names=["test-exp"], output_format="list")) == 2


def test_binning_bad_input_leaves_nothing(mlflow_env, tiny_splits, tmp_path):
    import h5py

    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        for split, sp in tiny_splits.items():
            f[f"X_{split}"] = sp.X[:, :90] if split == "train" else sp.X
            f[f"Y_{split}"] = sp.y
    out = tmp_path / "out.h5"
    res = CliRunner().invoke(main, ["binning", "--input", str(bad), "--output", str(out)])
    assert res.exit_code == 1 and "X_train" in res.output and "[N, 92]" in res.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    res = CliRunner().invoke(main, ["binning", "--input", str(bad), "--output", str(out), "--phi", "degrees"])
    assert res.exit_code == 2 and "signed" in res.output
    assert mlflow.search_runs(experiment_names=["test-exp"], output_format="list") == []


def test_met_tokens_and_tokens_outside_every_range_decode():
    b = Binning(n_bins=5)
    base = b.n_object_tokens
    d = b.decode(np.array([0, 3, base + 2, base + 5, base + 5 + 1, base + 10, base + 11]))
    # padding and object tokens are no MET; MET bins follow the objects, MET-phi bins follow those
    assert d["met"].tolist() == [0, 0, 2, 5, 0, 0, 0]
    assert d["met_phi"].tolist() == [0, 0, 0, 0, 1, 5, 0]  # base + 11 is past the vocabulary: nothing
    assert d["id"].tolist()[:2] == [0, 1] and d["id"].tolist()[2:] == [0] * 5
    assert b.vocab_size == base + 11


def test_met_edges_are_fitted_on_events_with_met_only(tiny_splits):
    sp = tiny_splits["train"]
    X = sp.X.copy()
    X[: len(X) // 2, 18] = 0.0  # half the events without MET: their zeros must not pull the edges down
    from thesis_mlflow.learn.data import Split

    b = Binning().fit(Split(X=X, y=sp.y))
    met = X[:, 18]
    np.testing.assert_allclose(b.edges["met"], np.quantile(met[met > 0].astype(np.float64), [0.2, 0.4, 0.6, 0.8]))


def test_saved_edges_keep_every_setting(tmp_path, tiny_splits):
    b = Binning(n_bins=7, vect=5, phi_convention="abs", fit_on="background", n_ids=9).fit(tiny_splits["train"])
    back = Binning.load(b.save(tmp_path / "e.json"))
    assert back.to_dict() == b.to_dict() and (back.n_bins, back.vect, back.phi_convention, back.fit_on, back.n_ids) == (7, 5, "abs", "background", 9)
    assert b.to_dict()["vocab_size"] == b.vocab_size
    Binning(n_ids=1)
    with pytest.raises(ValueError, match="n_ids must be >= 1"):
        Binning(n_ids=0)
