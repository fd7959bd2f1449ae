"""Make one cell again from its run id, and say whether it came out the same.

``reproduce(run_id)`` rebuilds the run's ``CellSpec`` from what the run logged (its factors,
training settings, event limits, data file and upstream runs), checks that this code derives
the same random stream (``rng_stream``), trains the cell into a new run tagged
``reproduction.of=<run id>``, and compares the two runs' test scores event by event:

- ``identical``: every score equal (same code, environment, device and CPU thread count, which
  reproduce sets as recorded: the CPU path is bit-for-bit deterministic);
- ``within tolerance``: largest difference <= ``TOLERANCE`` (expected across GPU kernels, bf16
  autocast and CPU / GPU: kernels differ, the science does not);
- ``different``: larger, with the largest difference. It is called a failure only when the
  code (commit, uncommitted changes), the environment (python, torch, CUDA, numpy) and the
  device are the same as recorded; otherwise the verdict names what differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thesis_mlflow.errors import BadInput
from thesis_mlflow.pipeline.cell import train_cell
from thesis_mlflow.spec import CellSpec
from thesis_mlflow.tracking import provenance, queries
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # on signal probabilities: far below any AUC difference the study quotes, above bf16 kernel noise
COMPARED = ("mlflow.source.git.commit", "code.dirty", "env.python", "env.torch", "env.cuda", "env.numpy", "env.threads", "device")
_INTS = ("seed", "epochs", "batch_size", "warmup_steps", "d_model", "n_layers", "n_heads", "d_ff", "n_bins", "codebook_size",
         "vqvae_epochs", "vqvae_max_events", "max_train_events", "max_eval_events")
_FLOATS = ("lr", "weight_decay", "dropout")
_STRS = ("tokenizer", "pooling", "task", "phi", "fit_on")


@dataclass
class Verdict:
    original: str
    reproduction: str
    verdict: str  # identical / within tolerance / different
    max_diff: float
    differs: dict = field(default_factory=dict)  # provenance key -> (recorded, now)

    @property
    def failed(self) -> bool:
        """A difference with the same code, environment and device: something is not reproducible."""
        return self.verdict == "different" and not self.differs

    def lines(self) -> list[str]:
        out = [f"reproduction of run {self.original}: run {self.reproduction}: {self.verdict} "
               f"(largest test-score difference {self.max_diff:.3g}; tolerance {TOLERANCE:g})"]
        if self.differs:
            out.append("not the same conditions, so a difference is not called a failure: " +
                       "; ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in self.differs.items()))
        elif self.verdict == "different":
            out.append("same code, environment and device: this cell does not reproduce")
        return out


def spec_of(run) -> object:
    """The ``CellSpec`` a train run was made with, from its params (and its upstream runs)."""
    p = run.data.params
    missing = [k for k in ("tokenizer", "pooling", "met", "vect", "seed", "data", "rng_stream") if k not in p]
    if missing:
        raise BadInput(f"run {run.info.run_id} did not record {missing}: it was logged by an older version and cannot be remade exactly")
    kw = {k: int(p[k]) for k in _INTS if k in p}
    kw |= {k: float(p[k]) for k in _FLOATS if k in p}
    kw |= {k: p[k] for k in _STRS if k in p}
    kw |= {"met": p["met"] == "true", "vect": int(p["vect"]), "data": p["data"], "system_metrics": False}
    if "max_train_events" not in p:  # runs before the limits were logged: the counts stand for them under the default task
        if p.get("task", "4t_vs_bg") != "4t_vs_bg":
            raise BadInput(f"run {run.info.run_id} did not record its event limits; with task {p['task']} they cannot be inferred")
        kw["max_train_events"], kw["max_eval_events"] = int(p["n_train_events"]), int(p["n_val_events"])
    if p.get("vqvae_run_id"):
        kw["vqvae_run_id"] = p["vqvae_run_id"]
    if p["tokenizer"] == "binned_ambre":
        kw["binned_path"] = p.get("binned_file", "")
    if p.get("binning_run_id") and "n_bins" not in p:  # older runs: the binning's settings are on the binning run
        b = queries.get_run(p["binning_run_id"]).data.params
        kw |= {"n_bins": int(b["n_bins"]), "phi": b["phi"], "fit_on": b["fit_on"]}
    return CellSpec(**kw)


def _scores(run_id: str) -> np.ndarray:
    return np.load(queries.artifact_path(run_id, "eval/test_scores.npz"))["scores"].astype(np.float64)


def reproduce(run_id: str) -> Verdict:
    old = queries.require_run(run_id, "train")
    spec = spec_of(old)
    if old.data.params.get("rng_stream") != spec.train_config().stream.id:
        raise BadInput(f"run {run_id} drew from random stream {old.data.params.get('rng_stream')} (scheme "
                       f"{old.data.params.get('rng_scheme', '1')}); this code derives {spec.train_config().stream.id} for it: "
                       "the same cell cannot be made again under another scheme")
    if not Path(spec.data).is_file():
        raise BadInput(f"run {run_id} read {spec.data}, which is not here: run reproduce where that file is")
    threads = old.data.tags.get("env.threads")
    if threads:  # CPU sums run in another order with another thread count (a grid worker had 1 of the 2 cores)
        import torch

        torch.set_num_threads(int(threads))
    log.info("reproducing run %s (%s)", run_id, spec.name)
    new_id = train_cell(spec)
    tracking.client().set_tag(new_id, "reproduction.of", run_id)
    a, b = _scores(run_id), _scores(new_id)
    if a.shape != b.shape:
        raise BadInput(f"run {run_id} scored {a.shape[0]} test events, its reproduction {b.shape[0]}: not the same test set")
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    verdict = "identical" if diff == 0 else ("within tolerance" if diff <= TOLERANCE else "different")
    now = provenance.provenance_tags("train")
    differs = {k: (old.data.tags.get(k), now.get(k)) for k in COMPARED if old.data.tags.get(k) != now.get(k)}
    v = Verdict(run_id, new_id, verdict, diff, differs)
    tracking.client().set_tag(new_id, "reproduction.verdict", verdict)
    return v
