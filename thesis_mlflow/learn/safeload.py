"""Loading artifacts that other people could have written, without running their code.

Unrestricted ``torch.load`` (weights_only off) unpickles arbitrary objects: anyone able to write a run's
artifacts (a checkpoint, a VQ-VAE payload) would run code in every job that loads them. Every
artifact is read with ``weights_only=True``: tensors, numbers, strings and containers only.
Checkpoints written before RNG states were stored as tensors hold numpy arrays; numpy's array
reconstruction (data, never code) is allowed for those.
"""

from __future__ import annotations

from pathlib import Path


def _numpy_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    kinds = [np.ndarray, np.dtype, _reconstruct]
    kinds += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "int32", "bool")]
    return kinds


def load(path: str | Path, map_location=None):
    """``torch.load`` of a checkpoint or payload, tensors and plain data only (a pickle that
    would run code is refused with ``pickle.UnpicklingError``)."""
    import torch

    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)
