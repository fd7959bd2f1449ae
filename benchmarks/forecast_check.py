"""Does the rehearsal's forecast hold? Rehearse a grid whose full run fits on this machine, forecast
it, run it for real, and print predicted / measured per cell and in total.

The grid: the thesis model (~400k parameters, batch 64) on a generated file, few enough events and
epochs that its full run takes a few minutes on 2 cores, with training (not fixed costs) most of
each cell. Everything through the local backend and a SQLite store of its own in a temporary folder.
Per cell, measured = the cell's ``cost.wall_s`` (its attempt, start to end, as the forecast's
``cell_s`` counts it); in total, the grid's cells one after another (``--jobs 1``). Target: within
+-25% in total and for 90% of the cells.

    .venv/bin/python benchmarks/forecast_check.py [--events 12000] [--epochs 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=12000, help="events in the generated file (80%% train)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="the rehearsal's steps per epoch")
    ap.add_argument("--pooling", nargs="+", default=["cls", "max"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forecast-check-"))
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "MLFLOW_EXPERIMENT_NAME": "forecast-check",
                       "THESIS_MLFLOW_OUTPUTS": str(tmp / "outputs"), "THESIS_MLFLOW_ALLOW_DIRTY": "1"})
    os.chdir(tmp)
    from thesis_mlflow.forecast.rehearse import rehearse
    from thesis_mlflow.grid.driver import run_grid
    from thesis_mlflow.grid.rehearsal import Rehearsal
    from thesis_mlflow.learn import data, synthetic
    from thesis_mlflow.report.results import grid_runs

    raw = tmp / "data.h5"
    data.write_raw(raw, synthetic.generate(synthetic.GeneratorConfig(n_events=args.events, seed=3)))
    doc = {"name": "fc", "data": str(raw), "factors": {"tokenizer": ["direct", "binned"], "pooling": args.pooling, "met": [True], "vect": [4]},
           "scales": {"full": {"seeds": [0], "train": {"epochs": args.epochs, "batch_size": 64, "lr": 1e-4, "warmup_steps": 100}}}}
    gfile = tmp / "fc.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    quiet = lambda _m: None  # noqa: E731

    t0 = time.perf_counter()
    fc = rehearse(str(gfile), "full", "local", Rehearsal(steps=args.steps), echo=quiet).forecast
    t_rehearsal = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = run_grid(str(gfile), "local", "full", 1, False, echo=quiet)
    t_real = time.perf_counter() - t0
    assert run.complete, run.status
    real = {row["name"]: row["cost.wall_s"] for _, row in grid_runs("fc").iterrows()}
    print(f"rehearsal {t_rehearsal:.0f} s, real run {t_real:.0f} s ({len(real)} cells, {args.epochs} epochs, "
          f"{data.split_sizes(raw)['train']} training events, the thesis model at batch 64)")
    print(f"{'cell':<28} {'predicted s':>11} {'measured s':>10} {'ratio':>6}")
    within = 0
    for c in fc.cells:
        ratio = c.cell_s / real[c.cell]
        within += abs(ratio - 1) <= 0.25
        print(f"{c.cell:<28} {c.cell_s:11.1f} {real[c.cell]:10.1f} {ratio:6.2f}")
    total_p, total_m = sum(c.cell_s for c in fc.cells), sum(real.values())
    print(f"{'total (cells one after another)':<28} {total_p:11.1f} {total_m:10.1f} {total_p / total_m:6.2f}")
    print(f"cells within +-25%: {within}/{len(fc.cells)}; total within +-25%: {abs(total_p / total_m - 1) <= 0.25}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
