"""Ambre-style binned tokens (docs/design.md section 4).

Per object, with B bins (B = 5 for the user's formula)::

    vect=4: token = B^3 (id-1) + B^2 (b_pT-1) + B (b_eta-1) + b_phi              in [1, 7 B^3]
    vect=5: token = B^4 (id-1) + B^3 (b_E-1) + B^2 (b_pT-1) + B (b_eta-1) + b_phi in [1, 7 B^4]

then MET -> n_obj + b_MET, MET-phi -> n_obj + B + b_METphi, padding 0; vocabulary n_obj + 2B + 1
(886 for B=5, vect=4; 4386 for vect=5). pT, eta, E and MET use equal-population (quantile)
edges fitted on the training split; phi and MET-phi use fixed widths:

* ``signed``: B bins of width 2 pi / B over [-pi, pi) (phi is wrapped, so +pi == -pi -> bin 1);
* ``abs``:    B bins of width pi / B over |phi| in [0, pi] (|phi| == pi -> bin B).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from thesis_mlflow.errors import BadInput, BadSetting
from thesis_mlflow.learn.data import N_OBJ, SPLITS, DataFormatError, Split, atomic_path, open_h5, split_keys
from thesis_mlflow.spec import PHI_CONVENTIONS, check_binning

_PHI_TOL = 1e-6  # a few float32 ulps at pi
QUANTILE_FEATURES = {4: ("pt", "eta", "met"), 5: ("e", "pt", "eta", "met")}
_OBJ_FEATURE = {"e": "E", "pt": "pT", "eta": "eta"}


def phi_bins(phi: np.ndarray, n_bins: int, convention: str) -> np.ndarray:
    """Fixed-width phi bins in 1..n_bins."""
    wrapped = np.mod(np.asarray(phi, np.float64) + np.pi, 2 * np.pi) - np.pi  # [-pi, pi)
    # float32(-pi) is slightly below -pi in float64 and would wrap to the last bin: within
    # float32 resolution of +pi means -pi (the input convention is [-pi, pi)).
    wrapped = np.where(wrapped > np.pi - _PHI_TOL, -np.pi, wrapped)
    if convention == "signed":
        b = np.floor((wrapped + np.pi) / (2 * np.pi / n_bins)).astype(np.int64) + 1
    elif convention == "abs":
        b = np.floor(np.abs(wrapped) / (np.pi / n_bins)).astype(np.int64) + 1
    else:
        raise BadSetting(f"phi convention must be one of {', '.join(PHI_CONVENTIONS)}; got {convention!r}")
    return np.clip(b, 1, n_bins)


def quantile_bins(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bins 1..len(edges)+1; values outside the fitted range land in the first/last bin."""
    return np.searchsorted(edges, x, side="right").astype(np.int64) + 1


