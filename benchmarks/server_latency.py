"""Per-call latency of MLflow client calls against a real tracking server, with and without the
server's start-up code (thesis_mlflow/server/site: TCP_NODELAY, which uvicorn's multi-worker
mode leaves off). One client, kept-alive connections, as a training job talks to the server.

    python benchmarks/server_latency.py [--workers 4] [--calls 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thesis_mlflow.server import process as server  # noqa: E402


def measure(workers: int, calls: int, hook: bool) -> dict:
    import mlflow

    real = server.site_path
    if not hook:
        server.site_path = lambda pythonpath: pythonpath or ""
    try:
        srv = server.start(Path(tempfile.mkdtemp()) / "srv", auth=False, workers=workers)
    finally:
        server.site_path = real
    try:
        c = mlflow.MlflowClient(srv.uri)
        exp = c.create_experiment("latency")
        rid = c.create_run(exp).info.run_id
        out = {}
        for name, call in (("get_experiment", lambda i: c.get_experiment(exp)), ("log_metric", lambda i: c.log_metric(rid, "m", i, step=i)),
                           ("get_run", lambda i: c.get_run(rid))):
            t = time.perf_counter()
            for i in range(calls):
                call(i)
            out[name] = (time.perf_counter() - t) / calls * 1e3
        return out
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4, help="serve's default")
    ap.add_argument("--calls", type=int, default=40)
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    without, with_ = measure(a.workers, a.calls, False), measure(a.workers, a.calls, True)
    print(f"ms per call, one client, kept-alive connections, mlflow server --workers {a.workers}")
    print(f"{'call':<16}{'without':>9}{'with hook':>11}{'ratio':>8}")
    for k in without:
        print(f"{k:<16}{without[k]:9.1f}{with_[k]:11.1f}{without[k] / with_[k]:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
