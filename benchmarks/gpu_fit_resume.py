"""CUDA check of checkpoints without MLflow (runs where only torch is installed, e.g. a bare GPU node).

A thesis-size model trained 2 epochs in the captured (compiled) step, against the same run
stopped after epoch 1 and resumed from its checkpoint: the checkpoint is loaded with
``weights_only=True`` (it names its random stream, no generator state), the learning rate continues on the schedule,
and the weights agree (bf16 autocast; the run's dropout generator is reseeded per epoch, so a resumed graph
replays it). Also the per-background test metrics and a multiclass evaluation on the device.
Prints one line per check and exits non-zero on a failure.

    python benchmarks/gpu_fit_resume.py [--events 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thesis_mlflow.learn import features, metrics, safeload, synthetic  # noqa: E402
from thesis_mlflow.learn.binning import Binning  # noqa: E402
from thesis_mlflow.learn.model import Classifier, ModelConfig  # noqa: E402
from thesis_mlflow.learn.training import TrainConfig, evaluate, fit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--mode", default="compiled")
    ap.add_argument("--device", default="cuda", help="cpu (with --mode eager) checks the script itself")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = torch.device(a.device)
    print(torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "torch", torch.__version__)
    splits = synthetic.generate(synthetic.GeneratorConfig(n_events=a.events, seed=3))
    b = Binning().fit(splits["train"])
    tens = {s: features.make_tensors(features.token_inputs(b.transform(splits[s]), True), splits[s].y, t)
            for s, t in (("train", "4t_vs_bg"), ("val", "4t_vs_bg"), ("test", "4t_vs_bg"))}
    cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-4, warmup_steps=50, device=a.device, step_mode=a.mode)
    work = Path(tempfile.mkdtemp())
    ok = True

    def model():
        torch.manual_seed(0)
        return Classifier(ModelConfig(tokenizer="binned", pooling="max"))

    t0 = time.perf_counter()
    ref = model()
    h_ref = fit(ref, tens["train"], tens["val"], cfg, work / "ref.pt", progress=False)
    print(f"uninterrupted 2 epochs: {time.perf_counter() - t0:.1f} s, val_auc {[round(h['metrics']['val_auc'], 4) for h in h_ref]}")
    one = model()  # the same run, stopped right after epoch 1 was checkpointed (an eviction)

    def stop_after_first(epoch, _metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        fit(one, tens["train"], tens["val"], cfg, work / "one.pt", progress=False, on_epoch=stop_after_first)
    except KeyboardInterrupt:
        pass
    again = model()  # the same uninterrupted run once more: how far apart do identical runs end (atomics in bf16 kernels)?
    fit(again, tens["train"], tens["val"], cfg, work / "again.pt", progress=False)
    noise = max((p - q).abs().max().item() for p, q in zip(ref.parameters(), again.parameters(), strict=True))
    print(f"two uninterrupted runs: max |dw| {noise:.2e} (the floor of any comparison)")
    ck = safeload.load(work / "one.pt", map_location=dev)
    print(f"checkpoint after epoch {ck['epoch']} loads with weights_only=True: random stream {ck['stream']['id']} (scheme {ck['stream']['scheme']})")
    resumed = model()
    h_res = fit(resumed, tens["train"], tens["val"], cfg, work / "res.pt", resume_from=work / "one.pt", progress=False)
    diff = max((p - q).abs().max().item() for p, q in zip(ref.parameters(), resumed.parameters(), strict=True))
    lr_ok = abs(h_res[-1]["metrics"]["lr"] - h_ref[-1]["metrics"]["lr"]) < 1e-12
    auc_d = abs(h_res[-1]["metrics"]["val_auc"] - h_ref[-1]["metrics"]["val_auc"])
    good = diff <= 3 * noise + 1e-4 and lr_ok and auc_d < 5e-3  # as exact as the kernels are deterministic
    ok &= good
    print(f"resumed vs uninterrupted: max |dw| {diff:.2e}, lr equal {lr_ok}, |d val_auc| {auc_d:.2e} -> {'OK' if good else 'FAIL'}")
    ev = evaluate(ref, tens["test"], dev, 4096)
    m = metrics.test_metrics(ev["is_signal"], ev["scores"], tens["test"].labels)
    good = all(k in m for k in ("test_auc_vs_ttH", "test_rej50_vs_ttZ")) and 0.5 < m["test_auc"] < 1
    ok &= good
    print(f"test metrics on the device: auc {m['test_auc']:.4f}, vs ttZ {m.get('test_auc_vs_ttZ', float('nan')):.4f} -> {'OK' if good else 'FAIL'}")
    mc = {s: features.make_tensors(features.token_inputs(b.transform(splits[s]), True), splits[s].y, "multiclass") for s in ("train", "test")}
    torch.manual_seed(0)
    cls5 = Classifier(ModelConfig(tokenizer="binned", pooling="max", n_classes=5)).to(dev)
    ev5 = evaluate(cls5, mc["test"], dev, 4096)
    m5 = metrics.test_metrics(ev5["is_signal"], ev5["scores"], mc["test"].labels, ev5.get("probs"))
    good = ev5["probs"].shape == (len(mc["test"]), 5) and "test_auc_ovr_ttW" in m5
    ok &= good
    print(f"multiclass evaluation on the device: probs {ev5['probs'].shape}, one-vs-rest AUCs {sorted(k for k in m5 if 'ovr' in k)} -> {'OK' if good else 'FAIL'}")
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
