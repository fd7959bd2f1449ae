"""What a cell is: one frozen, validated description of a train run (``CellSpec``).

Built once, from the ``train`` command's options (CLI or MLproject) or from a grid YAML cell,
and used by ``train``, the grid driver (its commands and DAG) and the report's expected
cells. Everything a run logs as its settings is derived from it, and so is its random stream
(``RunStream``, the last section: every random draw of a run comes from there). This module
imports nothing heavy (no numpy, torch or MLflow): the CLI validates against it before loading
anything; a stream imports numpy (and torch for its generators) on its first draw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

from thesis_mlflow.errors import BadSetting

if TYPE_CHECKING:
    import numpy as np

TOKENIZERS = ("direct", "binned", "binned_ambre", "vqvae")
POOLINGS = ("cls", "mean", "max")
TASKS = ("4t_vs_bg", "4t_vs_ttH", "multiclass")
STEP_MODES = ("auto", "eager", "graph", "compiled")
DEVICES = ("auto", "cpu", "cuda")
PHI_CONVENTIONS = ("signed", "abs")
FIT_ON = ("all", "background")
DEFAULT_DATA = "data/4tops_synthetic.h5"
CHOICES = {"tokenizer": TOKENIZERS, "pooling": POOLINGS, "task": TASKS, "step_mode": STEP_MODES, "device": DEVICES,
           "phi": PHI_CONVENTIONS, "fit_on": FIT_ON}  # the settings with a fixed set of values
VECTS = (4, 5)  # 4: (pT, eta, phi) + ID; 5: (E, pT, eta, phi) + ID
METS = (True, False)
FACTORS = ("tokenizer", "pooling", "met", "vect")  # the study's factors; a cell is one level of each, per seed
LEVELS = {"tokenizer": TOKENIZERS, "pooling": POOLINGS, "met": METS, "vect": VECTS}  # each factor's levels, in display order
CODEBOOK_SIZE = 512  # VQ-VAE codes (index 0 reserved for padding): the user's choice, >= 2x the ~200 distinct binned tokens
VQVAE_EPOCHS = 10  # VQ-VAE pre-training epochs: codebook usage and perplexity settle by then on the full file


MARGIN = 0.005  # AUC: the report's equivalence margin by default; ~2 test-set sd of one AUC at ~48k test events


def check_margin(margin) -> float:
    """The report's equivalence margin as a float (an AUC difference), or BadSetting naming what was wrong."""
    if isinstance(margin, bool):
        raise BadSetting(f"margin must be a number (an AUC difference, e.g. 0.005); got {margin!r}")
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise BadSetting(f"margin must be a number (an AUC difference, e.g. 0.005); got {margin!r}") from None
    if not (0 < m < 0.5):
        raise BadSetting(f"margin must be an AUC difference between 0 and 0.5 (e.g. 0.005); got {margin!r}")
    return m


def check_binning(n_bins: int, vect: int, phi: str, fit_on: str) -> None:
    """The rules of a binning's settings, in one place: ``BinningSpec`` (the run) and
    ``binning.Binning`` (the tokeniser itself, also built from a saved edges file) call this."""
    try:
        n = operator.index(n_bins)  # ints, numpy ints; not floats or strings
    except TypeError:
        n = None
    if n is None or not 2 <= n <= 20:
        raise BadSetting(f"n_bins must be an integer in 2..20; got {n_bins!r}")
    if vect not in VECTS:
        raise BadSetting(f"vect must be 4 or 5; got {vect!r}")
    if phi not in PHI_CONVENTIONS:
        raise BadSetting(f"phi must be one of {', '.join(PHI_CONVENTIONS)}; got {phi!r}")
    if fit_on not in FIT_ON:
        raise BadSetting(f"fit_on must be one of {', '.join(FIT_ON)}; got {fit_on!r}")


