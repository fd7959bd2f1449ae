"""Binning throughput on the default-size sample (target: 302k events in <= 3 s on 2 cores).

    .venv/bin/python benchmarks/binning_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from thesis_mlflow.learn import synthetic  # noqa: E402
from thesis_mlflow.learn.binning import Binning  # noqa: E402


def main() -> None:
    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=302072, seed=0))
    n = sum(len(s) for s in sp.values())
    for vect in (4, 5):
        t0 = time.perf_counter()
        b = Binning(vect=vect).fit(sp["train"])
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in sp.values():
            b.transform(s)
        t_tr = time.perf_counter() - t0
        total = t_fit + t_tr
        print(f"vect={vect}: fit {t_fit:.2f} s + transform {t_tr:.2f} s = {total:.2f} s for {n} events "
              f"({n / total:,.0f} events/s; target <= 3 s: {'OK' if total <= 3 else 'SLOW'})")


if __name__ == "__main__":
    main()
