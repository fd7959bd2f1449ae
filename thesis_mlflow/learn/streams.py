"""Each run's own random stream: every random draw of a run comes from here, and from nothing else.

Why: the summary treats each (cell, seed) run as an independent replicate. If the bare seed
drove the draws, all cells of seed 0 would see the same data order and (where their parameters
coincide) the same initial weights, and "seed luck" would be shared across cells: the grid would
hold ~3 replicates per level instead of 36 and its intervals would be too narrow.

The scheme (version ``SCHEME``):

    root  = numpy SeedSequence(entropy=seed, spawn_key=(SCHEME, *sha256(key) as 8 uint32 words))
    child = SeedSequence(entropy=seed, spawn_key=root.spawn_key + (PURPOSE, *indices))

``key`` is the configuration's canonical key (``CellSpec.stream_key()``: the factors and the
task, e.g. ``cell:task=4t_vs_bg,tokenizer=binned,pooling=max,met=true,vect=4``; a VQ-VAE's own
settings for its pre-training). Purposes: ``init`` (initial weights), ``order`` (one child per
epoch: the event order), ``dropout`` (one child per epoch: the per-run generator is reseeded
with it at the start of each epoch, so a resumed run draws the masks it would have drawn),
``kmeans`` (the VQ-VAE's codebook start). Nothing here touches a process-wide generator.

A run logs ``rng_stream`` (a short id of its root) and ``rng_scheme``; its checkpoints carry
both, and a resume under another scheme or stream is refused. To redo one run's draws by hand:
``RunStream(key, seed)`` with the key and seed that run logged (``rng_key``, ``seed``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

SCHEME = 2  # 1: the bare seed (before streams); 2: this module
_PURPOSES = {"init": 1, "order": 2, "dropout": 3, "kmeans": 4}


@dataclass(frozen=True)
class RunStream:
    """The random stream of one run: ``(key, seed)`` -> independent generators per purpose."""

    key: str
    seed: int

    def __post_init__(self):
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"a stream's seed must be an integer >= 0; got {self.seed!r}")
        if not self.key:
            raise ValueError("a stream needs a non-empty configuration key")

    @cached_property
    def _spawn_key(self) -> tuple[int, ...]:
        words = np.frombuffer(hashlib.sha256(self.key.encode()).digest(), dtype="<u4")
        return (SCHEME, *(int(w) for w in words))

    def sequence(self, purpose: str | None = None, *indices: int) -> np.random.SeedSequence:
        """The SeedSequence of ``purpose`` (and e.g. the epoch); the root without a purpose."""
        extra = () if purpose is None else (_PURPOSES[purpose], *(int(i) for i in indices))
        return np.random.SeedSequence(entropy=int(self.seed), spawn_key=self._spawn_key + extra)

    def seed64(self, purpose: str, *indices: int) -> int:
        """A 63-bit integer seed for a torch generator (positive, fits ``manual_seed``)."""
        return int(self.sequence(purpose, *indices).generate_state(1, np.uint64)[0] >> np.uint64(1))

    @property
    def id(self) -> str:
        """A short id of the root stream (what a run logs as ``rng_stream``)."""
        return self.sequence().generate_state(2, np.uint32).tobytes().hex()

    def torch_generator(self, purpose: str, *indices: int, device="cpu"):
        """A fresh torch generator seeded for ``purpose``: owned by the caller, shared with nobody."""
        import torch

        return torch.Generator(device=device).manual_seed(self.seed64(purpose, *indices))

    def numpy(self, purpose: str, *indices: int) -> np.random.Generator:
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
