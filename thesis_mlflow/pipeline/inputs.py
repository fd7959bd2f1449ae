"""Model inputs of a cell, per tokenizer, built from files (and the upstream runs they need).

``build_inputs(spec)`` is the one place that knows where each tokenizer's inputs come from:
the raw file (direct), a binning run's file (binned), the colleague's pre-binned file
(binned_ambre) or a VQ-VAE run's codes (vqvae). It returns in-memory arrays per split and the
params that say where they came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thesis_mlflow.errors import BadInput
from thesis_mlflow.learn import data, features
from thesis_mlflow.learn import prebinned as compare
from thesis_mlflow.learn.binning import read_binned
from thesis_mlflow.paths import resolve
from thesis_mlflow.pipeline import upstream
from thesis_mlflow.spec import CellSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputInfo:
    """Where a cell's inputs came from (logged as the train run's params) and what the model
    must be built for. Fields a tokenizer does not have stay None and are not logged."""

    data: str  # the file read: the raw file, or the colleague's binned file (binned_ambre)
    binned_file: str | None = None  # binned, binned_ambre
    binning_run_id: str | None = None  # binned
    ambre_split: str | None = None  # binned_ambre: how its rows were split into train/val/test
    vqvae_run_id: str | None = None  # vqvae
    vect: int | None = None  # token inputs: the vect of the binning or codebook that made them
    vocab_size: int | None = None  # binned, binned_ambre: the token table's size
    codebook_size: int | None = None  # vqvae
    scaler: dict | None = None  # direct, vqvae: the feature scaling fitted on train (logged, checkpointed)

    def params(self) -> dict:
        """The provenance params of the train run (only those this tokenizer has)."""
        keys = ("binning_run_id", "vqvae_run_id", "binned_file", "vocab_size", "codebook_size", "ambre_split")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class Inputs:
    arrays: dict[str, dict[str, np.ndarray]]  # split -> model inputs (features.* dicts)
    labels: dict[str, np.ndarray]  # split -> original labels 1..5
    info: InputInfo


def _limit(spec: CellSpec, split: str) -> int | None:
    """First N events of a split (demo and test scales); None = all. Applied before task selection."""
    return (spec.max_train_events if split == "train" else spec.max_eval_events) or None


def _limits(spec: CellSpec) -> dict[str, int | None]:
    return {sp: _limit(spec, sp) for sp in data.SPLITS}


def infer_vect(X: dict, attrs: dict, requested: int) -> int:
    """A file without a ``vect`` attribute: up to 886 tokens is a 4-vector binning, more a 5-vector one."""
    vocab = attrs.get("vocab_size") or max(int(x.max()) for x in X.values()) + 1
    return 5 if int(vocab) > 886 else 4 if int(vocab) > 0 else requested


def read_ambre(path: Path, raw_path: str, seed: int) -> tuple[dict, dict, dict, str]:
    """The colleague's file through the compare reader; a combined split is split like the raw
    file when its rows align with it, else by a seeded 80/10/10 split (which one is logged)."""
    tf = compare.read_tokens(path)
    raw_p = resolve(raw_path)
    if tf.combined and raw_p.is_file():
        raw = data.read_raw(raw_p)
        X, y, how = compare.split_like_raw(tf, {s: len(v) for s, v in raw.items()}, {s: v.y for s, v in raw.items()},
                                           {s: v.valid.sum(1) for s, v in raw.items()}, seed=seed)
    else:
        X, y, how = compare.split_like_raw(tf, {}, {}, {}, seed=seed)
    return X, y, tf.attrs, how


def build_inputs(spec: CellSpec) -> Inputs:
    """Per-split model inputs and labels of ``spec``'s tokenizer, finding or making upstream runs."""
    if spec.tokenizer in ("binned", "binned_ambre"):
        return _token_inputs(spec)
    raw = upstream.ensure_raw(spec.data)
    splits = data.read_raw(raw, limits=_limits(spec))
    labels = {s: splits[s].y for s in data.SPLITS}
    if spec.tokenizer == "vqvae":
        return _code_inputs(spec, raw, splits, labels)
    scaler = features.Scaler.fit(splits["train"])
    arrays = {s: features.direct_inputs(splits[s], spec.vect, spec.met, scaler) for s in data.SPLITS}
    return Inputs(arrays, labels, InputInfo(data=str(raw), scaler=scaler.to_dict()))


def _token_inputs(spec: CellSpec) -> Inputs:
    if spec.tokenizer == "binned":
        raw = upstream.ensure_raw(spec.data)
        run_id, path = upstream.find_or_run(spec.binning(str(raw)))
        where = {"binning_run_id": run_id, "data": str(raw), "binned_file": str(path)}
        bd = read_binned(path, limits=_limits(spec))
        X, y, attrs = bd.X, bd.y, bd.attrs
    else:
        path = resolve(spec.binned_path)
        X, y, attrs, how = read_ambre(path, spec.data, spec.seed)
        where = {"data": str(path), "binned_file": str(path), "ambre_split": how}
        for sp in data.SPLITS:  # the colleague's file is split here, so it is cut here (read_binned cuts as it reads)
            n = _limit(spec, sp)
            X[sp], y[sp] = X[sp][:n], y[sp][:n]
    file_vect = int(attrs.get("vect") or infer_vect(X, attrs, spec.vect))
    if file_vect != spec.vect:
        raise BadInput(f"binned file {where['binned_file']} was made with vect={file_vect}, but vect={spec.vect} was requested")
    vocab = int(attrs.get("vocab_size") or max(int(x.max()) for x in X.values()) + 1)
    return Inputs({s: features.token_inputs(X[s], spec.met) for s in data.SPLITS}, y, InputInfo(**where, vect=file_vect, vocab_size=vocab))


def _code_inputs(spec: CellSpec, raw: Path, splits: dict, labels: dict) -> Inputs:
    if spec.vqvae_run_id:
        vq_run = spec.vqvae_run_id
    else:
        vq_run, _ = upstream.find_or_run(spec.vqvae(str(raw)))
    model, vq_scaler = upstream.load_vqvae(vq_run)
    if model.cfg.vect != spec.vect:
        raise BadInput(f"vqvae run {vq_run} was trained with vect={model.cfg.vect}, but vect={spec.vect} was requested")
    info = InputInfo(data=str(raw), vqvae_run_id=vq_run, codebook_size=model.cfg.codebook_size, scaler=vq_scaler.to_dict(),
                     vect=model.cfg.vect)
    arrays = {}
    for s in data.SPLITS:
        x = features.direct_inputs(splits[s], spec.vect, False, vq_scaler)
        codes = model.encode(x["cont"], x["ids"], x["valid"])
        arrays[s] = features.code_inputs(codes, splits[s], spec.met, vq_scaler)
    return Inputs(arrays, labels, info)
