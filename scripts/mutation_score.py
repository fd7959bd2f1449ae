"""Score of a mutmut run, per module: killed / (killed + survived), from ``mutmut results``.

Mutants no test reaches ("no tests") and those the run could not judge are counted apart;
timeouts count as killed (the mutant made a test hang: the suite noticed)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path


def main(path: str) -> int:
    per: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in Path(path).read_text().splitlines():
        m = re.match(r"\s*([\w.]+)__mutmut_\d+: (.+)$", line.strip())
        if not m:
            continue
        name, verdict = m.group(1), m.group(2).strip()
        module = name.split(".x_")[0].split(".xǁ")[0]
        module = re.sub(r"\.x[_ǁ].*$", "", module)
        per[module][verdict] += 1
        if verdict == "survived":
            survivors.append(line.strip().split(":")[0])
    total = Counter()
    print(f"{'module':<32} {'killed':>7} {'survived':>8} {'no tests':>8} {'score':>6}")
    for module in sorted(per):
        c = per[module]
        total += c
        killed = c["killed"] + c["timeout"]
        judged = killed + c["survived"]
        print(f"{module:<32} {killed:>7} {c['survived']:>8} {c['no tests']:>8} {killed / judged if judged else float('nan'):>6.1%}")
    killed = total["killed"] + total["timeout"]
    judged = killed + total["survived"]
    print(f"{'all':<32} {killed:>7} {total['survived']:>8} {total['no tests']:>8} {killed / judged if judged else float('nan'):>6.1%}")
    print(f"\n{len(survivors)} survivors (mutmut show <name> for the diff):")
    for s in survivors:
        print(f"  {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "mutants/results.txt"))
