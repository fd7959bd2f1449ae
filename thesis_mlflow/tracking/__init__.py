"""The MLflow boundary: everything that reads or writes the tracking server goes through here
(``steps/`` aside, which only start runs through ``runs.step_run``). May import ``learn``'s pure
helpers, ``errors``, ``spec`` and ``secret``; never ``pipeline``, ``grid``, ``report`` or ``server``.

- ``runs``: the client with retries, experiments, step runs, fenced writes, the run log's uploads
- ``runlog``: each run's own log file (its thread's records, the root logger's level)
- ``queries``: reading runs, metrics, artifacts and searches (reuse of upstream runs included)
- ``provenance``: which code, environment and device made a run
- ``done``: when a train run counts as finished (``is_done``, the one rule)
- ``leases``: who works on a run, decided by the server (claims, beats, fencing)
- ``peer``: who answers on a loopback port; ``telemetry``: MLflow's telemetry off
- ``views``: saved views of the runs table (experiment tags)

Public API: ``client``, ``step_run``, ``retrying``, ``is_done``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"client": "runs", "step_run": "runs", "retrying": "runs", "is_done": "done"})
