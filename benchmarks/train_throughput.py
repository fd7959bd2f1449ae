"""Training throughput: this project's full epoch vs a plain nn.TransformerEncoder loop.

Measured in one run on the same data: events/s of the project's training epoch (data
slicing, model, optimizer, scheduler, clipping, evaluation excluded) at batch 64, 256 and
1024, and of a reference loop (nn.TransformerEncoder, norm_first=True, same width, depth,
heads, same batch and optimizer). Target: ratio >= 0.9 at every batch size.

    .venv/bin/python benchmarks/train_throughput.py [--events 20000] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import Reference  # noqa: E402

from thesis_mlflow.learn import features, synthetic  # noqa: E402
from thesis_mlflow.learn.binning import Binning  # noqa: E402
from thesis_mlflow.learn.model import Classifier, ModelConfig  # noqa: E402
from thesis_mlflow.learn.training import TrainConfig, fit, resolve_device  # noqa: E402


def reference_epoch(tokens, y, bs, device) -> float:
    torch.manual_seed(0)
    model = Reference(886).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    tokens, y = tokens.to(device), y.to(device)
    perm = torch.randperm(len(y), device=device)
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(y), bs):
        idx = perm[i : i + bs]
        with ac:
            loss = F.cross_entropy(model(tokens[idx]).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    _sync(device)
    return len(y) / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    device = resolve_device(a.device)
    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=int(a.events / 0.8) + 10, seed=0))
    b = Binning().fit(sp["train"])
    tr = features.make_tensors(features.token_inputs(b.transform(sp["train"]), True), sp["train"].y, "4t_vs_bg", a.events)
    va = features.make_tensors(features.token_inputs(b.transform(sp["val"]), True), sp["val"].y, "4t_vs_bg", 256)
    print(f"device {device}, {len(tr)} training events, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'batch':>6} {'project ev/s':>13} {'reference ev/s':>15} {'ratio':>6}")
    for bs in (int(x) for x in a.batches.split(",")):
        refs, mine = [], []
        for _ in range(a.repeats):  # interleaved, median: a shared 2-core machine is noisy
            refs.append(reference_epoch(tr.inputs["tokens"], tr.y, bs, device))
            torch.manual_seed(0)
            model = Classifier(ModelConfig(tokenizer="binned", pooling="mean"))
            hist = fit(model, tr, va, TrainConfig(epochs=1, batch_size=bs, device=str(device.type)), Path(tempfile.mkdtemp()) / "c.pt",
                       progress=False)
            mine.append(hist[-1]["metrics"]["events_per_s"])
        ref, ours = statistics.median(refs), statistics.median(mine)
        print(f"{bs:>6} {ours:>13,.0f} {ref:>15,.0f} {ours / ref:>6.2f}{'' if ours / ref >= 0.9 else '  < 0.9'}")


if __name__ == "__main__":
    main()
