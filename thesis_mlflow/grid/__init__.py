"""The grid: a YAML file of cells, run as one MLflow parent with a child per cell, on this
machine, on HTCondor or on SLURM. May import ``pipeline``, ``tracking``, ``learn``'s pure helpers,
``errors``, ``spec``, ``paths``, ``permissions`` and ``secret``; never ``report`` or ``server``.

Scheduler-free, here: what a grid is and how its cells run, whichever scheduler runs them.

- ``gridfile``: YAML -> cells (``CellSpec``) and the exact command each cell runs
- ``runs``: a grid's parent and children in MLflow
- ``driver``: run a grid (the local backend, packs), resume what is left
- ``packing``: a node's resources for packed cells (cores, thread budgets, GPUs, compile cache)
- ``mps``: processes sharing one GPU under a private CUDA MPS daemon
- ``processes``: child processes run a few at a time (``ChildProcess``, ``run_processes``)
- ``signals``: a job's SIGTERM / SIGHUP (and SLURM's SIGUSR1) as Ctrl-C
- ``rehearsal``: a grid as its rehearsal runs it (real sizes, few steps, its own name)
- ``jobs``: one model of a grid's batch jobs (``JobView``), whichever scheduler runs them
- ``jobenv``: what a batch job's environment may carry (never a secret)
- ``quoting``: every value that reaches a scheduler's file, checked or quoted by one rule
- ``backends``: the registry of schedulers, one line each
- ``status``: a grid's state at a glance

One folder per batch scheduler, each of the same shape (``settings``, ``submit``, ``state``):

- ``condor/``: HTCondor (DAG and submit files, DAGMan's node states, memory holds)
- ``slurm/``: SLURM (job scripts submitted as a chain, squeue / sacct / logs; ``injob``: the
  pack's time-limit warning and requeue; ``commands``: how SLURM is called)

Public API: ``load_grid``, ``run_grid``, ``run_pack``, ``grid_status``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"load_grid": "gridfile", "run_grid": "driver", "run_pack": "driver",
                                         "grid_status": "status"})