@dataclass
class Binning:
    n_bins: int = 5
    n_ids: int = 7
    vect: int = 4
    phi_convention: str = "signed"
    fit_on: str = "all"
    edges: dict[str, np.ndarray] = field(default_factory=dict)  # inner edges, n_bins-1 each

    def __post_init__(self):
        check_binning(self.n_bins, self.vect, self.phi_convention, self.fit_on)
        if self.n_ids < 1:
            raise BadSetting(f"n_ids must be >= 1, got {self.n_ids!r}")
        self.edges = {k: np.asarray(v, np.float64) for k, v in self.edges.items()}

    # ------------------------------------------------------------------ sizes
    @property
    def n_components(self) -> int:
        return 3 if self.vect == 4 else 4  # binned kinematic components per object

    @property
    def n_object_tokens(self) -> int:
        return self.n_ids * self.n_bins**self.n_components

    @property
    def vocab_size(self) -> int:
        return self.n_object_tokens + 2 * self.n_bins + 1

    @property
    def features(self) -> tuple[str, ...]:
        return QUANTILE_FEATURES[self.vect]

    # ------------------------------------------------------------------ fit / transform
    def fit(self, split: Split) -> Binning:
        """Quantile edges on the valid objects (and events with MET > 0) of ``split``."""
        keep = np.ones(len(split), bool) if self.fit_on == "all" else split.y != 1
        if not keep.any():
            raise BadInput(f"no events to fit the binning on (fit_on={self.fit_on})")
        valid = split.valid[keep]
        if not valid.any():
            raise BadInput("no valid (non-padding) objects to fit the binning on")
        q = np.arange(1, self.n_bins) / self.n_bins
        edges = {}
        for f in self.features:
            if f == "met":
                met = split.met[keep]
                vals = met[met > 0]
            else:
                vals = split.feature(_OBJ_FEATURE[f])[keep][valid]
            if len(vals) == 0:
                raise BadInput(f"no values to fit the {f} edges on")
            edges[f] = np.quantile(vals.astype(np.float64), q)
        self.edges = edges
        return self

    def _check_fitted(self):
        missing = [f for f in self.features if f not in self.edges]
        if missing:
            raise BadInput(f"binning not fitted: no edges for {missing}")
        for f in self.features:
            if len(self.edges[f]) != self.n_bins - 1:
                raise BadInput(f"edges for {f} have {len(self.edges[f])} values, expected n_bins-1 = {self.n_bins - 1}")

    def transform(self, split: Split) -> np.ndarray:
        """Integer tokens (N, 20): 18 objects, MET, MET-phi. Padding stays 0."""
        self._check_fitted()
        B = self.n_bins
        ids = split.ids
        valid = split.valid
        if np.any(ids[valid] > self.n_ids):
            raise BadInput(f"object IDs above n_ids={self.n_ids} cannot be encoded (found {int(ids.max())})")
        comps = []
        if self.vect == 5:
            comps.append(quantile_bins(split.feature("E"), self.edges["e"]))
        comps.append(quantile_bins(split.feature("pT"), self.edges["pt"]))
        comps.append(quantile_bins(split.feature("eta"), self.edges["eta"]))
        comps.append(phi_bins(split.feature("phi"), B, self.phi_convention))
        tok = np.zeros(ids.shape, np.int64)  # (N, 18)
        for c in comps:  # mixed radix, most significant first
            tok = tok * B + (c - 1)
        tok = (ids - 1) * B ** len(comps) + tok + 1
        tok = np.where(valid, tok, 0)
        met_tok = self.n_object_tokens + quantile_bins(split.met, self.edges["met"])
        metphi_tok = self.n_object_tokens + B + phi_bins(split.met_phi, B, self.phi_convention)
        out = np.concatenate([tok, met_tok[:, None], metphi_tok[:, None]], axis=1)
        return out.astype(np.int64)

    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Invert the object formula: ``id, b_E (vect=5), b_pT, b_eta, b_phi`` (0 for padding).

        MET and MET-phi tokens decode to ``met``/``met_phi`` bins; object fields are 0 there.
        """
        t = np.asarray(tokens, np.int64)
        B, nc = self.n_bins, self.n_components
        is_obj = (t >= 1) & (t <= self.n_object_tokens)
        r = np.where(is_obj, t - 1, 0)
        names = ["b_phi", "b_eta", "b_pT"] + (["b_E"] if self.vect == 5 else [])
        out = {}
        for n in names:
            out[n] = np.where(is_obj, r % B + 1, 0)
            r = r // B
        out["id"] = np.where(is_obj, r + 1, 0)
        m = t - self.n_object_tokens
        out["met"] = np.where((m >= 1) & (m <= B), m, 0)
        out["met_phi"] = np.where((m > B) & (m <= 2 * B), m - B, 0)
        assert nc == len(names)
        return out

    def encode_components(self, id_, b_pT, b_eta, b_phi, b_E=None) -> np.ndarray:
        """The formula itself on given bins (for tests and the compare step)."""
        B = self.n_bins
        comps = ([b_E] if self.vect == 5 else []) + [b_pT, b_eta, b_phi]
        tok = np.zeros(np.shape(id_), np.int64)
        for c in comps:
            tok = tok * B + (np.asarray(c) - 1)
        return (np.asarray(id_) - 1) * B ** len(comps) + tok + 1

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "n_bins": self.n_bins, "n_ids": self.n_ids, "vect": self.vect, "phi_convention": self.phi_convention,
            "fit_on": self.fit_on, "vocab_size": self.vocab_size, "edges": {k: v.tolist() for k, v in self.edges.items()},
        }

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict) -> Binning:
        return cls(n_bins=int(d["n_bins"]), n_ids=int(d["n_ids"]), vect=int(d["vect"]), phi_convention=d["phi_convention"],
                   fit_on=d["fit_on"], edges={k: np.asarray(v) for k, v in d["edges"].items()})

    @classmethod
    def load(cls, path: str | Path) -> Binning:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------- binned file


@dataclass
class BinnedData:
    X: dict[str, np.ndarray]  # split -> (N, 20) int tokens
    y: dict[str, np.ndarray]  # split -> (N,) int labels 1..5
    attrs: dict


def write_binned(path: str | Path, binning: Binning, splits: dict[str, Split], source_sha256: str) -> BinnedData:
    """Tokenise all splits and write the binned file of DESIGN section 4, atomically."""
    dtype = np.int16 if binning.vocab_size < np.iinfo(np.int16).max else np.int32
    ykeys = {"train": "Y_train", "val": "y_val", "test": "y_test"}
    X = {s: binning.transform(splits[s]) for s in SPLITS}
    attrs = {"n_bins": binning.n_bins, "n_ids": binning.n_ids, "vect": binning.vect, "vocab_size": binning.vocab_size,
             "phi_convention": binning.phi_convention, "fit_on": binning.fit_on, "source_sha256": source_sha256}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            for s in SPLITS:
                f.create_dataset(f"X_{s}", data=X[s].astype(dtype), compression="gzip", compression_opts=4, track_times=False)
                f.create_dataset(ykeys[s], data=splits[s].y.astype(np.int64), track_times=False)
            for k, v in attrs.items():
                f.attrs[k] = v
            g = f.create_group("edges", track_order=True)
            for k, v in binning.edges.items():
                g.create_dataset(k, data=np.asarray(v, np.float64), track_times=False)
    return BinnedData(X=X, y={s: splits[s].y for s in SPLITS}, attrs=attrs)


def read_binned(path: str | Path, limits: dict[str, int | None] | None = None) -> BinnedData:
    """Read a binned file of DESIGN section 4, refusing anything else with a clear message;
    ``limits``: only the first N events of a split (None: all)."""
    path = Path(path)
    with open_h5(path, "binned HDF5 file") as f:
        keys = split_keys(f, path)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        X, y = {}, {}
        for s, (xk, yk) in keys.items():
            n = (limits or {}).get(s)
            x = f[xk][:n]
            if x.ndim != 2 or x.shape[1] != N_OBJ + 2:
                raise DataFormatError(f"{path}: '{xk}' has shape {x.shape}, expected [N, 20] tokens (18 objects, MET, MET-phi)")
            if not np.issubdtype(x.dtype, np.integer):
                if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                    raise DataFormatError(f"{path}: '{xk}' holds non-integer values; expected integer tokens")
            x = x.astype(np.int64)
            vocab = int(attrs.get("vocab_size", x.max() + 1))
            if x.min(initial=0) < 0 or x.max(initial=0) >= vocab:
                raise DataFormatError(f"{path}: '{xk}' tokens span [{x.min()}, {x.max()}], expected [0, {vocab - 1}] (vocab_size {vocab})")
            lab = f[yk][:n]
            if lab.shape != (len(x),) or np.any((lab < 1) | (lab > 5)):
                raise DataFormatError(f"{path}: '{yk}' must hold {len(x)} labels in 1-5")
            X[s], y[s] = x, lab.astype(np.int64)
        if "edges" in f:
            attrs["edges"] = {k: f["edges"][k][()].tolist() for k in f["edges"]}
    return BinnedData(X=X, y=y, attrs=attrs)