def check_training(epochs: int, batch_size: int, lr: float, weight_decay: float, warmup_steps: int, device: str = "auto",
                   step_mode: str = "auto") -> None:
    """The rules of the training settings, in one place: a cell (``CellSpec``) and the training
    loop's own config (``spec.TrainConfig``, also built directly by benchmarks) both call this."""
    for k, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v < 1:
            raise BadSetting(f"{k} must be >= 1; got {v}")
    for k, v in (("weight_decay", weight_decay), ("warmup_steps", warmup_steps)):
        if v < 0:
            raise BadSetting(f"{k} must be >= 0; got {v}")
    if not (lr > 0 and math.isfinite(lr)):
        raise BadSetting(f"lr must be a positive number; got {lr}")
    for k, v in (("device", device), ("step_mode", step_mode)):
        if v not in CHOICES[k]:
            raise BadSetting(f"{k} must be one of {', '.join(CHOICES[k])}; got {v!r}")


def cell_name(tokenizer: str, pooling: str, met: bool, vect: int, seed: int) -> str:
    """Run name that reads like the cell: ``binned-max-met-4v-s0``."""
    return f"{tokenizer}-{pooling}-{'met' if met else 'nomet'}-{vect}v-s{seed}"


def cell_tag(tokenizer: str, pooling: str, met: bool, vect: int, seed: int) -> str:
    """The ``grid.cell`` tag: ``tokenizer=binned,pooling=max,met=true,vect=4,seed=0``."""
    return f"tokenizer={tokenizer},pooling={pooling},met={'true' if met else 'false'},vect={vect},seed={seed}"


