"""Raw 4-top HDF5 format (docs/design.md section 3): read, validate, write, slice.

Layout of one row of ``X_*`` (92 floats)::

    [0:18]   object IDs (0 = padding, 1 jet, 2 b-jet, 3 e+, 4 e-, 5 mu+, 6 mu-, 7 photon)
    [18]     MET  [GeV]
    [19]     MET-phi
    [20:92]  18 x (E, pT, eta, phi), object-major: object i is columns 20+4i .. 20+4i+3

The mask convention of the whole project is fixed here, once: ``valid`` is a boolean
array that is True for a real object and False for padding. Everything downstream
(binning, model) receives ``valid`` and never re-derives padding from IDs itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from thesis_mlflow.errors import BadInput, BadSetting
from thesis_mlflow.spec import TASKS  # noqa: F401  (re-exported: data.TASKS)

log = logging.getLogger(__name__)

N_OBJ = 18
N_FEAT = 4  # E, pT, eta, phi
WIDTH = N_OBJ + 2 + N_OBJ * N_FEAT  # 92
N_IDS = 7
SPLITS = ("train", "val", "test")
LABEL_NAMES = {1: "4t", 2: "ttH", 3: "ttW", 4: "ttWW", 5: "ttZ"}
# Column of each feature inside the per-object (E, pT, eta, phi) block.
FEATURE_INDEX = {"E": 0, "pT": 1, "eta": 2, "phi": 3}
VECT_FEATURES = {4: ("pT", "eta", "phi"), 5: ("E", "pT", "eta", "phi")}


class DataFormatError(BadInput):
    """An input file does not follow the format of docs/design.md section 3 (or section 4)."""


@dataclass
class Split:
    """One split of the raw file, as numpy arrays."""

    X: np.ndarray  # (N, 92) float
    y: np.ndarray  # (N,) int64 labels 1..5

    @property
    def ids(self) -> np.ndarray:
        return self.X[:, :N_OBJ].astype(np.int64)  # (N, 18)

    @property
    def valid(self) -> np.ndarray:
        """True for real objects, False for padding; the project's one mask convention."""
        return self.X[:, :N_OBJ] != 0  # (N, 18)

    @property
    def met(self) -> np.ndarray:
        return self.X[:, N_OBJ]  # (N,)

    @property
    def met_phi(self) -> np.ndarray:
        return self.X[:, N_OBJ + 1]  # (N,)

    @property
    def objects(self) -> np.ndarray:
        """All four object features (E, pT, eta, phi)."""
        return self.X[:, N_OBJ + 2 :].reshape(-1, N_OBJ, N_FEAT)  # (N, 18, 4)

    def feature(self, name: str) -> np.ndarray:
        return self.objects[:, :, FEATURE_INDEX[name]]  # (N, 18)

    def continuous(self, vect: int) -> np.ndarray:
        """Continuous features given to the model: (pT, eta, phi) for vect=4, (E, pT, eta, phi) for 5."""
        if vect not in VECT_FEATURES:
            raise BadSetting(f"vect must be 4 or 5, got {vect!r}")
        cols = [FEATURE_INDEX[f] for f in VECT_FEATURES[vect]]
        return self.objects[:, :, cols]  # (N, 18, vect-1)

    def __len__(self) -> int:
        return len(self.y)


