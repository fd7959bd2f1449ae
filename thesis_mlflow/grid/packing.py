"""A node's resources for the cells packed on it: the cores a job may use and how they are shared
out as thread budgets, the GPUs it sees (no CUDA context made), and the compile cache the jobs of a
grid share. Sharing one GPU between processes is ``mps``; running the processes, ``processes``;
signals, ``signals``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from thesis_mlflow.paths import outputs
from thesis_mlflow.permissions import secure_dir


def cpu_budget() -> int:
    """Cores this process may use: a batch slot's (affinity, Condor's OMP_NUM_THREADS) or the machine's."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    slot = os.environ.get("OMP_NUM_THREADS", "")
    return min(n, int(slot)) if slot.isdigit() and int(slot) > 0 else n


def thread_env(parallel: int) -> dict:
    """Thread limits for one of ``parallel`` processes, so together they do not oversubscribe the cores."""
    return thread_limits(max(1, cpu_budget() // max(1, parallel)))


def thread_limits(n: int) -> dict:
    """The variables that hold a process's compute threads to ``n`` (OpenMP, MKL, OpenBLAS; Inductor
    would start up to 32 compile workers in each packed process)."""
    t = str(max(1, int(n)))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "TORCHINDUCTOR_COMPILE_THREADS": t}


def compile_cache_env(root: Path | None = None) -> dict:
    """Inductor's persistent caches in one folder of the project (shared by the jobs of a grid on
    a shared filesystem): a configuration compiled by one pack is read back by the next (~5 s
    instead of ~48 s, measured on an H100). The folder is ours alone: a cached kernel is code
    that every later job would run."""
    d = secure_dir(Path(root) if root is not None else outputs() / "outputs" / "inductor-cache", "Inductor cache folder")
    return {"TORCHINDUCTOR_CACHE_DIR": str(d), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def gpu_count() -> int:
    """GPUs visible to this node (nvidia-smi; no CUDA context is created here)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n if out.returncode == 0 else 0
