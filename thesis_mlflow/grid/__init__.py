"""The grid: a YAML file of cells, run as one MLflow parent with a child per cell, on this
machine, on HTCondor or on SLURM. May import ``pipeline``, ``tracking``, ``learn``'s pure helpers,
``errors``, ``spec``, ``paths``, ``permissions`` and ``secret``; never ``report`` or ``server``.

- ``gridfile``: YAML -> cells (``CellSpec``) and the exact command each cell runs
- ``runs``: a grid's parent and children in MLflow
- ``driver``: run a grid (local backend, packs), resume what is left
- ``packing``: several cells on one GPU (threads, processes, CUDA MPS, thread budgets)
- ``jobs``: one model of a grid's batch jobs (``JobView``), whichever scheduler runs them
- ``jobenv``: what a batch job's environment may carry (never a secret)
- ``quoting``: every value that reaches a scheduler's file, checked or quoted by one rule
- ``condorspec``: the grid file's ``condor:`` section, checked
- ``condor``: everything HTCondor (DAG and submit files, submission, DAGMan's node states, memory holds)
- ``slurmspec``: the grid file's ``slurm:`` section, checked
- ``slurm``: SLURM job scripts, their submission as a chain, a pack's requeue before its time limit
- ``slurmstate``: what SLURM knows of a grid's jobs (squeue, sacct, the job logs)
- ``status``: a grid's state at a glance

Public API: ``load_grid``, ``run_grid``, ``run_pack``, ``grid_status``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"load_grid": "gridfile", "run_grid": "driver", "run_pack": "driver",
                                         "grid_status": "status"})
