"""Tracking-server load: N train jobs logging at once, on SQLite and on PostgreSQL.

Each client is its own process with the MLflow client, as a grid job is: it creates a run,
logs 20 params, then a train run's worth of metrics (50 epochs x 6 metrics, one batch per
epoch, as ``train`` logs them) and a small artifact, and ends the run. All clients start
together. Printed per configuration: wall time, metric values written per second, p50/p99
latency of one epoch's ``log_metrics`` call (a write the overloaded server refused and the job
sent again counts with its waits, as ``thesis_mlflow.tracking.runs.retrying`` does in a job), jobs
that failed, and metric rows lost or duplicated (read back from the server; must be 0). The
server runs as ``thesis-mlflow serve`` runs it (login on).

    python benchmarks/server_load.py [--clients 8,36,108] [--backends sqlite,postgresql] [--workers 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METRICS = ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "events_per_s")


def client(a) -> None:
    import mlflow

    from thesis_mlflow.tracking.runs import retrying  # a job's own retry of writes an overloaded server refused

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("load").experiment_id
    print("ready", flush=True)
    start = Path(a.start)
    while not start.exists():
        time.sleep(0.01)
    t0 = time.time()
    run = retrying(c.create_run, exp, run_name=f"client-{a.index}", tags={"step": "train"})
    rid = run.info.run_id
    retrying(c.log_batch, rid, params=[mlflow.entities.Param(f"p{i}", str(i)) for i in range(20)])
    lat = []
    for epoch in range(1, a.epochs + 1):
        t = time.perf_counter()
        ts = int(time.time() * 1000)
        retrying(c.log_batch, rid, metrics=[mlflow.entities.Metric(k, epoch / 100 + i, ts, epoch) for i, k in enumerate(METRICS)])
        lat.append(time.perf_counter() - t)
    art = Path(tempfile.mkdtemp()) / "test_scores.npz"
    art.write_bytes(os.urandom(10_000))
    retrying(c.log_artifact, rid, str(art), "eval")
    retrying(c.set_terminated, rid, "FINISHED")
    print(json.dumps({"run_id": rid, "lat": lat, "t0": t0, "t1": time.time()}), flush=True)


def measure(backend: str, n: int, workers: int, epochs: int) -> dict:
    from thesis_mlflow.server import devdb
    from thesis_mlflow.server import process as server

    work = Path(tempfile.mkdtemp(prefix="load-"))
    home = work / "home"
    pg = devdb.start() if backend == "postgresql" else None
    srv = server.start(work / "srv", workers=workers, backend_store_uri=pg.uri if pg else None)
    server.install_client_credentials(work / "srv", home)
    env = {**os.environ, "HOME": str(home), "MLFLOW_TRACKING_URI": srv.uri}
    try:
        import mlflow

        os.environ["HOME"] = str(home)
        c = mlflow.MlflowClient(srv.uri)
        c.create_experiment("load")
        start = work / "start"
        logs = [open(work / f"client-{i}.err", "w") for i in range(n)]  # files, not pipes: a full pipe would block a client
        ps = [subprocess.Popen([sys.executable, __file__, "--client", "--index", str(i), "--start", str(start), "--epochs", str(epochs)],
                               env=env, stdout=subprocess.PIPE, stderr=logs[i], text=True) for i in range(n)]
        for i, p in enumerate(ps):
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError((work / f"client-{i}.err").read_text()[-500:])
        start.write_text("go")
        res, failed = [], 0
        for i, p in enumerate(ps):
            out, _ = p.communicate(timeout=1800)
            logs[i].close()
            err = (work / f"client-{i}.err").read_text().strip()
            if p.returncode != 0:
                failed += 1
                print(f"  a client failed: {err.splitlines()[-1] if err else p.returncode}")
                continue
            res.append(json.loads(out.strip().splitlines()[-1]))
        retried = sum((work / f"client-{i}.err").read_text().count("tracking server overloaded") for i in range(n))
        wall = max(r["t1"] for r in res) - min(r["t0"] for r in res)
        lat = sorted(x for r in res for x in r["lat"])
        lost = dup = 0
        for r in res:
            for k in METRICS:
                steps = [m.step for m in c.get_metric_history(r["run_id"], k)]
                lost += len(set(range(1, epochs + 1)) - set(steps))
                dup += len(steps) - len(set(steps))
        return {"backend": backend, "clients": n, "workers": workers, "failed": failed, "retried": retried, "wall_s": wall,
                "writes_per_s": len(res) * epochs * len(METRICS) / wall, "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "lost": lost, "duplicated": dup}
    finally:
        srv.stop()
        if pg:
            pg.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="8,36,108")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--start", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        return client(a)
    print(f"{'backend':<11} {'clients':>7} {'workers':>7} {'wall s':>7} {'writes/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'dup':>4} {'failed':>6} {'resent':>6}")
    for backend in a.backends.split(","):
        for w in (int(x) for x in a.workers.split(",")):
            for n in (int(x) for x in a.clients.split(",")):
                r = measure(backend, n, w, a.epochs)
                print(f"{backend:<11} {n:>7} {w:>7} {r['wall_s']:>7.1f} {r['writes_per_s']:>9,.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                      f"{r['lost']:>5} {r['duplicated']:>4} {r['failed']:>6} {r['retried']:>6}", flush=True)


if __name__ == "__main__":
    main()