def task_labels(y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Select events and map labels for ``task``.

    Returns ``(keep, target)``: a boolean mask over events and the integer target of the kept
    events (1 signal / 0 background for the binary tasks, 0..4 for ``multiclass``).
    """
    y = np.asarray(y)
    if task == "4t_vs_bg":
        keep = np.ones(len(y), dtype=bool)
        target = (y == 1).astype(np.int64)
    elif task == "4t_vs_ttH":
        keep = (y == 1) | (y == 2)
        target = (y[keep] == 1).astype(np.int64)
    elif task == "multiclass":
        keep = np.ones(len(y), dtype=bool)
        target = y.astype(np.int64) - 1
    else:
        raise BadSetting(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return keep, target


def n_classes(task: str) -> int:
    if task not in TASKS:
        raise BadSetting(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return 5 if task == "multiclass" else 2


# --------------------------------------------------------------------------- keys


def _find_key(f: h5py.File, prefix: str, split: str) -> str | None:
    """Accept ``Y_val`` and ``y_val`` alike (the real file mixes both)."""
    for cand in (f"{prefix}_{split}", f"{prefix.lower()}_{split}", f"{prefix.upper()}_{split}"):
        if cand in f:
            return cand
    return None


def split_keys(f: h5py.File, path: Path | str = "") -> dict[str, tuple[str, str]]:
    """Return ``{split: (x_key, y_key)}`` or raise naming the missing key."""
    out = {}
    for s in SPLITS:
        xk, yk = _find_key(f, "X", s), _find_key(f, "Y", s)
        if xk is None:
            raise DataFormatError(f"{path}: missing dataset 'X_{s}' (expected keys X_train, Y_train, X_val, y_val, X_test, y_test)")
        if yk is None:
            raise DataFormatError(f"{path}: missing dataset 'Y_{s}' or 'y_{s}' (labels of split {s})")
        out[s] = (xk, yk)
    return out


# --------------------------------------------------------------------------- validation


def validate_split(X: np.ndarray, y: np.ndarray, xk: str, yk: str, where: str = "") -> None:
    """Raise :class:`DataFormatError` naming the key and what was expected."""
    p = f"{where}: " if where else ""
    if X.ndim != 2 or X.shape[1] != WIDTH:
        raise DataFormatError(f"{p}'{xk}' has shape {X.shape}, expected [N, {WIDTH}] (18 IDs, MET, MET-phi, 18 x (E, pT, eta, phi))")
    if y.ndim != 1 or len(y) != len(X):
        raise DataFormatError(f"{p}'{yk}' has shape {y.shape}, expected [{len(X)}] (one label per row of '{xk}')")
    if not np.issubdtype(X.dtype, np.number):
        raise DataFormatError(f"{p}'{xk}' has dtype {X.dtype}, expected a float array")
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataFormatError(f"{p}'{xk}' contains NaN or inf ({int(bad.sum())} values, first at row {r}, column {c}); expected finite numbers")
    if not np.all(np.isfinite(y)):
        raise DataFormatError(f"{p}'{yk}' contains NaN or inf; expected integer labels 1-5")
    ids = X[:, :N_OBJ]
    if np.any(ids != np.round(ids)) or ids.min(initial=0) < 0 or ids.max(initial=0) > N_IDS:
        bad_vals = np.unique(ids[(ids != np.round(ids)) | (ids < 0) | (ids > N_IDS)])[:5]
        raise DataFormatError(f"{p}'{xk}' columns 0-17 hold object IDs {bad_vals.tolist()}; expected integers 0-7 (0 = padding)")
    if np.any(y != np.round(y)) or (len(y) and (y.min() < 1 or y.max() > 5)):
        bad_vals = np.unique(y[(y < 1) | (y > 5) | (y != np.round(y))])[:5]
        raise DataFormatError(f"{p}'{yk}' holds labels {bad_vals.tolist()}; expected integers 1-5 (1 4t, 2 ttH, 3 ttW, 4 ttWW, 5 ttZ)")
    objs = X[:, N_OBJ + 2 :].reshape(-1, N_OBJ, N_FEAT)
    pad = ids == 0
    ghost = pad & np.any(objs != 0, axis=2)
    if ghost.any():
        r, o = np.argwhere(ghost)[0]
        raise DataFormatError(f"{p}'{xk}' row {r} object {o} has ID 0 (padding) but non-zero features; expected padding to be all zeros")
    empty = ~pad & np.all(objs == 0, axis=2)
    if empty.any():
        r, o = np.argwhere(empty)[0]
        raise DataFormatError(f"{p}'{xk}' row {r} object {o} has ID {int(ids[r, o])} but all features zero; expected a real object to have features")


# --------------------------------------------------------------------------- reading


def open_h5(path: str | Path, what: str = "HDF5 file") -> h5py.File:
    """Open for reading, or raise :class:`DataFormatError` saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (expected a {what})")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({e})") from e


def read_raw(path: str | Path, splits: tuple[str, ...] = SPLITS, validate: bool = True,
             limits: dict[str, int | None] | None = None) -> dict[str, Split]:
    """Read (and by default validate) the requested splits of a raw 4-top file; ``limits``: only
    the first N events of a split (None: all), read from the file as such, not read and cut."""
    path = Path(path)
    with open_h5(path, "raw 4-top HDF5 file") as f:
        keys = split_keys(f, path)
        out = {}
        for s in splits:
            xk, yk = keys[s]
            n = (limits or {}).get(s)
            X = f[xk][:n]
            y = f[yk][:n]
            if validate:
                validate_split(X, y, xk, yk, str(path))
            out[s] = Split(X=np.asarray(X, dtype=np.float32), y=np.asarray(y).astype(np.int64))
    return out


def split_sizes(path: str | Path) -> dict[str, int]:
    """Events per split, from the file's shapes (nothing read)."""
    with open_h5(path, "raw 4-top HDF5 file") as f:
        keys = split_keys(f, path)
        return {s: int(f[keys[s][0]].shape[0]) for s in SPLITS}


def validate_file(path: str | Path) -> dict[str, int]:
    """Validate a whole raw file; return split sizes."""
    return {s: len(v) for s, v in read_raw(path).items()}


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename onto ``path`` only if the block succeeds.

    Readers never see a half-written file and a failure leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file private (0600); a data file on a shared disk must be readable by
    # the group like any other file the user writes: apply the umask as open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_raw(path: str | Path, splits: dict[str, Split], attrs: dict | None = None) -> Path:
    """Write the six datasets with the real file's key casing, atomically."""
    for s in SPLITS:
        if s not in splits:
            raise DataFormatError(f"cannot write {path}: split '{s}' missing")
        validate_split(splits[s].X, splits[s].y, f"X_{s}", f"y_{s}")
    ykeys = {"train": "Y_train", "val": "y_val", "test": "y_test"}
    with atomic_path(path) as tmp:
        # track_times=False keeps the bytes identical for identical content (reproducible files).
        with h5py.File(tmp, "w", track_order=True) as f:
            for s in SPLITS:
                f.create_dataset(f"X_{s}", data=splits[s].X.astype(np.float32), track_times=False)
                f.create_dataset(ykeys[s], data=splits[s].y.astype(np.int64), track_times=False)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    return Path(path)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()
