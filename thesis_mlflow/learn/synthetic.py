"""Physics-motivated stand-in for the real 4-top sample (same format, docs/design.md section 3).

Each process is built from its decay chain, vectorised over events:

* tops and bosons get a pT from a gamma spectrum (harder for 4t, whose sqrt(s-hat) is
  larger), a rapidity from a Gaussian and a uniform azimuth;
* every decay is a two-body decay done in the parent's rest frame (isotropic) and boosted
  to the lab, so daughters carry the parent's kinematics (t -> bW, W -> qq'/l nu/tau nu,
  H -> bb/WW*/gg, Z -> qq/ll/nu nu);
* quarks become jets with a pT-dependent energy resolution and a mass; b-quarks are tagged
  with 70% efficiency, light jets mistagged at 1%; hadronic taus become jets plus neutrinos;
* extra radiation jets (Poisson) and rare photons are added;
* MET is the neutrino pT sum plus the jet mismeasurement plus a sqrt(sum ET) resolution;
* a generator-level HT > 400 GeV cut (scalar sum of quark and charged-lepton pT) selects
  events as in the real sample; objects must pass pT / |eta| acceptance, are sorted by pT
  and at most 18 are kept.

The numbers are plausible LHC values, not a tune: the point is that the tokenization
comparison sees the structure real events have (object multiplicities, b-tags, lepton
charges, correlated kinematics), not that any distribution matches ATLAS.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.learn.data import LABEL_NAMES, N_FEAT, N_OBJ, Split

log = logging.getLogger(__name__)

M_TOP, M_W, M_Z, M_H, M_B = 172.5, 80.4, 91.19, 125.0, 4.8
# Object kinds used while building events; mapped to DESIGN IDs at the end.
K_NONE, K_LIGHT, K_B, K_E, K_MU, K_NU, K_PHOTON, K_TAU, K_C = range(9)
# W decay: hadronic 67.6%, then e / mu / tau each ~10.8%.
W_BR = {"had": 0.676, "e": 0.108, "mu": 0.108, "tau": 0.108}


@dataclass
class GeneratorConfig:
    n_events: int = 302072  # the real file's total size
    seed: int = 0
    # Class fractions like the real file: about half 4t, the rest spread over ttX.
    fractions: dict = field(default_factory=lambda: {1: 0.50, 2: 0.125, 3: 0.125, 4: 0.125, 5: 0.125})
    split: tuple = (0.8, 0.1, 0.1)
    ht_min: float = 400.0  # generator-level HT selection of the real sample [GeV]
    jet_pt_min: float = 25.0
    jet_eta_max: float = 2.5
    lep_pt_min: float = 15.0
    lep_eta_max: float = 2.5
    photon_prob: float = 0.04  # rare photons
    b_eff: float = 0.70
    mistag: float = 0.01  # light-jet mistag rate
    c_mistag: float = 0.20  # c-jets fake b-tags far more often than light jets
    isr_mean: float = 4.5  # mean number of extra radiation jets (before acceptance)


# --------------------------------------------------------------------------- kinematics


def _make(pt, y, phi, m):
    """(E, px, py, pz) from pT, rapidity, phi and mass; all arrays of one shape."""
    mt = np.sqrt(m**2 + pt**2)
    return np.stack([mt * np.cosh(y), pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y)], axis=-1)


def _parents(rng, n, m, shape_k, scale, y_sigma=1.2):
    pt = rng.gamma(shape_k, scale, n)
    return _make(pt, rng.normal(0.0, y_sigma, n), rng.uniform(-np.pi, np.pi, n), np.full(n, m))


def _two_body(rng, p, m1, m2):
    """Isotropic two-body decay of 4-vectors ``p`` (n, 4) into masses m1, m2, boosted to the lab."""
    n = len(p)
    m1 = np.broadcast_to(np.asarray(m1, float), (n,))
    m2 = np.broadcast_to(np.asarray(m2, float), (n,))
    M = np.sqrt(np.maximum(p[:, 0] ** 2 - np.sum(p[:, 1:] ** 2, axis=1), 1e-9))
    arg = (M**2 - (m1 + m2) ** 2) * (M**2 - (m1 - m2) ** 2)
    pstar = np.sqrt(np.maximum(arg, 0.0)) / (2 * M)
    cos = rng.uniform(-1, 1, n)
    sin = np.sqrt(1 - cos**2)
    ph = rng.uniform(0, 2 * np.pi, n)
    d = np.stack([sin * np.cos(ph), sin * np.sin(ph), cos], axis=1) * pstar[:, None]
    out = []
    for mass, mom in ((m1, d), (m2, -d)):
        e = np.sqrt(mass**2 + pstar**2)
        beta = p[:, 1:] / p[:, :1]
        b2 = np.maximum(np.sum(beta**2, axis=1), 1e-12)
        gam = 1 / np.sqrt(1 - np.minimum(b2, 1 - 1e-12))
        bp = np.sum(beta * mom, axis=1)
        E = gam * (e + bp)
        vec = mom + ((gam - 1) * bp / b2 + gam * e)[:, None] * beta
        out.append(np.concatenate([E[:, None], vec], axis=1))
    return out


def _pt_eta_phi(p):
    pt = np.hypot(p[..., 1], p[..., 2])
    pabs = np.sqrt(pt**2 + p[..., 3] ** 2)
    eta = np.arctanh(np.clip(p[..., 3] / np.maximum(pabs, 1e-9), -0.999999, 0.999999))
    phi = np.arctan2(p[..., 2], p[..., 1])
    return pt, eta, phi


# --------------------------------------------------------------------------- decays


class _Event:
    """Final-state partons of n events as a growing list of slots."""

    def __init__(self, n):
        self.n = n
        self.p: list[np.ndarray] = []  # each (n, 4)
        self.kind: list[np.ndarray] = []  # each (n,) int
        self.charge: list[np.ndarray] = []  # each (n,) int (leptons only)

    def add(self, p, kind, charge=0):
        self.p.append(p)
        self.kind.append(np.broadcast_to(np.asarray(kind), (self.n,)).astype(np.int64))
        self.charge.append(np.broadcast_to(np.asarray(charge), (self.n,)).astype(np.int64))


def _decay_w(rng, ev, w, charge, mass=None):
    """W -> qq' / e nu / mu nu / tau nu. ``charge`` (n,) is +1/-1."""
    n = len(w)
    mode = rng.choice(4, n, p=list(W_BR.values()))
    a, b = _two_body(rng, w, 0.0, 0.0)
    # Half of the hadronic W decays are cs: the c-jet is mistagged far more often than light jets.
    had_kind = np.where(rng.random(n) < 0.5, K_C, K_LIGHT)
    lep_kind = np.choose(mode, [had_kind, np.full(n, K_E), np.full(n, K_MU), np.full(n, K_TAU)])
    ev.add(a, lep_kind, np.where(mode == 0, 0, charge))
    ev.add(b, np.where(mode == 0, K_LIGHT, K_NU))


