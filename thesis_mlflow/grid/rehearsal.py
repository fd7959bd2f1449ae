"""A rehearsal of a grid: every cell of a scale at its real sizes, training only a few steps.

``rehearsed(grid, Rehearsal(steps=20))`` is the grid a rehearsal runs: the same cells, packs,
backend, model, batch size, data file, codebook and evaluation, with

- training cut to ``steps`` steps per epoch (the first ``steps x batch_size`` training events)
  for ``epochs`` epochs: the first carries the warm-up (compile, capture, caches), the second is
  the steady pace the forecast extrapolates;
- validation and test on the first ``eval_events`` events of their splits (evaluation time and
  score files are extrapolated per event; the forecast says so);
- the VQ-VAE pre-training at its codebook size and batch, one epoch on ``steps x batch_size``
  events (it reads the whole file as the real one does; its training is timed and extrapolated);
  the cells encode their own events with it, timed per event (the binning is the real one: it has
  no training to shorten, and the real grid reuses it);
- its own name, ``<grid>-rehearsal``, and tag ``grid.rehearsal``: its parent, children, jobs and
  folders are never the real grid's, and the real grid never resumes into them.

MLflow-free and scheduler-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.spec import CellSpec

SUFFIX = "-rehearsal"  # the rehearsal's grid.name: <grid run name>-rehearsal
TAG = "grid.rehearsal"  # on the rehearsal's parent and children: "true"


@dataclass(frozen=True)
class Rehearsal:
    steps: int = 20  # training steps per epoch: enough for a steady pace after the first epoch's warm-up
    epochs: int = 2  # 1 warm-up + 1 steady; the steady one is what is extrapolated
    eval_events: int = 2000  # events per evaluation split: evaluation is timed per event and extrapolated

    def __post_init__(self):
        for k, low in (("steps", 1), ("epochs", 2), ("eval_events", 100)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise BadSetting(f"rehearsal {k} must be an integer >= {low}; got {v!r}")

    def train(self, real: dict) -> dict:
        """A scale's ``train:`` settings, rehearsed: sizes kept, training cut short."""
        batch = int(real.get("batch_size", CellSpec.batch_size))
        events = self.steps * batch
        cap = int(real.get("max_train_events") or 0)
        return {**real, "epochs": self.epochs, "max_train_events": min(events, cap) if cap else events,
                "max_eval_events": min(self.eval_events, int(real.get("max_eval_events") or 0) or self.eval_events)}

    def vqvae(self, real: dict, batch_size: int) -> dict:
        """A scale's ``vqvae:`` settings, rehearsed: codebook kept, one short epoch."""
        events = self.steps * batch_size
        cap = int(real.get("max_events") or 0)
        return {**real, "epochs": 1, "max_events": min(events, cap) if cap else events}

    def args(self) -> list[str]:
        """What a job's command adds so that it loads the rehearsed grid (``load_grid(rehearse=...)``)."""
        return ["--rehearse", str(self.steps), "--rehearse-epochs", str(self.epochs), "--rehearse-eval-events", str(self.eval_events)]
