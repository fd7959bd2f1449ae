"""Compare our binned tokens with a file made elsewhere (the colleague's pre-binned file).

Its layout is not known in advance: the reader accepts other key names and one combined
split; the comparison reports distribution agreement (token histograms, decoded marginals),
event agreement when rows align, and which of our conventions reproduces it best.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.data import N_OBJ, SPLITS, DataFormatError, open_h5

X_HINT = re.compile(r"(^|_)(x|data|tokens?|inputs?|features?)(_|$)", re.I)
Y_HINT = re.compile(r"(^|_)(y|labels?|targets?|truth)(_|$)", re.I)
SPLIT_HINT = {"train": re.compile(r"train", re.I), "val": re.compile(r"val", re.I), "test": re.compile(r"test", re.I)}


@dataclass
class TokenFile:
    """Tokens and labels of a binned file, per split (or one combined split ``all``)."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    attrs: dict
    keys: dict  # split -> (x key, y key)
    path: Path

    @property
    def combined(self) -> bool:
        return list(self.X) == ["all"]

    def stacked(self, splits=None) -> tuple[np.ndarray, np.ndarray]:
        names = splits or list(self.X)
        return np.concatenate([self.X[s] for s in names]), np.concatenate([self.y[s] for s in names])


def inspect(path: str | Path) -> dict:
    """Structure of any HDF5 file: datasets (shape, dtype, range), attributes, vocabulary used."""
    path = Path(path)
    out = {"path": str(path), "datasets": {}, "attrs": {}}
    with open_h5(path, "binned HDF5 file") as f:
        out["attrs"] = {k: _py(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                d = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
                if obj.size and np.issubdtype(obj.dtype, np.number) and obj.size <= 50_000_000:
                    a = obj[()]
                    d.update(min=float(np.min(a)), max=float(np.max(a)))
                    if a.ndim == 2 and np.all(a == np.round(a)):
                        d["n_distinct_values"] = int(len(np.unique(a)))
                out["datasets"][name] = d

        f.visititems(visit)
    return out


def _py(v):
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") and np.ndim(v) == 0 else (v.tolist() if hasattr(v, "tolist") else v)


def read_tokens(path: str | Path) -> TokenFile:
    """Find token arrays ([N, 20] integer-valued) and their labels under whatever names they have."""
    path = Path(path)
    with open_h5(path, "binned HDF5 file") as f:
        arrays = {}
        f.visititems(lambda n, o: arrays.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
        xs = {n: o for n, o in arrays.items() if o.ndim == 2 and o.shape[1] == N_OBJ + 2}
        ys = {n: o for n, o in arrays.items() if o.ndim == 1}
        if not xs:
            shapes = {n: list(o.shape) for n, o in arrays.items()}
            raise DataFormatError(f"{path}: no token array of shape [N, 20] (18 objects, MET, MET-phi) found; datasets: {shapes}")
        pairs = {}
        for xn, xo in xs.items():
            cands = [yn for yn, yo in ys.items() if len(yo) == len(xo)]
            split = _split_of(xn) if len(xs) > 1 else None
            if split:
                cands = [yn for yn in cands if _split_of(yn) == split] or cands
            cands.sort(key=lambda yn: (not Y_HINT.search(Path(yn).name), yn))
            if not cands:
                raise DataFormatError(f"{path}: no label array with {len(xo)} entries for '{xn}'")
            pairs[split or "all"] = (xn, cands[0])
        if len(xs) > 1 and set(pairs) != set(SPLITS):
            raise DataFormatError(f"{path}: {len(xs)} token arrays {sorted(xs)} but no train/val/test naming to tell them apart")
        X, y = {}, {}
        for s, (xn, yn) in pairs.items():
            x = f[xn][()]
            if not np.all(np.isfinite(x)) or np.any(x != np.round(x)) or x.min() < 0:
                raise DataFormatError(f"{path}: '{xn}' is not a non-negative integer token array")
            X[s], y[s] = x.astype(np.int64), f[yn][()].astype(np.int64)
        attrs = {k: _py(v) for k, v in f.attrs.items()}
    order = [s for s in (*SPLITS, "all") if s in X]
    return TokenFile({s: X[s] for s in order}, {s: y[s] for s in order}, attrs, {s: pairs[s] for s in order}, path)


def _split_of(name: str) -> str | None:
    hits = [s for s, rx in SPLIT_HINT.items() if rx.search(Path(name).name)]
    return hits[0] if len(hits) == 1 else None


# --------------------------------------------------------------------------- agreement


def histogram_agreement(a: np.ndarray, b: np.ndarray, n: int | None = None) -> dict[str, float]:
    """Overlap sum(min(p, q)) and Jensen-Shannon divergence (bits) of two value distributions."""
    n = n or int(max(a.max(initial=0), b.max(initial=0))) + 1
    p = np.bincount(a.ravel(), minlength=n).astype(float)
    q = np.bincount(b.ravel(), minlength=n).astype(float)
    p /= max(p.sum(), 1)
    q /= max(q.sum(), 1)
    m = 0.5 * (p + q)

    def kl(x, y):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    return {"overlap": float(np.minimum(p, q).sum()), "js": 0.5 * kl(p, m) + 0.5 * kl(q, m)}


def decoded_components(tokens: np.ndarray, binning: Binning) -> dict[str, np.ndarray]:
    """Per-component values of valid positions: id and bins of objects, MET and MET-phi bins."""
    obj = tokens[:, :N_OBJ]
    d = binning.decode(obj)
    valid = obj > 0
    out = {k: d[k][valid] for k in ("id", "b_pT", "b_eta", "b_phi") + (("b_E",) if binning.vect == 5 else ())}
    out["met"] = binning.decode(tokens[:, N_OBJ])["met"]
    out["met_phi"] = binning.decode(tokens[:, N_OBJ + 1])["met_phi"]
    return out


def rows_align(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> bool:
    """Same events in the same order: same length, same labels, same object count per event."""
    if len(xa) != len(xb) or not np.array_equal(ya, yb):
        return False
    na, nb = (xa[:, :N_OBJ] > 0).sum(1), (xb[:, :N_OBJ] > 0).sum(1)
    return float((na == nb).mean()) > 0.99


def event_agreement(xa: np.ndarray, xb: np.ndarray, binning: Binning) -> dict:
    """Identical-token fraction and per-component confusion matrices of aligned rows."""
    out = {"identical_token_fraction": float((xa == xb).mean()),
           "identical_event_fraction": float(np.all(xa == xb, axis=1).mean())}
    ca, cb = decoded_components(xa, binning), decoded_components(xb, binning)
    conf = {}
    both = (xa[:, :N_OBJ] > 0) & (xb[:, :N_OBJ] > 0)
    da, db = binning.decode(xa[:, :N_OBJ]), binning.decode(xb[:, :N_OBJ])
    for k in ("id", "b_pT", "b_eta", "b_phi") + (("b_E",) if binning.vect == 5 else ()):
        size = (binning.n_ids if k == "id" else binning.n_bins) + 1
        m = np.zeros((size, size), int)
        np.add.at(m, (da[k][both], db[k][both]), 1)
        conf[k] = m[1:, 1:].tolist()
        out[f"agree_{k}"] = float((da[k][both] == db[k][both]).mean()) if both.any() else float("nan")
    for k in ("met", "met_phi"):
        out[f"agree_{k}"] = float((ca[k] == cb[k]).mean())
    out["confusion"] = conf
    return out


# --------------------------------------------------------------------------- splitting a combined file


def split_like_raw(tf: TokenFile, raw_sizes: dict[str, int], raw_labels: dict[str, np.ndarray], raw_counts: dict[str, np.ndarray],
                   seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Train/val/test of a token file: its own splits, the raw file's when rows align, else seeded 80/10/10."""
    if not tf.combined:
        return dict(tf.X), dict(tf.y), "file_splits"
    X, y = tf.X["all"], tf.y["all"]
    counts = (X[:, :N_OBJ] > 0).sum(1)
    for names in (SPLITS, ("train", "test")) if raw_sizes else ():  # the colleague's name says "train_AND_test"
        lab = np.concatenate([raw_labels[s] for s in names])
        cnt = np.concatenate([raw_counts[s] for s in names])
        if len(lab) == len(y) and np.array_equal(lab, y) and float((cnt == counts).mean()) > 0.99:
            out_x, out_y, i = {}, {}, 0
            for s in names:
                out_x[s], out_y[s] = X[i : i + raw_sizes[s]], y[i : i + raw_sizes[s]]
                i += raw_sizes[s]
            if "val" not in out_x:  # no validation rows in the file: take them from the end of train, seeded
                rng = np.random.default_rng(seed)
                idx = rng.permutation(len(out_y["train"]))
                n_val = len(idx) // 9
                out_x["val"], out_y["val"] = out_x["train"][idx[:n_val]], out_y["train"][idx[:n_val]]
                out_x["train"], out_y["train"] = out_x["train"][idx[n_val:]], out_y["train"][idx[n_val:]]
                return out_x, out_y, "aligned_with_raw_" + "_".join(names) + "_val_from_train"
            return out_x, out_y, "aligned_with_raw"
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_tr, n_va = int(0.8 * len(y)), int(0.1 * len(y))
    parts = {"train": idx[:n_tr], "val": idx[n_tr : n_tr + n_va], "test": idx[n_tr + n_va :]}
    return {s: X[i] for s, i in parts.items()}, {s: y[i] for s, i in parts.items()}, f"seeded_80_10_10_seed{seed}"
