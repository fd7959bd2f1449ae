"""A pack of cells end to end through the real driver, as a Condor job runs it, on a GPU node.

Makes a grid of ``--cells`` cells (the thesis model, batch 64) on the full built-in dataset
(241,658 training events), creates its parent and child runs in a tracking store, then runs
``python -m steps.grid pack GRID --runs ...`` exactly as a DAG node does (one process, the
cells side by side on CUDA streams). Afterwards, from the runs themselves:

- wall time per cell from the pack process's start to the cell's run ending: imports, data,
  compile, capture, training, evaluation and logging included (the cells start together);
- aggregate events/s as all cells' training events over one common window (the pack's start
  to the last cell's end), not a sum of per-cell rates;
- the full thesis grid (108 cells x 50 epochs) estimated from these figures: packs of
  ``--cells`` after one another, each paying the measured set-up once.

Needs MLflow (a SQLite store; no server). Prints one line per figure.

    python benchmarks/gpu_pack_e2e.py [--configs 2] [--seeds 3] [--stack-seeds auto] [--epochs 2] [--events 0]   # 0 = the full file
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRID_CELLS, GRID_EPOCHS, TRAIN_EVENTS = 108, 50, 241_658  # the thesis grid


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=2, help="configurations in the pack (whole: all their seeds)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stack-seeds", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--events", type=int, default=0, help="train events per cell (0: all 241,658)")
    ap.add_argument("--data", default="data/4tops_synthetic.h5")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny model (to check this script on a CPU)")
    a = ap.parse_args()

    import mlflow

    from thesis_mlflow.grid.gridfile import load_grid
    from thesis_mlflow.grid.runs import ensure_children, find_or_create_parent
    from thesis_mlflow.pipeline import upstream

    work = Path(tempfile.mkdtemp(prefix="pack-e2e-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "pack-e2e", "THESIS_MLFLOW_OUTPUTS": str(work)})
    mlflow.set_tracking_uri(uri)
    # before anything else names it (ensure_raw's run would create it with artifacts in the checkout)
    exp = mlflow.MlflowClient().create_experiment("pack-e2e", artifact_location=(work / "artifacts").as_uri())
    raw = upstream.ensure_raw(a.data)
    pools, mets, vects = ["cls", "mean", "max"], [True, False], [4, 5]
    train = {"epochs": a.epochs, "batch_size": 64, "device": a.device, "max_eval_events": 0, "max_train_events": a.events}
    if a.small:
        train.update({"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_eval_events": 2000})
    doc = {"name": "e2e", "data": str(raw), "factors": {"tokenizer": ["direct", "binned"], "pooling": pools, "met": mets, "vect": vects},
           "scales": {"bench": {"seeds": list(range(a.seeds)), "train": train}}, "condor": {"cells_per_job": a.configs * a.seeds}}
    gfile = work / "e2e.yaml"
    gfile.write_text(yaml.safe_dump(doc))
    g = load_grid(gfile, "bench", base_dir=ROOT)
    children = ensure_children(g, find_or_create_parent(g, exp), exp)
    from thesis_mlflow.grid.driver import by_configuration

    configs = list(by_configuration([(c, r) for c, r in children.items()]).values())[: a.configs]
    pack = [cr for seeds in configs for cr in seeds]  # whole configurations, as the grid packs them
    a.cells = len(pack)
    runs = ",".join(f"{c.name}={r.info.run_id}" for c, r in pack)
    from thesis_mlflow.grid.driver import prepare

    t = time.perf_counter()
    prepare(g)  # the DAG's prepare node: binning once (not part of the pack's figures)
    print(f"prepare (binning): {time.perf_counter() - t:.0f} s")
    cmd = [sys.executable, "-m", "steps.grid", "pack", str(gfile), "--scale", "bench", "--runs", runs, "--stack-seeds", a.stack_seeds]
    t0 = time.time()
    # the pack's log streams through, stamped with seconds since its start: when a time limit
    # stops this benchmark, what the pack had reached (builds, epochs) is still on record
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "MLFLOW_EXPERIMENT_ID": exp, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(f"[{time.time() - t0:6.1f} s] {line.rstrip()}", flush=True)
    code = proc.wait()
    wall = time.time() - t0
    if code != 0:
        print(f"pack exited {code}")
        return 1
    res_stdout = "".join(lines)
    c = mlflow.MlflowClient()
    done = [c.get_run(r.info.run_id) for _, r in pack]
    ends = [r.info.end_time / 1e3 for r in done]
    n_events = sum(int(r.data.params["n_train_events"]) * a.epochs for r in done)
    window = max(ends) - t0
    print(f"device {a.device}; {len(done)} cells x {a.epochs} epochs x {int(done[0].data.params['n_train_events']):,} events; "
          f"step modes {sorted({r.data.tags.get('step_mode.used') for r in done})}")
    for r in done:
        m = r.data.metrics
        print(f"  {r.info.run_name:<26} done after {r.info.end_time / 1e3 - t0:6.0f} s  train {m.get('train_seconds', 0):6.0f} s  "
              f"last epoch {m.get('events_per_s', 0):8,.0f} ev/s  test AUC {m.get('test_auc', float('nan')):.4f}")
    agg = n_events / window

    print(f"pack process wall {wall:.0f} s; common window {window:.0f} s; aggregate {agg:,.0f} events/s over it")
    n_packs = math.ceil(GRID_CELLS / a.cells)
    stacked = "seeds of a configuration stacked" in res_stdout
    by_cfg: dict[str, list] = {}
    for r in done:
        by_cfg.setdefault(r.info.run_name.rsplit("-s", 1)[0], []).append(r.data.metrics.get("events_per_s", 0))
    # a configuration's rate: a stacked epoch trains all its seeds at once (each seed logs the stack's epoch time)
    rates = [len(v) * max(v) if stacked else (sum(v) if "side by side" in res_stdout else sum(v) / len(v)) for v in by_cfg.values()]
    steady = sum(rates) if "side by side" in res_stdout else sum(rates) / len(rates)
    setup = window - n_events / max(steady, 1)  # the window not spent in steady training: imports, data, compile, evaluation
    grid_s = n_packs * (max(setup, 0) + a.cells * GRID_EPOCHS * TRAIN_EVENTS / max(steady, 1))
    print(f"SUMMARY {'stacked' if stacked else 'unstacked'}: aggregate {agg:,.0f} events/s over the common window, "
          f"{window / len(done):.0f} s wall per cell with compile and evaluation, full grid ~{grid_s / 3600:.1f} h")
    print(f"full grid estimate: {n_packs} packs of {a.cells} x (set-up {max(setup, 0):.0f} s + 50 epochs at {steady:,.0f} ev/s) = "
          f"{grid_s / 3600:.1f} h on one GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