@dataclass
class ModelConfig:
    """The classifier's settings (``learn.model.Classifier``); a cell's are derived from its
    ``CellSpec`` (``CellSpec.model_config``), whose model defaults are these."""

    tokenizer: str = "direct"
    pooling: str = "cls"
    met: bool = True
    vect: int = 4
    n_classes: int = 2  # 4t vs background; 5 for the multiclass task
    # The user's ~400k configuration: ~340k in encoder + head, ~64k in an 886-token table.
    d_model: int = 72
    n_layers: int = 8
    n_heads: int = 8  # head dim 9: small, but it is what the thesis runs used
    d_ff: int = 144  # 2x d_model, as in the user's config (not the usual 4x)
    dropout: float = 0.1
    vocab_size: int = 886  # binned / binned_ambre: token vocabulary incl. padding 0
    codebook_size: int = CODEBOOK_SIZE  # vqvae: number of codes (index 0 is reserved for padding)

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise BadSetting(f"tokenizer must be one of {', '.join(TOKENIZERS)}; got {self.tokenizer!r}")
        if self.pooling not in POOLINGS:
            raise BadSetting(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.vect not in VECTS:
            raise BadSetting(f"vect must be 4 or 5; got {self.vect!r}")
        if self.d_model % self.n_heads:
            raise BadSetting(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for k in ("d_model", "n_layers", "n_heads", "d_ff", "n_classes"):
            if getattr(self, k) < 1:
                raise BadSetting(f"{k} must be >= 1; got {getattr(self, k)}")
        if not 0 <= self.dropout < 1:
            raise BadSetting(f"dropout must be in [0, 1); got {self.dropout}")

    @property
    def n_cont(self) -> int:
        return self.vect - 1  # (pT, eta, phi) or (E, pT, eta, phi)


@dataclass
class TrainConfig:
    """The training loop's settings (``learn.training.fit``); a cell's are derived from its
    ``CellSpec`` (``CellSpec.train_config``), whose training defaults are these."""

    epochs: int = 50  # fixed budget, no early stopping (the study compares at equal training)
    batch_size: int = 64  # part of the science (the user's setting), not a speed knob
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    seed: int = 0
    # with ``seed``, names the run's random stream; a cell passes its configuration's canonical key
    # (CellSpec.stream_key) so that cells of one seed draw independently
    stream_key: str = "adhoc"
    device: str = "auto"  # cuda when present (bf16 autocast), else cpu
    eval_batch_size: int = 4096
    # auto: "compiled" on CUDA (torch.compile + CUDA graph; "graph" without Triton), "eager" on the CPU
    step_mode: str = "auto"

    def __post_init__(self):
        check_training(self.epochs, self.batch_size, self.lr, self.weight_decay, self.warmup_steps, self.device, self.step_mode)
        if self.grad_clip <= 0:
            raise BadSetting(f"grad_clip must be > 0; got {self.grad_clip}")

    @property
    def stream(self) -> RunStream:
        """The run's random stream (``RunStream``, below)."""
        return RunStream(self.stream_key, self.seed)


_M, _T = ModelConfig, TrainConfig  # a cell's model and training defaults are theirs, declared once


@dataclass(frozen=True)
class BinningSpec:
    """A binning run (upstream of ``binned`` cells): the settings that identify it, with the
    input's digest. Same values -> same tokens, so one run serves every cell that needs it."""

    input: str = DEFAULT_DATA
    n_bins: int = 5  # Ambre-style bins per feature
    vect: int = 4
    phi: str = "signed"  # docs/design.md section 4
    fit_on: str = "all"  # quantile edges from all training events, or background only
    step: ClassVar[str] = "binning"

    def __post_init__(self):
        check_binning(self.n_bins, self.vect, self.phi, self.fit_on)

    @property
    def run_name(self) -> str:
        return f"binning-v{self.vect}-b{self.n_bins}-{self.phi}-{self.fit_on}"

    def reuse_params(self, digest: str) -> dict:
        """The params a finished run must have to be reused."""
        return {"input_sha256": digest, "n_bins": self.n_bins, "vect": self.vect, "phi": self.phi, "fit_on": self.fit_on}


@dataclass(frozen=True)
class VQSpec:
    """A VQ-VAE pre-training (upstream of ``vqvae`` cells): the settings that identify it, with
    the input's digest."""

    input: str = DEFAULT_DATA
    vect: int = 4
    codebook_size: int = CODEBOOK_SIZE
    latent_dim: int = 8
    epochs: int = VQVAE_EPOCHS
    seed: int = 0
    batch_size: int = 4096  # objects per step
    lr: float = 1e-3
    max_events: int = 0  # train on the first N training events (0 = all)
    step: ClassVar[str] = "vqvae"

    @property
    def run_name(self) -> str:
        return f"vqvae-v{self.vect}-k{self.codebook_size}"

    def stream_key(self) -> str:
        """The canonical key of this pre-training's random stream (with ``seed``): its settings."""
        return (f"vqvae:vect={self.vect},codebook_size={self.codebook_size},latent_dim={self.latent_dim},epochs={self.epochs},"
                f"batch_size={self.batch_size},lr={self.lr},max_events={self.max_events}")

    def reuse_params(self, digest: str) -> dict:
        """The params a finished run must have to be reused."""
        return {"input_sha256": digest, "vect": self.vect, "codebook_size": self.codebook_size, "latent_dim": self.latent_dim,
                "epochs": self.epochs, "seed": self.seed, "batch_size": self.batch_size, "lr": self.lr, "max_events": self.max_events}


@dataclass(frozen=True)
class CellSpec:
    # -- the factors of the study: tokenizer x pooling x met x vect, repeated per seed
    tokenizer: str = "direct"
    pooling: str = "cls"
    met: bool = True  # MET and MET-phi enter the model
    vect: int = 4  # 4: (pT, eta, phi) + ID; 5: (E, pT, eta, phi) + ID
    seed: int = _T.seed
    # -- what is learned, from which file
    task: str = "4t_vs_bg"  # 4t against all backgrounds (labels 2-5)
    data: str = DEFAULT_DATA  # raw 4-top HDF5; the built-in dataset is generated when this default is missing
    binned_path: str = ""  # binned_ambre: the colleague's pre-binned file
    max_train_events: int = 0  # first N events of a split (demo and test scales); 0 = all
    max_eval_events: int = 0
    # -- the model: the user's ~400k configuration (~340k in encoder + head, ~64k in the 886-token table)
    d_model: int = _M.d_model
    n_layers: int = _M.n_layers
    n_heads: int = _M.n_heads
    d_ff: int = _M.d_ff
    dropout: float = _M.dropout
    # -- training: 50 epochs, no early stopping (the study compares at equal training)
    epochs: int = _T.epochs
    batch_size: int = _T.batch_size
    lr: float = _T.lr
    weight_decay: float = _T.weight_decay
    warmup_steps: int = _T.warmup_steps
    device: str = _T.device
    step_mode: str = _T.step_mode  # how a step runs (eager / CUDA graph / compiled): kernels only, same science
    system_metrics: bool = True  # MLflow system metrics (CPU, memory, GPU): did a cell starve its GPU?
    # -- upstream runs a tokenizer needs (found or made once per settings)
    n_bins: int = 5  # binned: Ambre-style bins per feature
    phi: str = "signed"  # binned: phi convention (docs/design.md section 4)
    fit_on: str = "all"  # binned: quantile edges fitted on all training events or background only
    vqvae_run_id: str = ""  # vqvae: use this run (else one is found or trained)
    codebook_size: int = CODEBOOK_SIZE
    vqvae_epochs: int = VQVAE_EPOCHS
    vqvae_max_events: int = 0

    def __post_init__(self):
        for k, allowed in CHOICES.items():
            if getattr(self, k) not in allowed:
                raise BadSetting(f"{k} must be one of {', '.join(allowed)}; got {getattr(self, k)!r}")
        for k in ("met", "system_metrics"):
            if not isinstance(getattr(self, k), bool):
                raise BadSetting(f"{k} must be true or false; got {getattr(self, k)!r}")
        if self.vect not in VECTS:
            raise BadSetting(f"vect must be 4 or 5; got {self.vect!r}")
        for k in ("seed", "max_train_events", "max_eval_events", "vqvae_max_events"):
            if getattr(self, k) < 0:
                raise BadSetting(f"{k} must be >= 0; got {getattr(self, k)}")
        check_training(self.epochs, self.batch_size, self.lr, self.weight_decay, self.warmup_steps, self.device, self.step_mode)
        for k in ("d_model", "n_layers", "n_heads", "d_ff", "vqvae_epochs"):
            if getattr(self, k) < 1:
                raise BadSetting(f"{k} must be >= 1; got {getattr(self, k)}")
        if self.d_model % self.n_heads:
            raise BadSetting(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0 <= self.dropout < 1:
            raise BadSetting(f"dropout must be in [0, 1); got {self.dropout}")
        self.binning(self.data)  # n_bins (and the rest of the binning's settings) validated where they are declared
        if not 2 <= self.codebook_size <= 65536:
            raise BadSetting(f"codebook_size must be in 2..65536; got {self.codebook_size}")
        if self.tokenizer == "binned_ambre" and not self.binned_path:
            raise BadSetting("tokenizer=binned_ambre needs binned_path (the colleague's pre-binned HDF5 file)")

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return cell_name(self.tokenizer, self.pooling, self.met, self.vect, self.seed)

    @property
    def tag(self) -> str:
        return cell_tag(self.tokenizer, self.pooling, self.met, self.vect, self.seed)

    def factors(self) -> dict:
        """The cell's coordinates in the grid (what the grid pre-logs on a child run)."""
        return {**{k: getattr(self, k) for k in FACTORS}, "seed": self.seed}

    def stream_key(self) -> str:
        """The configuration's canonical key, which with the seed names the run's random stream
        (``RunStream``): the factors and the task, so every cell of one seed draws its
        own initial weights, data order and dropout masks."""
        return f"cell:task={self.task}," + cell_tag(self.tokenizer, self.pooling, self.met, self.vect, self.seed).rsplit(",seed=", 1)[0]

    def settings(self) -> dict:
        """The training settings a train run logs (with the factors, read back from the built
        model, and where its inputs came from)."""
        keys = ("seed", "epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "dropout", "task", "max_train_events",
                "max_eval_events", "n_bins", "phi", "fit_on", "codebook_size", "vqvae_epochs", "vqvae_max_events")
        return {k: getattr(self, k) for k in keys}

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_options(cls, **opts) -> CellSpec:
        """From the train command's options (lower-cased choices, ``vect`` as given by click)."""
        known = {f.name for f in fields(cls)}
        unknown = set(opts) - known
        if unknown:
            raise BadSetting(f"unknown cell settings {sorted(unknown)}; allowed: {sorted(known)}")
        kw = dict(opts)
        for k, allowed in CHOICES.items():  # case-insensitive on the command line, stored as spelled here (4t_vs_ttH)
            if isinstance(kw.get(k), str):
                kw[k] = next((a for a in allowed if a.lower() == kw[k].lower()), kw[k])
        if "vect" in kw:
            kw["vect"] = int(kw["vect"])
        return cls(**kw)

    def train_config(self) -> TrainConfig:
        """The training loop's config for this cell: every ``TrainConfig`` field the cell has,
        by name, and its stream key (the rest at the loop's defaults)."""
        return TrainConfig(**_shared(self, TrainConfig), stream_key=self.stream_key())

    def model_config(self, n_classes: int, **tables: int) -> ModelConfig:
        """The classifier's config for this cell: every ``ModelConfig`` field the cell has, by
        name, the number of classes of its task and the embedding tables its inputs need
        (``vocab_size``, ``codebook_size``: read from the binning or VQ-VAE that made them)."""
        return ModelConfig(**{k: v for k, v in _shared(self, ModelConfig).items() if k not in tables}, n_classes=n_classes, **tables)

    def binning(self, raw: str) -> BinningSpec:
        """The binning run this cell's tokens come from (``binned``), made from ``raw``."""
        return BinningSpec(input=raw, n_bins=self.n_bins, vect=self.vect, phi=self.phi, fit_on=self.fit_on)

    def vqvae(self, raw: str) -> VQSpec:
        """The VQ-VAE run this cell's codes come from (``vqvae``, unless ``vqvae_run_id`` names one)."""
        return VQSpec(input=raw, vect=self.vect, codebook_size=self.codebook_size, epochs=self.vqvae_epochs,
                      max_events=self.vqvae_max_events)

    def replace(self, **changes) -> CellSpec:
        return dataclasses.replace(self, **changes)

    def cli_args(self) -> list[str]:
        """Arguments of ``python -m steps.train`` that rebuild this spec: the factors, task and
        data always, every other setting where it differs from the default; the same locally
        and on Condor."""
        out = []
        default = CellSpec(binned_path="x") if self.tokenizer == "binned_ambre" else CellSpec()
        always = ("tokenizer", "pooling", "met", "vect", "seed", "task", "data")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "binned_path" or (f.name not in always and v == getattr(default, f.name)):
                continue
            out += [f"--{f.name.replace('_', '-')}", ("true" if v else "false") if isinstance(v, bool) else str(v)]
        if self.binned_path:
            out += ["--binned-path", self.binned_path]
        return out


def _shared(spec: CellSpec, cls) -> dict:
    """``spec``'s values of the fields it has in common with the dataclass ``cls``."""
    own = {f.name for f in fields(spec)}
    return {f.name: getattr(spec, f.name) for f in fields(cls) if f.name in own and f.name != "stream_key"}


# --------------------------------------------------------------------------- each run's own random stream
# Each run's own random stream: every random draw of a run comes from here, and from nothing else.
#
# Why: the summary treats each (cell, seed) run as an independent replicate. If the bare seed
# drove the draws, all cells of seed 0 would see the same data order and (where their parameters
# coincide) the same initial weights, and "seed luck" would be shared across cells: the grid would
# hold ~3 replicates per level instead of 36 and its intervals would be too narrow.
#
# The scheme (version ``SCHEME``):
#
#     root  = numpy SeedSequence(entropy=seed, spawn_key=(SCHEME, *sha256(key) as 8 uint32 words))
#     child = SeedSequence(entropy=seed, spawn_key=root.spawn_key + (PURPOSE, *indices))
#
# ``key`` is the configuration's canonical key (``CellSpec.stream_key()``: the factors and the
# task, e.g. ``cell:task=4t_vs_bg,tokenizer=binned,pooling=max,met=true,vect=4``; a VQ-VAE's own
# settings for its pre-training). Purposes: ``init`` (initial weights), ``order`` (one child per
# epoch: the event order), ``dropout`` (one child per epoch: the per-run generator is reseeded
# with it at the start of each epoch, so a resumed run draws the masks it would have drawn),
# ``kmeans`` (the VQ-VAE's codebook start). Nothing here touches a process-wide generator.
#
# A run logs ``rng_stream`` (a short id of its root) and ``rng_scheme``; its checkpoints carry
# both, and a resume under another scheme or stream is refused. To redo one run's draws by hand:
# ``RunStream(key, seed)`` with the key and seed that run logged (``rng_key``, ``seed``).


def _numpy():
    """numpy, imported on a stream's first draw: the CLI validates specs without it (test_spec)."""
    import numpy

    return numpy


SCHEME = 2  # 1: the bare seed (before streams); 2: this section
_PURPOSES = {"init": 1, "order": 2, "dropout": 3, "kmeans": 4}


@dataclass(frozen=True)
class RunStream:
    """The random stream of one run: ``(key, seed)`` -> independent generators per purpose."""

    key: str
    seed: int

    def __post_init__(self):
        try:
            operator.index(self.seed)  # an int or numpy integer (numpy is not imported for this)
        except TypeError:
            raise ValueError(f"a stream's seed must be an integer >= 0; got {self.seed!r}") from None
        if isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"a stream's seed must be an integer >= 0; got {self.seed!r}")
        if not self.key:
            raise ValueError("a stream needs a non-empty configuration key")

    @cached_property
    def _spawn_key(self) -> tuple[int, ...]:
        np = _numpy()
        words = np.frombuffer(hashlib.sha256(self.key.encode()).digest(), dtype="<u4")
        return (SCHEME, *(int(w) for w in words))

    def sequence(self, purpose: str | None = None, *indices: int) -> np.random.SeedSequence:
        """The SeedSequence of ``purpose`` (and e.g. the epoch); the root without a purpose."""
        np = _numpy()
        extra = () if purpose is None else (_PURPOSES[purpose], *(int(i) for i in indices))
        return np.random.SeedSequence(entropy=int(self.seed), spawn_key=self._spawn_key + extra)

    def seed64(self, purpose: str, *indices: int) -> int:
        """A 63-bit integer seed for a torch generator (positive, fits ``manual_seed``)."""
        np = _numpy()
        return int(self.sequence(purpose, *indices).generate_state(1, np.uint64)[0] >> np.uint64(1))

    @property
    def id(self) -> str:
        """A short id of the root stream (what a run logs as ``rng_stream``)."""
        np = _numpy()
        return self.sequence().generate_state(2, np.uint32).tobytes().hex()

    def torch_generator(self, purpose: str, *indices: int, device="cpu"):
        """A fresh torch generator seeded for ``purpose``: owned by the caller, shared with nobody."""
        import torch

        return torch.Generator(device=device).manual_seed(self.seed64(purpose, *indices))

    def numpy(self, purpose: str, *indices: int) -> np.random.Generator:
        np = _numpy()
        return np.random.default_rng(self.sequence(purpose, *indices))

    def epoch_order(self, n: int, epoch: int):
        """The training order of one epoch: a function of (stream, epoch) only, so resume-proof."""
        import torch

        return torch.randperm(n, generator=self.torch_generator("order", epoch))

    def dropout_seed(self, epoch: int) -> int:
        """What the run's dropout generator is reseeded with at the start of ``epoch``."""
        return self.seed64("dropout", epoch)

    def params(self) -> dict:
        """What a run logs about its stream."""
        return {"rng_stream": self.id, "rng_scheme": SCHEME, "rng_key": self.key}


def stream_check(saved: dict | None, stream: RunStream) -> str | None:
    """Why a checkpoint's recorded stream does not match ``stream`` (None when it does).

    ``saved``: the checkpoint's ``stream`` entry; a checkpoint written before streams has none."""
    if not saved:
        return (f"it was written under random scheme 1 (the bare seed, shared across cells); this code uses scheme {SCHEME}. "
                "Resuming would mix two streams: start a new run")
    if saved.get("scheme") != SCHEME:
        return f"it was written under random scheme {saved.get('scheme')}; this code uses scheme {SCHEME}: start a new run"
    if saved.get("id") != stream.id:
        return f"it was written with random stream {saved.get('id')}, this run's is {stream.id} (key {stream.key!r}, seed {stream.seed})"
    return None