def _decay_top(rng, ev, top, charge):
    b, w = _two_body(rng, top, M_B, M_W)
    ev.add(b, K_B)
    _decay_w(rng, ev, w, charge)


def _decay_h(rng, ev, h):
    n = len(h)
    mode = rng.choice(3, n, p=[0.58, 0.22, 0.20])  # bb, WW*, gg and the rest (as two jets)
    # WW*: one on-shell W and one off-shell with a mass well below M_H - M_W.
    m_star = rng.uniform(15.0, 40.0, n)
    m1 = np.where(mode == 1, M_W, np.where(mode == 0, M_B, 0.0))
    m2 = np.where(mode == 1, m_star, np.where(mode == 0, M_B, 0.0))
    x1, x2 = _two_body(rng, h, m1, m2)
    ww = mode == 1
    # Partons of the non-WW modes go straight in; for WW modes the slots are filled by the W decays.
    q_kind = np.where(mode == 0, K_B, K_LIGHT)
    ch = np.where(rng.random(n) < 0.5, 1, -1)
    for x, c in ((x1, ch), (x2, -ch)):
        sub = _Event(n)
        _decay_w(rng, sub, x, c)
        ev.add(np.where(ww[:, None], sub.p[0], x), np.where(ww, sub.kind[0], q_kind), np.where(ww, sub.charge[0], 0))
        ev.add(np.where(ww[:, None], sub.p[1], 0.0), np.where(ww, sub.kind[1], K_NONE))


def _decay_z(rng, ev, z):
    n = len(z)
    mode = rng.choice(4, n, p=[0.70, 0.05, 0.05, 0.20])  # qq, ee, mumu (tau folded in), nu nu
    a, b = _two_body(rng, z, 0.0, 0.0)
    kind = np.choose(mode, [K_LIGHT, K_E, K_MU, K_NU])
    ev.add(a, kind, np.where((mode == 1) | (mode == 2), 1, 0))
    ev.add(b, kind, np.where((mode == 1) | (mode == 2), -1, 0))


