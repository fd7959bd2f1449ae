"""Which way of packing more training into one GPU pays: more CUDA streams, or seeds stacked
into one model? A steady-state probe of captured training steps, no MLflow, no product code
paths beyond the model.

Every configuration trains the thesis model (binned tokens, d_model 72, 8 layers, batch 64 per
model, bf16 autocast, fused capturable AdamW, grad clip per model) with one compiled step
captured as a CUDA graph per stream, and replays the graphs round-robin for a fixed number of
steps; events/s = models x 64 x steps / wall, after the builds (compile and capture are timed
apart). Configurations:

- ``K streams x 1 model``: what a pack does today (cells side by side, one stream each);
- ``K streams x S stacked``: S models of one architecture (the seeds of a cell) stacked with
  ``torch.func.stack_module_state`` and run by one ``vmap``-ed forward, so every kernel works
  on S batches at once (the issue's stretch goal: batched seeds).

One compiled function serves all streams of a configuration (the weights are its inputs), so
a configuration compiles once. Printed: one line per configuration, then the best.

    python benchmarks/gpu_stacked_probe.py [--configs 1x1,8x1,16x1,1x3,8x3] [--steps 300]
    python benchmarks/gpu_stacked_probe.py --device cpu --small --steps 3   # checks the script
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thesis_mlflow.learn import features, synthetic  # noqa: E402
from thesis_mlflow.learn.binning import Binning  # noqa: E402
from thesis_mlflow.learn.model import Classifier, ModelConfig  # noqa: E402

B, CLIP, LR = 64, 1.0, 1e-4


class Stepper:
    """S models of one architecture trained as one: (S, ...) weights, (S, B) batches, one graph."""

    def __init__(self, s: int, tr: features.Tensors, fwd, base: torch.nn.Module, device: torch.device, dropout: float, seed: int):
        from torch.func import stack_module_state

        self.s, self.tr, self.device = s, tr, device
        torch.manual_seed(seed)
        models = [Classifier(replace_dropout(base.cfg, dropout)).to(device) for _ in range(s)]
        self.params, self.buffers = stack_module_state(models)  # name -> (S, ...)
        self.fwd = fwd
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=torch.tensor(LR, device=device) if device.type == "cuda" else LR,
                                     fused=device.type == "cuda" or None, capturable=device.type == "cuda")
        n = len(tr)
        self.perm = torch.stack([torch.randperm(n, device=device) for _ in range(s)])  # (S, N) each model its own order
        self.offsets = torch.arange(B, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.n = n
        self.graph = None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def step(self) -> None:
        at = (self.pos + self.offsets) % self.n  # (B,)
        idx = self.perm[:, at]  # (S, B)
        batch = {k: v[idx] for k, v in self.tr.inputs.items()}  # each (S, B, ...)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.fwd(self.params, self.buffers, batch)  # (S, B, C)
        y = self.tr.y[idx]  # (S, B)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(self.s, B).mean(1).sum()
        loss.backward()  # the S losses share no weight: the sum's gradient is each model's own
        grads = [p.grad for p in self.params.values()]
        norms = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()  # (S,) one norm per model
        coef = (CLIP / (norms + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [coef.view(-1, *[1] * (g.dim() - 1)) for g in grads])
        self.opt.step()
        self.pos += B

    def build(self) -> None:
        if self.device.type != "cuda":
            return
        s = self.stream
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self.step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=s):
            self.step()

    def replay(self) -> None:
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)
            self.step()
        else:
            with torch.cuda.stream(self.stream):  # a graph replays on the current stream: its own, so streams overlap
                self.graph.replay()


def replace_dropout(cfg: ModelConfig, dropout: float) -> ModelConfig:
    from dataclasses import replace

    return replace(cfg, dropout=dropout)


def make_forward(base: torch.nn.Module, s: int, compile_it: bool):
    """One function (weights as inputs) for every stream of a configuration: it compiles once."""
    from torch.func import functional_call, vmap

    def one(p, b, batch):
        return functional_call(base, (p, b), (batch,))

    if s == 1:  # no vmap: the plain model, as a pack runs it today
        def f(p, b, batch):
            return one({k: v[0] for k, v in p.items()}, {k: v[0] for k, v in b.items()}, {k: v[0] for k, v in batch.items()})[None]
    else:
        f = vmap(one, in_dims=(0, 0, 0), randomness="different")
    return torch.compile(f, dynamic=False) if compile_it else f


_FORWARDS: dict = {}


def measure(k: int, s: int, tr, device, steps: int, small: bool, compile_it: bool, dropout: float) -> dict:
    if (s, dropout) not in _FORWARDS:  # one compiled function per stack size: K streams reuse it
        size = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32} if small else {}
        base = Classifier(ModelConfig(tokenizer="binned", pooling="cls", dropout=dropout, **size)).to("meta")
        base.train()
        _FORWARDS[s, dropout] = base, make_forward(base, s, compile_it)
    base, fwd = _FORWARDS[s, dropout]
    t0 = time.perf_counter()
    steppers = [Stepper(s, tr, fwd, base, device, dropout, seed=i) for i in range(k)]
    for st in steppers:
        st.build()
    if device.type == "cuda":
        torch.cuda.synchronize()
    build = time.perf_counter() - t0
    for _ in range(5):  # settle
        for st in steppers:
            st.replay()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        for st in steppers:
            st.replay()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    ok = all(torch.isfinite(p).all().item() for st in steppers for p in st.params.values())
    return {"k": k, "s": s, "build_s": build, "events_per_s": k * s * B * steps / wall, "finite": ok, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="1x1,8x1,16x1,1x3,8x3", help="KxS: K streams of S stacked models")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny model, eager (to check this script on a CPU)")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    print(torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch", torch.__version__, flush=True)
    splits = synthetic.generate(synthetic.GeneratorConfig(n_events=a.events, seed=0))
    b = Binning().fit(splits["train"])
    tr = features.make_tensors(features.token_inputs(b.transform(splits["train"]), True), splits["train"].y, "4t_vs_bg").to(device)
    best = None
    for conf in a.configs.split(","):
        k, s = (int(x) for x in conf.split("x"))
        for dropout in (0.1, 0.0):  # the thesis model has dropout 0.1; 0 only if vmap refuses random ops
            try:
                r = measure(k, s, tr, device, a.steps, a.small, compile_it=device.type == "cuda", dropout=dropout)
            except Exception as e:  # noqa: BLE001 - a probe: report and go on
                print(f"{k:>3} streams x {s} stacked (dropout {dropout}): FAILED {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                      flush=True)
                continue
            print(f"{k:>3} streams x {s} stacked (dropout {dropout}): {r['events_per_s']:>10,.0f} events/s steady; build {r['build_s']:.0f} s; "
                  f"weights finite {r['finite']}", flush=True)
            if best is None or r["events_per_s"] > best["events_per_s"]:
                best = {**r, "dropout": dropout}
            break
    if best:
        print(f"best: {best['k']} streams x {best['s']} stacked, {best['events_per_s']:,.0f} events/s "
              f"(full thesis grid of 108 x 50 x 241,658 at that rate: {108 * 50 * 241_658 / best['events_per_s'] / 3600:.1f} h of steady training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
