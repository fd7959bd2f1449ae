"""The built-in dataset: format, determinism, physics sanity."""

from __future__ import annotations

import numpy as np

from thesis_mlflow.learn import data, synthetic


def test_format_and_split(tiny_splits):
    sizes = {k: len(v) for k, v in tiny_splits.items()}
    assert sizes == {"train": 2400, "val": 300, "test": 300}
    for sp in tiny_splits.values():
        assert sp.X.shape[1] == 92 and sp.X.dtype == np.float32
        data.validate_split(sp.X, sp.y, "X", "y")
    y = np.concatenate([s.y for s in tiny_splits.values()])
    assert abs((y == 1).mean() - 0.5) < 0.01
    assert set(np.unique(y)) == {1, 2, 3, 4, 5}


def test_same_seed_same_bytes(tmp_path):
    cfg = synthetic.GeneratorConfig(n_events=500, seed=7)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    data.write_raw(a, synthetic.generate(cfg))
    data.write_raw(b, synthetic.generate(cfg))
    assert data.sha256(a) == data.sha256(b)
    c = tmp_path / "c.h5"
    data.write_raw(c, synthetic.generate(synthetic.GeneratorConfig(n_events=500, seed=8)))
    assert data.sha256(a) != data.sha256(c)


def test_physics_sanity(tiny_splits):
    sp = data.Split(X=np.concatenate([s.X for s in tiny_splits.values()]), y=np.concatenate([s.y for s in tiny_splits.values()]))
    v = sp.valid
    E, pt, eta, phi = (sp.feature(k) for k in ("E", "pT", "eta", "phi"))
    assert np.all(E[v] >= pt[v] * (1 - 1e-5))
    # E consistent with pT, eta and a non-negative mass
    m2 = E[v] ** 2 - (pt[v] * np.cosh(eta[v])) ** 2
    assert np.all(m2 >= -1e-3 * E[v] ** 2)
    assert np.all(np.abs(eta[v]) < 2.5)
    assert np.all((phi[v] >= -np.pi) & (phi[v] < np.pi))
    assert np.all((sp.met_phi >= -np.pi) & (sp.met_phi < np.pi)) and np.all(sp.met >= 0)
    assert np.all(pt[v] >= 15.0)
    # ordered by pT, padding at the end
    assert np.all(np.diff(np.where(v, pt, -1), axis=1) <= 0)
    assert np.all(np.diff(v.astype(int), axis=1) <= 0)
    # multiplicities: 4t busier than ttW, both in jets and b-tags
    jets = np.isin(sp.ids, (1, 2)).sum(1)
    bjets = (sp.ids == 2).sum(1)
    assert jets[sp.y == 1].mean() > jets[sp.y == 3].mean() + 1
    assert bjets[sp.y == 1].mean() > bjets[sp.y == 3].mean() + 0.5
    # leptons of both charges and flavours, rare photons
    for pid in (3, 4, 5, 6):
        assert (sp.ids == pid).sum() > 0
    assert 0 < (sp.ids == 7).any(1).mean() < 0.1


def test_data_card(tiny_splits):
    card = synthetic.data_card(tiny_splits)
    assert sum(c["count"] for c in card["per_class"].values()) == 3000
    assert card["per_class"]["4t"]["mean_n_bjets"] > card["per_class"]["ttW"]["mean_n_bjets"]
    for c in card["per_class"].values():
        assert {"mean_n_jets", "mean_n_bjets", "mean_n_leptons", "mean_HT", "mean_MET"} <= set(c)
