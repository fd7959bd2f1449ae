"""How long ``report`` takes, and how much memory, on a thesis-sized grid beside a demo-sized one.

Each grid is logged, finished, into a throwaway SQLite store of its own (no server: the
report's own work is measured, not the network): every run with its params, its epochs of
val_auc and a real ``eval/test_scores.npz`` (labels, scores, process labels), under a parent
run as ``grid run`` leaves it. Then ``thesis-mlflow report`` runs as a user runs it, as its own
process; its wall time and peak memory (the process's max RSS) are printed, with the first
lines of its answer.

- thesis: 36 cells x 3 seeds, 48,000 test events per run, 50 epochs of curves;
- demo: 36 cells x 1 seed, 3,000 test events, 2 epochs (the shipped grid's demo scale).

The scores are simulated with a known answer: binned as good as direct (the same separation),
vqvae worse, each run with its own seed noise; the answer should say so.

    python benchmarks/report_size.py [--thesis-events 48000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEPARATION = {"direct": 0.62, "binned": 0.62, "vqvae": 0.58}  # latent separation: binned = direct, vqvae below


def fill(uri: str, grid: str, seeds: int, events: int, epochs: int, work: Path) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    c = mlflow.MlflowClient(uri)
    exp = c.create_experiment("size", artifact_location=(work / "artifacts").as_uri())
    parent = c.create_run(exp, run_name=f"grid-{grid}", tags={"step": "grid", "grid.name": grid}).info.run_id
    rng = np.random.default_rng(0)
    labels = (rng.random(events) < 0.5).astype(np.int8)
    process = np.where(labels == 1, 1, rng.integers(2, 6, events)).astype(np.int8)
    shared = rng.normal(size=events)
    cells = list(itertools.product(["direct", "binned", "vqvae"], ["cls", "mean", "max"], ["true", "false"], ["4", "5"], range(seeds)))
    t0 = time.perf_counter()
    for i, (tok, pool, met, vect, seed) in enumerate(cells):
        rid = c.create_run(exp, run_name=f"{tok}-{pool}-{'met' if met == 'true' else 'nomet'}-{vect}v-s{seed}",
                           tags={"step": "train", "grid.name": grid, "mlflow.parentRunId": parent}).info.run_id
        k = SEPARATION[tok] + 0.006 * rng.normal()  # seed noise: ~0.0025 in AUC
        z = k * (2 * labels - 1) + 0.95 * shared + 0.3 * rng.normal(size=events)
        scores = (1 / (1 + np.exp(-z))).astype(np.float32)
        c.log_batch(rid, params=[Param(p, str(v)) for p, v in {"tokenizer": tok, "pooling": pool, "met": met, "vect": vect, "seed": seed,
                                                                  "n_params": 342570, "n_params_embedding": 63792}.items()],
                    metrics=[Metric("val_auc", 0.80 - 0.1 * np.exp(-e / 8) + 0.002 * rng.normal(), 0, e) for e in range(1, epochs + 1)]
                    + [Metric(m, v, 0, 0) for m, v in {"test_auc": 0.8, "test_rej_at_eff50": 10.0, "test_rej_at_eff70": 4.0,
                                                       "train_seconds": 600.0, "train_auc": 0.81}.items()])
        f = work / "test_scores.npz"
        np.savez_compressed(f, labels=labels, scores=scores, process=process)
        c.log_artifact(rid, str(f), "eval")
        c.set_terminated(rid, "FINISHED")
        if (i + 1) % 27 == 0:
            print(f"  {grid}: {i + 1}/{len(cells)} runs logged ({time.perf_counter() - t0:.0f} s)", flush=True)


def report(uri: str, grid: str, work: Path) -> tuple[float, float, list[str]]:
    """Wall seconds, peak RSS in GB and the answer's first lines of one ``report`` process."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "size", "THESIS_MLFLOW_CACHE": str(work / "cache")}
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "steps.cli", "report", "--grid", grid, "--out-dir", str(work / "out")], cwd=work, env=env,
                             stdout=subprocess.PIPE, stderr=err, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"report of {grid} failed:\n{out[-2000:]}\n{err.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2, [ln.strip() for ln in out.splitlines() if ln.startswith("  ")][:3]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--thesis-events", type=int, default=48_000)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for name, seeds, events, epochs in (("demo", 1, 3_000, 2), ("thesis", a.seeds, a.thesis_events, 50)):
        work = Path(tempfile.mkdtemp(prefix=f"report-size-{name}-"))
        uri = f"sqlite:///{work / 'mlflow.db'}"
        t = time.perf_counter()
        fill(uri, name, seeds, events, epochs, work)
        print(f"{name}: {36 * seeds} finished runs, {events:,} test events each, {epochs} epochs, logged in {time.perf_counter() - t:.0f} s",
              flush=True)
        wall, rss, answer = report(uri, name, work)
        rows.append((name, 36 * seeds, events, epochs, wall, rss))
        print(f"{name}: report {wall:.1f} s, peak memory {rss:.2f} GB", flush=True)
        for line in answer:
            print(f"    {line[:200]}")
    print("\n| grid | runs | test events | epochs | report s | peak GB |\n|---|---|---|---|---|---|")
    for name, runs, events, epochs, wall, rss in rows:
        print(f"| {name} | {runs} | {events:,} | {epochs} | {wall:.1f} | {rss:.2f} |")
    print(f"thesis / demo time: x{rows[1][4] / rows[0][4]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
