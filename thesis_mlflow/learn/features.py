"""Model inputs for each tokenizer, built once per split as in-memory tensors.

Batches are index slices of these tensors (no per-sample Dataset): the whole split fits in
memory (302k events x 20 tokens) and slicing is what keeps the loop fast on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from thesis_mlflow.learn.data import N_OBJ, Split, task_labels


@dataclass
class Scaler:
    """Scaling of the direct tokenizer's inputs, fitted on the training split's valid objects.

    pT, E, MET are log-transformed first (they span two orders of magnitude), then
    standardised; eta is standardised; phi enters as phi/pi; MET-phi as (cos, sin).
    """

    mean: dict = field(default_factory=dict)
    std: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, split: Split) -> Scaler:
        v = split.valid
        vals = {"log_pt": np.log1p(split.feature("pT")[v]), "log_e": np.log1p(split.feature("E")[v]),
                "eta": split.feature("eta")[v], "log_met": np.log1p(split.met)}
        return cls(mean={k: float(x.mean()) for k, x in vals.items()}, std={k: float(x.std() + 1e-6) for k, x in vals.items()})

    def z(self, key: str, x: np.ndarray) -> np.ndarray:
        return (x - self.mean[key]) / self.std[key]

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(mean=dict(d["mean"]), std=dict(d["std"]))


def met_features(split: Split, scaler: Scaler) -> np.ndarray:
    return np.stack([scaler.z("log_met", np.log1p(split.met)), np.cos(split.met_phi), np.sin(split.met_phi)], axis=1).astype(np.float32)


def direct_inputs(split: Split, vect: int, met: bool, scaler: Scaler) -> dict[str, np.ndarray]:
    """cont (N, 18, vect-1), ids (N, 18), valid (N, 18) and, with met, met (N, 3)."""
    v = split.valid
    cols = []
    if vect == 5:
        cols.append(scaler.z("log_e", np.log1p(split.feature("E"))))
    cols += [scaler.z("log_pt", np.log1p(split.feature("pT"))), scaler.z("eta", split.feature("eta")), split.feature("phi") / np.pi]
    cont = np.stack(cols, axis=-1) * v[..., None]  # padding stays exactly 0
    out = {"cont": cont.astype(np.float32), "ids": split.ids, "valid": v}
    if met:
        out["met"] = met_features(split, scaler)
    return out


def token_inputs(tokens: np.ndarray, met: bool) -> dict[str, np.ndarray]:
    """Binned tokens (N, 20): all 20 with MET, the 18 object tokens without."""
    t = tokens if met else tokens[:, :N_OBJ]
    return {"tokens": t.astype(np.int64), "valid": t > 0}


def code_inputs(codes: np.ndarray, split: Split, met: bool, scaler: Scaler) -> dict[str, np.ndarray]:
    """VQ-VAE codes (N, 18) with -1 for padding -> tokens code+1 (0 = padding)."""
    out = {"tokens": (codes + 1).astype(np.int64), "valid": codes >= 0}
    if met:
        out["met"] = met_features(split, scaler)
    return out


@dataclass
class Tensors:
    """One split's inputs and targets as torch tensors; ``batch(idx)`` slices them."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor  # (N,) int64 targets of the task
    labels: np.ndarray  # (N,) original labels 1..5, for per-process views

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor | slice, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        b = {k: v[idx] for k, v in self.inputs.items()}
        if device is not None and device.type != "cpu":
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        return b

    def to(self, device: torch.device) -> Tensors:
        return Tensors({k: v.to(device) for k, v in self.inputs.items()}, self.y.to(device), self.labels)


def make_tensors(inputs: dict[str, np.ndarray], labels: np.ndarray, task: str, max_events: int | None = None) -> Tensors:
    keep, target = task_labels(labels, task)
    idx = np.flatnonzero(keep)
    if max_events:
        idx = idx[:max_events]
        target = target[: len(idx)]
    t = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in inputs.items()}
    return Tensors(t, torch.from_numpy(np.asarray(target, np.int64)), np.asarray(labels)[idx])


def describe_inputs(inputs: dict[str, np.ndarray]) -> dict:
    """What the data fed to the model actually contains (for the logged params)."""
    if "cont" in inputs:
        return {"met": "met" in inputs, "vect": inputs["cont"].shape[-1] + 1}
    if "met" in inputs:  # vqvae codes + MET token
        return {"met": True}
    return {"met": inputs["tokens"].shape[1] == N_OBJ + 2}
