"""Several cells side by side in one process on one GPU, as a pack trains them (no MPS).

Each cell is the thesis model (binned tokens, d_model 72, 8 layers) trained by the production
``fit()`` with the compiled, captured step, in its own thread on its own CUDA stream, compile
and capture one cell at a time while no other step runs (``train._Gate``) - what ``driver.train_here`` does,
without MLflow (so it runs where only torch is installed). Reports, over one common window
from the first start to the last end (compile, capture and per-epoch evaluation included):
the aggregate events/s of K cells against one cell alone, and the full-grid estimate.

    python benchmarks/gpu_side_by_side.py --events 302072 --epochs 1 --k 1,8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thesis_mlflow.learn import features, synthetic  # noqa: E402
from thesis_mlflow.learn.binning import Binning  # noqa: E402
from thesis_mlflow.learn.model import Classifier, ModelConfig  # noqa: E402
from thesis_mlflow.learn.training import TrainConfig, fit  # noqa: E402

GRID_CELLS, GRID_EPOCHS, TRAIN_EVENTS = 108, 50, 241_658  # the thesis grid


def run(k: int, tr, va, epochs: int, mode: str, device: str = "cuda", small: bool = False) -> dict:
    work = Path(tempfile.mkdtemp())
    stamps = {}
    errors = []

    def cell(i: int) -> None:
        try:
            with (torch.cuda.stream(torch.cuda.Stream()) if device == "cuda" else _nothing()):
                torch.manual_seed(i)
                size = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32} if small else {}
                model = Classifier(ModelConfig(tokenizer="binned", pooling=("cls", "mean", "max")[i % 3], **size))
                cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-4, warmup_steps=1000, seed=i, device=device, step_mode=mode)
                t0 = time.perf_counter()
                built = []
                fit(model, tr, va, cfg, work / f"c{i}.pt", progress=False, on_step_mode=lambda m, f: built.append((m, f, time.perf_counter())))
                stamps[i] = (t0, built[0][2], time.perf_counter(), built[0][0])
        except Exception as e:  # noqa: BLE001
            errors.append(f"cell {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=cell, args=(i,)) for i in range(k)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    if errors:
        return {"k": k, "errors": errors}
    built_last = max(s[1] for s in stamps.values())
    n = k * epochs * len(tr)
    return {"k": k, "wall_s": wall, "events_per_s": n / wall, "after_build_events_per_s": n / (t_start + wall - built_last),
            "build_s": built_last - t_start, "modes": sorted({s[3] for s in stamps.values()})}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=302_072)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--k", default="1,8")
    ap.add_argument("--mode", default="compiled")
    ap.add_argument("--device", default="cuda", help="cpu (with --mode eager) checks the script itself")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    print(torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "torch", torch.__version__)
    t0 = time.perf_counter()
    splits = synthetic.generate(synthetic.GeneratorConfig(n_events=a.events, seed=0))
    b = Binning().fit(splits["train"])
    tr, va = (features.make_tensors(features.token_inputs(b.transform(splits[s]), True), splits[s].y, "4t_vs_bg") for s in ("train", "val"))
    print(f"data: {len(tr):,} training events, {len(va):,} validation ({time.perf_counter() - t0:.0f} s)")
    base = None
    ok = True
    for k in (int(x) for x in a.k.split(",")):
        r = run(k, tr, va, a.epochs, a.mode, a.device, small=a.device != "cuda")
        if "errors" in r:
            print(f"K={k}: FAILED {r['errors']}")
            ok = False
            continue
        base = base or r
        per_cell_epoch = r["wall_s"] / a.epochs  # every cell trains one epoch in this time, compile included
        grid_h = GRID_CELLS / k * GRID_EPOCHS * (TRAIN_EVENTS / len(tr)) * (r["wall_s"] - r["build_s"]) / a.epochs / 3600 \
            + GRID_CELLS / k * r["build_s"] / 3600
        print(f"K={k} side by side ({', '.join(r['modes'])}): {r['events_per_s']:,.0f} events/s over the common window "
              f"(compile+capture+eval included; {r['wall_s']:.1f} s, builds done after {r['build_s']:.1f} s), "
              f"{r['after_build_events_per_s']:,.0f} events/s after the last build; x{r['events_per_s'] / base['events_per_s']:.2f} "
              f"of one cell; full grid ({GRID_CELLS} cells x {GRID_EPOCHS} epochs x {TRAIN_EVENTS:,}) in packs of {k}: ~{grid_h:.1f} h "
              f"({per_cell_epoch:.0f} s per epoch round)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