def _tt(rng, ev, n, k, scale):
    _decay_top(rng, ev, _parents(rng, n, M_TOP, k, scale), np.ones(n, int))
    _decay_top(rng, ev, _parents(rng, n, M_TOP, k, scale), -np.ones(n, int))


def _partons(rng, label, n) -> _Event:
    ev = _Event(n)
    if label == 1:  # 4t: two t tbar pairs, harder spectrum (higher threshold)
        _tt(rng, ev, n, 2.2, 60.0)
        _tt(rng, ev, n, 2.2, 60.0)
    else:
        _tt(rng, ev, n, 2.2, 60.0)
        if label == 2:
            _decay_h(rng, ev, _parents(rng, n, M_H, 2.0, 65.0))
        elif label == 3:
            _decay_w(rng, ev, _parents(rng, n, M_W, 2.0, 70.0), np.where(rng.random(n) < 0.66, 1, -1))
        elif label == 4:
            _decay_w(rng, ev, _parents(rng, n, M_W, 2.0, 55.0), np.ones(n, int))
            _decay_w(rng, ev, _parents(rng, n, M_W, 2.0, 55.0), -np.ones(n, int))
        elif label == 5:
            _decay_z(rng, ev, _parents(rng, n, M_Z, 2.0, 70.0))
    return ev


# --------------------------------------------------------------------------- detector


