"""The HTCondor backend, in the shape every batch backend has (``grid.backends``):

- ``settings``: the grid file's ``condor:`` section, checked
- ``submit``: the DAG and submit files (``htcondor2``), their submission
- ``state``: what DAGMan knows of a grid's cells (node status file, event log) as ``JobView``s

(No in-job side: DAGMan retries a node; a retried pack trains only what is left.)
May import what ``grid`` may, and ``grid``'s scheduler-free modules.
Public API: ``condor_spec``, ``run_condor``, ``cell_views``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"condor_spec": "settings", "run_condor": "submit", "cell_views": "state"})
