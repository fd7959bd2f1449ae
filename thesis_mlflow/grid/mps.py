"""Several cells' processes on one GPU under a private CUDA MPS daemon.

Measured on one H200 (benchmarks/gpu_throughput.py, README): processes sharing a GPU the
default way are time-sliced, so with the captured training step 4-16 processes give the same
aggregate as one (~40k events/s at batch 64); under CUDA MPS their kernels run concurrently
and 8 processes give ~95k events/s. So a pack of cells run as processes gets an MPS control
daemon of its own (per-job pipe and log directories, no root needed) when the node has one to
start, and falls back to plain sharing when it cannot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from thesis_mlflow.errors import BadSetting, Unavailable
from thesis_mlflow.grid.packing import gpu_count

log = logging.getLogger(__name__)
MPS_MODES = ("auto", "on", "off")


MPS_PROBE = [sys.executable, "-c", "import torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize(); assert x.item() == 1"]


@contextmanager
def shared_gpu(mode: str = "auto", parallel: int = 1) -> Iterator[dict]:
    """Environment for processes that share this node's GPU: with ``mode`` auto or on, and more
    than one process, a private MPS control daemon is started for them and stopped afterwards.

    Yields the variables to add to each process's environment ({} without MPS). ``on`` fails
    when MPS cannot be started; ``auto`` logs why and shares the GPU the plain way.
    """
    if mode not in MPS_MODES:
        raise BadSetting(f"mps must be one of {', '.join(MPS_MODES)}; got {mode!r}")
    why = None
    if mode == "off" or parallel < 2:
        why = "not asked for" if mode == "off" else "one process"
    elif os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        why = "an MPS daemon is already set up for this job"
    elif not shutil.which("nvidia-cuda-mps-control"):
        why = "nvidia-cuda-mps-control is not on the PATH"
    elif gpu_count() == 0:
        why = "no GPU visible"
    if why is not None:
        if mode == "on" and why not in ("one process", "an MPS daemon is already set up for this job"):
            raise Unavailable(f"mps=on, but MPS cannot be used here: {why}")
        if why in ("not asked for", "one process") or (why == "nvidia-cuda-mps-control is not on the PATH" and not shutil.which("nvidia-smi")):
            log.debug("no private MPS daemon (%s)", why)  # nothing to say about hardware this machine does not have
        else:
            log.info("GPU shared without a private MPS daemon (%s)", why)
        yield {}
        return
    root = Path(tempfile.mkdtemp(prefix="thesis-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
    for d in env.values():
        Path(d).mkdir()
    full = {**os.environ, **env}
    msg = None
    try:
        started = subprocess.run(["nvidia-cuda-mps-control", "-d"], env=full, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        started = subprocess.CompletedProcess([], 1, "", str(e))
    if started.returncode != 0:
        msg = f"could not start an MPS daemon: {(started.stderr or started.stdout).strip()[:200]}"
    else:
        # the control daemon starts its server lazily, at the first client: only a real CUDA client
        # tells whether clients can use it (a broken MPS setup otherwise shows up in every cell)
        try:
            probe = subprocess.run(MPS_PROBE, env=full, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            probe = subprocess.CompletedProcess([], 1, "", str(e))
        if probe.returncode != 0:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=full, capture_output=True, text=True, timeout=60)
            msg = f"a CUDA client could not use the MPS daemon: {(probe.stderr or probe.stdout).strip()[-200:]}"
    if msg is not None:
        shutil.rmtree(root, ignore_errors=True)
        if mode == "on":
            raise Unavailable(msg)
        log.warning("%s; sharing the GPU without it", msg)
        yield {}
        return
    log.info("MPS control daemon started for %d processes (%s)", parallel, root)
    try:
        yield env
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=full, capture_output=True, text=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
