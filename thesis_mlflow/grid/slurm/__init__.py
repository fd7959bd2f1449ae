"""The SLURM backend, in the shape every batch backend has (``grid.backends``):

- ``settings``: the grid file's ``slurm:`` section, checked (``SlurmSpec``)
- ``submit``: the job scripts, their submission as a chain (``sbatch``), the jobs record
- ``state``: what SLURM knows of a grid's jobs (squeue, sacct, the job logs) as ``JobView``s
- ``injob``: the pack inside its job: the time-limit warning, its own requeue
- ``commands``: how SLURM's commands are called (``run``, ``query``)

May import what ``grid`` may, and ``grid``'s scheduler-free modules.
Public API: ``SlurmSpec``, ``slurm_spec``, ``run_slurm``, ``cell_views``, ``requeue_self``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"SlurmSpec": "settings", "slurm_spec": "settings", "run_slurm": "submit", "cell_views": "state",
                                         "requeue_self": "injob"})
