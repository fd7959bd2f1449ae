"""How long the report's MLflow queries take for a grid of N finished cells (default 108, the thesis grid).

A real tracking server (as ``serve`` runs it, login off) is filled with N train runs of one
grid, each with its params, 50 epochs of val_auc and a real-size ``eval/test_scores.npz``
(30,207 test events: labels, scores, process), plus the grid's parent run. Then
``summary.collect`` (the report's queries: the runs, the metric histories, every run's test
scores) is timed three ways: one download after the other (the old way), parallel with an
empty cache (the first report), and parallel from the cache (every report after it).

    python benchmarks/report_queries.py [--runs 108] [--events 30207]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fill(n: int, events: int, work: Path) -> str:
    import mlflow

    c = mlflow.MlflowClient()
    exp = c.create_experiment("queries")
    parent = c.create_run(exp, run_name="grid-q", tags={"step": "grid", "grid.name": "q"}).info.run_id
    rng = np.random.default_rng(0)
    labels = (rng.random(events) < 0.5).astype(np.int8)
    process = np.where(labels == 1, 1, rng.integers(2, 6, events)).astype(np.int8)
    cells = list(itertools.product(["direct", "binned", "vqvae"], ["cls", "mean", "max"], ["true", "false"], ["4", "5"], range(3)))[:n]
    for i, (tok, pool, met, vect, seed) in enumerate(cells):
        rid = c.create_run(exp, run_name=f"{tok}-{pool}-{met}-{vect}-s{seed}", tags={"step": "train", "grid.name": "q",
                                                                                    "mlflow.parentRunId": parent}).info.run_id
        c.log_batch(rid, params=[mlflow.entities.Param(k, str(v)) for k, v in
                                 {"tokenizer": tok, "pooling": pool, "met": met, "vect": vect, "seed": seed, "n_params": 342570,
                                  "n_params_embedding": 63792}.items()],
                    metrics=[mlflow.entities.Metric("val_auc", 0.7 + e / 1000, 0, e) for e in range(1, 51)]
                    + [mlflow.entities.Metric(k, v, 0, 0) for k, v in {"test_auc": 0.8, "test_rej_at_eff50": 10.0, "test_rej_at_eff70": 4.0,
                                                                        "train_seconds": 600.0}.items()])
        f = work / "test_scores.npz"
        np.savez_compressed(f, labels=labels, scores=rng.random(events).astype(np.float32), process=process)
        c.log_artifact(rid, str(f), "eval")
        c.set_terminated(rid, "FINISHED")
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{n} runs logged", flush=True)
    return exp


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=108)
    ap.add_argument("--events", type=int, default=30_207)
    a = ap.parse_args()
    from thesis_mlflow.report import build as summary
    from thesis_mlflow.report import results
    from thesis_mlflow.server import process as server

    work = Path(tempfile.mkdtemp(prefix="report-queries-"))
    srv = server.start(work / "srv", auth=False, workers=4)
    try:
        os.environ.update(MLFLOW_TRACKING_URI=srv.uri, MLFLOW_EXPERIMENT_NAME="queries", THESIS_MLFLOW_CACHE=str(work / "cache"))
        import mlflow

        mlflow.set_tracking_uri(srv.uri)
        t0 = time.perf_counter()
        fill(a.runs, a.events, work)
        print(f"{a.runs} finished runs with {a.events:,}-event test scores logged in {time.perf_counter() - t0:.0f} s")
        threads = results.FETCH_THREADS
        results.FETCH_THREADS = 1
        t = time.perf_counter()
        d = summary.collect("q")
        serial = time.perf_counter() - t
        for f in (work / "cache" / "scores").glob("*.npz"):
            f.unlink()
        results.FETCH_THREADS = threads
        t = time.perf_counter()
        d = summary.collect("q")
        cold = time.perf_counter() - t
        t = time.perf_counter()
        d = summary.collect("q")
        warm = time.perf_counter() - t
        assert len(d.scores) == a.runs
        print(f"report queries for {a.runs} runs: one fetch at a time {serial:.1f} s; {threads} at a time, empty cache {cold:.1f} s "
              f"(x{serial / cold:.1f}); from the cache {warm:.1f} s (x{serial / warm:.1f})")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