def _detector(rng, cfg: GeneratorConfig, ev: _Event):
    """Turn partons into reconstructed objects; return (ids, feats, met, met_phi, gen_ht)."""
    n = ev.n
    P = np.stack(ev.p, axis=1)  # (n, S, 4)
    kind = np.stack(ev.kind, axis=1)  # (n, S)
    charge = np.stack(ev.charge, axis=1)
    pt, eta, phi = _pt_eta_phi(P)
    visible_parton = np.isin(kind, (K_LIGHT, K_C, K_B, K_E, K_MU, K_TAU))
    gen_ht = np.sum(np.where(visible_parton, pt, 0.0), axis=1)

    # Hadronic taus (65%): a jet with 60% of the momentum; leptonic: a lepton with 35%.
    is_tau = kind == K_TAU
    tau_had = is_tau & (rng.random(kind.shape) < 0.65)
    tau_frac = np.where(tau_had, 0.60, 0.35)
    tau_lep_kind = np.where(rng.random(kind.shape) < 0.5, K_E, K_MU)
    kind = np.where(is_tau, np.where(tau_had, K_LIGHT, tau_lep_kind), kind)
    pt_true = np.where(is_tau, pt * tau_frac, pt)

    # Neutrinos (W, Z, and the tau's invisible share) -> true MET.
    px, py = pt * np.cos(phi), pt * np.sin(phi)
    inv = np.where(kind == K_NU, 1.0, 0.0) + np.where(is_tau, 1 - tau_frac, 0.0)
    met_x = np.sum(inv * px, axis=1)
    met_y = np.sum(inv * py, axis=1)

    # Extra radiation jets.
    n_isr = np.minimum(rng.poisson(cfg.isr_mean, n), 10)
    S_isr = 10
    isr_on = np.arange(S_isr)[None, :] < n_isr[:, None]
    isr_pt = np.where(isr_on, 15.0 + rng.exponential(30.0, (n, S_isr)), 0.0)
    isr_eta = rng.normal(0, 1.8, (n, S_isr))
    isr_phi = rng.uniform(-np.pi, np.pi, (n, S_isr))
    # Rare photons.
    ph_on = rng.random(n) < cfg.photon_prob
    ph_pt = np.where(ph_on, 20.0 + rng.exponential(40.0, n), 0.0)

    # A few radiation jets are heavy flavour (g -> bb, cc), as in tt+jets.
    isr_kind = np.choose(rng.choice(3, (n, S_isr), p=[0.90, 0.05, 0.05]), [K_LIGHT, K_B, K_C])
    kind = np.concatenate([kind, np.where(isr_on, isr_kind, K_NONE), np.where(ph_on, K_PHOTON, K_NONE)[:, None]], axis=1)
    charge = np.concatenate([charge, np.zeros((n, S_isr + 1), int)], axis=1)
    pt_true = np.concatenate([pt_true, isr_pt, ph_pt[:, None]], axis=1)
    eta = np.concatenate([eta, isr_eta, rng.normal(0, 1.2, (n, 1))], axis=1)
    phi = np.concatenate([phi, isr_phi, rng.uniform(-np.pi, np.pi, (n, 1))], axis=1)
    S = kind.shape[1]

    is_jet = (kind == K_LIGHT) | (kind == K_B) | (kind == K_C)
    is_lep = (kind == K_E) | (kind == K_MU)
    # Jet energy resolution: stochastic 80%/sqrt(pT) + 5% constant term.
    sig = np.where(is_jet, np.sqrt((0.8 / np.sqrt(np.maximum(pt_true, 1.0))) ** 2 + 0.05**2), 0.02)
    pt_reco = pt_true * np.clip(1 + sig * rng.standard_normal((n, S)), 0.3, 3.0)
    # The mismeasurement of jets shows up as fake MET.
    dpt = np.where(is_jet, pt_true - pt_reco, 0.0)
    met_x += np.sum(dpt * np.cos(phi), axis=1)
    met_y += np.sum(dpt * np.sin(phi), axis=1)
    sum_et = np.sum(np.where(kind != K_NU, pt_reco, 0.0), axis=1)
    res = 0.5 * np.sqrt(sum_et)
    met_x += res * rng.standard_normal(n)
    met_y += res * rng.standard_normal(n)

    # Object masses: jets carry ~5-20% of their pT as mass, leptons and photons are massless here.
    mass = np.where(is_jet, pt_reco * rng.uniform(0.05, 0.20, (n, S)), np.where(kind == K_MU, 0.1057, 0.0))
    mass = np.where(kind == K_B, np.maximum(mass, M_B), mass)

    # Reconstructed IDs: b-tagging with efficiency and mistag.
    u = rng.random((n, S))
    rid = np.zeros((n, S), np.int64)
    rid[is_jet] = 1
    rid[(kind == K_B) & (u < cfg.b_eff)] = 2
    rid[(kind == K_C) & (u < cfg.c_mistag)] = 2
    rid[(kind == K_LIGHT) & (u < cfg.mistag)] = 2
    rid[(kind == K_E) & (charge > 0)] = 3
    rid[(kind == K_E) & (charge <= 0)] = 4
    rid[(kind == K_MU) & (charge > 0)] = 5
    rid[(kind == K_MU) & (charge <= 0)] = 6
    rid[kind == K_PHOTON] = 7

    acc = np.zeros((n, S), bool)
    acc |= is_jet & (pt_reco > cfg.jet_pt_min) & (np.abs(eta) < cfg.jet_eta_max)
    acc |= is_lep & (pt_reco > cfg.lep_pt_min) & (np.abs(eta) < cfg.lep_eta_max)
    acc |= (kind == K_PHOTON) & (pt_reco > 25.0) & (np.abs(eta) < 2.37)
    rid = np.where(acc, rid, 0)

    # Sort by pT (accepted first), keep at most 18.
    key = np.where(acc, pt_reco, -1.0)
    order = np.argsort(-key, axis=1, kind="stable")[:, :N_OBJ]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    rid, pt_o, eta_o, phi_o, m_o = map(take, (rid, pt_reco, eta, phi, mass))
    keep = rid > 0
    E = np.sqrt((pt_o * np.cosh(eta_o)) ** 2 + m_o**2)
    phi_o = _wrap(phi_o)
    feats = np.stack([E, pt_o, eta_o, phi_o], axis=-1) * keep[..., None]  # (n, 18, 4)
    if order.shape[1] < N_OBJ:  # fewer slots than 18: pad
        padw = N_OBJ - order.shape[1]
        rid = np.pad(rid, ((0, 0), (0, padw)))
        feats = np.pad(feats, ((0, 0), (0, padw), (0, 0)))
    met = np.hypot(met_x, met_y)
    return rid, feats, met, _wrap(np.arctan2(met_y, met_x)), gen_ht


def _wrap(phi):
    """Map to [-pi, pi): arctan2 can return +pi exactly."""
    return np.where(phi >= np.pi, phi - 2 * np.pi, phi)


