"""The tracking server this project starts: a real ``mlflow server`` process with its logins,
its certificate beyond loopback and its start-up code. May import ``tracking``, ``errors``,
``permissions`` and ``secret``.

- ``process``: start, find, stop and check the server (``thesis-mlflow serve``)
- ``logins``: the admin and the least-privileged jobs user
- ``tls``: a self-signed certificate for a server reachable beyond loopback
- ``devdb``: a throwaway PostgreSQL server for tests and benchmarks
- ``site/``: start-up code on the server's PYTHONPATH (TCP_NODELAY)

Public API: ``start``, ``running``, ``stop_pid``.
"""

from thesis_mlflow._lazy import public

__getattr__, __dir__ = public(__name__, {"start": "process", "running": "process", "stop_pid": "process"})
