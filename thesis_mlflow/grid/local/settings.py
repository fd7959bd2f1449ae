"""The local backend's settings: what ``grid run --backend local`` is told on its command line
(the grid file has no ``local:`` section), checked once, before any run is created."""

from __future__ import annotations

from dataclasses import dataclass

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.grid.mps import MPS_MODES


@dataclass(frozen=True)
class LocalSpec:
    """How a grid runs on this node."""

    jobs: int = 1  # worker processes at once (on a GPU: cells side by side per GPU worker)
    mps: str = "auto"  # CUDA MPS for workers sharing a GPU: auto starts a private daemon where one can start

    def __post_init__(self):
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise BadSetting(f"jobs must be a whole number >= 1; got {self.jobs!r}")
        if self.mps not in MPS_MODES:
            raise BadSetting(f"mps must be one of {', '.join(MPS_MODES)}; got {self.mps!r}")