def _generate_class(rng, cfg, label, n_needed):
    """Generate until ``n_needed`` events pass the HT cut and have at least one object."""
    X_parts, got = [], 0
    while got < n_needed:
        n_try = int((n_needed - got) * 1.6) + 64
        ev = _partons(rng, label, n_try)
        rid, feats, met, met_phi, ht = _detector(rng, cfg, ev)
        sel = (ht > cfg.ht_min) & (rid[:, 0] > 0)
        X = np.concatenate([rid[sel].astype(np.float64), met[sel, None], met_phi[sel, None], feats[sel].reshape(-1, N_OBJ * N_FEAT)], axis=1)
        X_parts.append(X[: n_needed - got])
        got += len(X_parts[-1])
    return np.concatenate(X_parts)


def generate(cfg: GeneratorConfig) -> dict[str, Split]:
    """Generate the three splits. Same config (seed included) -> identical arrays."""
    if cfg.n_events < 10:
        raise BadSetting(f"n_events must be at least 10, got {cfg.n_events}")
    if abs(sum(cfg.fractions.values()) - 1) > 1e-6:
        raise BadSetting(f"class fractions must sum to 1, got {cfg.fractions}")
    rng = np.random.default_rng(cfg.seed)
    labels = sorted(cfg.fractions)
    counts = [int(round(cfg.fractions[k] * cfg.n_events)) for k in labels]
    counts[0] += cfg.n_events - sum(counts)
    Xs, ys = [], []
    for lab, c in zip(labels, counts, strict=True):
        Xs.append(_generate_class(rng, cfg, lab, c))
        ys.append(np.full(c, lab, np.int64))
        log.info("generated %d %s events", c, LABEL_NAMES[lab])
    X = np.concatenate(Xs).astype(np.float32)
    y = np.concatenate(ys)
    perm = rng.permutation(len(y))
    X, y = X[perm], y[perm]
    # float32 rounding can push a value that was just below pi to pi: keep [-pi, pi).
    phi_cols = np.arange(N_OBJ) * N_FEAT + N_OBJ + 2 + 3  # phi of object i
    phis = X[:, phi_cols]
    phis[phis >= np.float32(np.pi)] -= np.float32(2 * np.pi)
    X[:, phi_cols] = phis
    X[:, 19] = np.where(X[:, 19] >= np.float32(np.pi), X[:, 19] - np.float32(2 * np.pi), X[:, 19])
    n_tr = int(round(cfg.split[0] * len(y)))
    n_va = int(round(cfg.split[1] * len(y)))
    cuts = {"train": slice(0, n_tr), "val": slice(n_tr, n_tr + n_va), "test": slice(n_tr + n_va, None)}
    return {s: Split(X=X[c], y=y[c]) for s, c in cuts.items()}


# --------------------------------------------------------------------------- data card


def data_card(splits: dict[str, Split], cfg: GeneratorConfig | None = None) -> dict:
    """Per-class counts and mean multiplicities / HT / MET, over all splits."""
    X = np.concatenate([s.X for s in splits.values()])
    y = np.concatenate([s.y for s in splits.values()])
    ids = X[:, :N_OBJ]
    pt = X[:, N_OBJ + 2 :].reshape(-1, N_OBJ, N_FEAT)[:, :, 1]
    per_class = {}
    for lab, name in LABEL_NAMES.items():
        m = y == lab
        if not m.any():
            per_class[name] = {"label": lab, "count": 0}
            continue
        i = ids[m]
        per_class[name] = {
            "label": lab,
            "count": int(m.sum()),
            "fraction": round(float(m.mean()), 4),
            "mean_n_objects": round(float((i > 0).sum(1).mean()), 3),
            "mean_n_jets": round(float(np.isin(i, (1, 2)).sum(1).mean()), 3),
            "mean_n_bjets": round(float((i == 2).sum(1).mean()), 3),
            "mean_n_leptons": round(float(np.isin(i, (3, 4, 5, 6)).sum(1).mean()), 3),
            "mean_n_photons": round(float((i == 7).sum(1).mean()), 4),
            "mean_HT": round(float(np.where(np.isin(i, (1, 2)), pt[m], 0).sum(1).mean()), 2),
            "mean_MET": round(float(X[m, N_OBJ].mean()), 2),
        }
    card = {
        "description": "thesis-mlflow synthetic 4-top sample (physics-motivated stand-in for 4tops_splitted.h5)",
        "units": "GeV for E, pT, MET (assumed as in the real file)",
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "per_class": per_class,
    }
    if cfg is not None:
        card["config"] = card_config(cfg)
    return card


def card_config(cfg: GeneratorConfig) -> dict:
    """The generator's settings as its data card records them (JSON: string keys, lists)."""
    return json.loads(json.dumps({k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in asdict(cfg).items()}))
