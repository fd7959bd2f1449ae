"""The local backend: the grid on this node, no scheduler, in the shape of the others
(``grid.backends``):

- ``settings``: what ``grid run --backend local`` is told (``LocalSpec``: workers, MPS)
- ``submit``: the cells shared among worker processes, reported as they end (``run_cells``)

No ``state``: there is no scheduler to ask; a local cell's state is its run and its lease,
which ``grid.status`` reads for every backend. No in-job side: a worker is a pack (``grid.driver.run_pack``).
May import what ``grid`` may, and ``grid``'s scheduler-free modules.
Public API: ``LocalSpec``, ``run_cells``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"LocalSpec": "settings", "run_cells": "submit"})
