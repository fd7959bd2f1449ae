"""The backends a grid runs on, one line each, each one folder of the same shape: ``settings``
and ``submit``; a batch scheduler also ``state`` (SLURM also ``injob``), whose
``state.cell_views(folder)`` turns what the scheduler knows into one ``jobs.JobView`` per cell,
the parent run's tag ``folder_tag`` saying where its job files are. The local backend has no
scheduler to ask (``grid.local``). A new scheduler is a new folder and a line here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from thesis_mlflow.grid.jobs import JobView
from thesis_mlflow.grid.runs import DAG_DIR_TAG, SLURM_DIR_TAG


@dataclass(frozen=True)
class Backend:
    name: str  # as ``grid run --backend`` names it
    package: str  # the backend's folder
    folder_tag: str | None  # the parent run's tag naming the grid's job folder

    def cell_views(self, folder: Path) -> tuple[dict[str, JobView], str | None]:
        """{cell name: the view of the job that trains it}, and a note when the scheduler could not be asked."""
        state = importlib.import_module(f"{self.package}.state")  # the backend's own folder, named by the registry
        return state.cell_views(Path(folder))


BACKENDS = {b.name: b for b in (
    Backend("local", "thesis_mlflow.grid.local", None),
    Backend("condor", "thesis_mlflow.grid.condor", DAG_DIR_TAG),
    Backend("slurm", "thesis_mlflow.grid.slurm", SLURM_DIR_TAG),
)}
BATCH = tuple(b for b in BACKENDS.values() if b.folder_tag)  # the batch schedulers: a job folder, a state to read
