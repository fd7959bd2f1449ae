"""Codebook health of the default VQ-VAE on the built-in dataset.

Target: >= 90% of the 512 codes used and perplexity >= 256 at the end of training.

    .venv/bin/python benchmarks/vqvae_codebook.py [--epochs 10] [--vect 4]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from thesis_mlflow.learn import features, synthetic  # noqa: E402
from thesis_mlflow.learn.vqvae import ObjectVQVAE, VQConfig, VQTrainConfig, train_vqvae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--vect", type=int, default=4)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tr = synthetic.generate(synthetic.GeneratorConfig())["train"]
    x = features.direct_inputs(tr, a.vect, False, features.Scaler.fit(tr))
    v = x["valid"]
    cfg = VQConfig(vect=a.vect)
    t0 = time.perf_counter()
    h = train_vqvae(ObjectVQVAE(cfg), x["cont"][v], x["ids"][v], VQTrainConfig(epochs=a.epochs), ["e", "pt", "eta", "phi"][5 - a.vect:])
    f = h[-1]
    ok = f["codebook_usage"] >= 0.9 and f["perplexity"] >= cfg.codebook_size / 2
    print(f"{int(v.sum())} objects, {a.epochs} epochs in {time.perf_counter() - t0:.0f} s: codebook usage {f['codebook_usage']:.1%}, "
          f"perplexity {f['perplexity']:.1f} of {cfg.codebook_size} ({'OK' if ok else 'BELOW TARGET'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
