"""The grid: a YAML file of cells, run as one MLflow parent with a child per cell, on this
machine or on HTCondor. May import ``pipeline``, ``tracking``, ``learn``'s pure helpers,
``errors``, ``spec``, ``paths`` and ``permissions``; never ``report`` or ``server``.

- ``gridfile``: YAML -> cells (``CellSpec``) and the exact command each cell runs
- ``runs``: a grid's parent and children in MLflow
- ``driver``: run a grid (local backend, packs), resume what is left
- ``packing``: several cells on one GPU (threads, processes, CUDA MPS, thread budgets)
- ``condor``: everything HTCondor (DAG and submit files, submission, DAGMan's node states)
- ``status``: a grid's state at a glance

Public API: ``load_grid``, ``run_grid``, ``run_pack``, ``grid_status``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"load_grid": "gridfile", "run_grid": "driver", "run_pack": "driver",
                                         "grid_status": "status"})
