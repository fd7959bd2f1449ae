"""Several cells on one GPU: a process runner, thread budgets, and a private CUDA MPS daemon.

Measured on one H200 (benchmarks/gpu_throughput.py, README): processes sharing a GPU the
default way are time-sliced, so with the captured training step 4-16 processes give the same
aggregate as one (~40k events/s at batch 64); under CUDA MPS their kernels run concurrently
and 8 processes give ~95k events/s. So a pack of cells runs under an MPS control daemon of its
own (per-job pipe and log directories, no root needed) when the node has one to start, and
falls back to plain sharing when it cannot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from thesis_mlflow.errors import BadSetting, Unavailable
from thesis_mlflow.paths import outputs
from thesis_mlflow.permissions import secure_dir

log = logging.getLogger(__name__)
MPS_MODES = ("auto", "on", "off")


@dataclass
class Job:
    key: str  # what the caller calls it (a cell name)
    cmd: list[str]
    env: dict
    log: Path
    cwd: Path
    pid: int = 0  # set once started
    cells: list = field(default_factory=list)  # a worker's (cell, run id) pairs


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
    t = str(max(1, cpu_budget() // max(1, parallel)))
    # Inductor would start up to 32 compile workers in each of the packed processes
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "TORCHINDUCTOR_COMPILE_THREADS": t}


def compile_cache_env(root: Path | None = None) -> dict:
    """Inductor's persistent caches in one folder of the project (shared by the jobs of a grid on
    a shared filesystem): a configuration compiled by one pack is read back by the next (~5 s
    instead of ~48 s, measured on an H100). The folder is ours alone: a cached kernel is code
    that every later job would run."""
    d = secure_dir(Path(root) if root is not None else outputs() / "outputs" / "inductor-cache", "Inductor cache folder")
    return {"TORCHINDUCTOR_CACHE_DIR": str(d), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


MPS_PROBE = [sys.executable, "-c", "import torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize(); assert x.item() == 1"]


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


@dataclass
class Caught:
    """Which signal interrupted the work (``signals_as_interrupt``): ``time_limit`` when it was
    SLURM's warning before the job's time limit (SIGUSR1), which asks for a requeue, not an end."""

    signum: int | None = None

    @property
    def time_limit(self) -> bool:
        import signal

        return self.signum == signal.SIGUSR1


EARLY = Caught()  # SLURM's time-limit warning when it came while a pack was still setting up


def watch_time_limit() -> None:
    """Note SLURM's warning before the time limit (SIGUSR1) from the first moment of a pack job,
    while it still sets up (importing torch and MLflow takes seconds, more on a busy node): its
    default action would end the process, and SLURM sends it once. ``run_pack`` reads ``EARLY``."""
    import signal

    def note(signum, frame):
        EARLY.signum = signum

    signal.signal(signal.SIGUSR1, note)


@contextmanager
def signals_as_interrupt(time_limit: bool = False) -> Iterator[Caught]:
    """SIGTERM and SIGHUP (Condor removing or evicting a job, SLURM cancelling, preempting or
    requeueing one, a closed terminal) act as Ctrl-C: ``run_jobs`` then stops its children, marks
    their runs, and the MPS daemon and temporary folders are cleaned up on the way out, instead of
    being left behind. ``time_limit``: SIGUSR1 too (SLURM's warning before a job's time limit,
    ``--signal=B:USR1@N``). Yields which signal came first."""
    import signal

    caught = Caught()

    def interrupt(signum, frame):
        if caught.signum is None:
            caught.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    which = (signal.SIGTERM, signal.SIGHUP) + ((signal.SIGUSR1,) if time_limit else ())
    old = {s: signal.signal(s, interrupt) for s in which}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_jobs(jobs: list[Job], parallel: int, on_done: Callable[[Job, int, float], None],
             on_interrupt: Callable[[Job], None] | None = None, poll_s: float = 0.2, on_poll: Callable[[], None] | None = None,
             every_s: float = 5.0) -> dict[str, int]:
    """Run ``jobs`` with at most ``parallel`` at once; ``on_done(job, returncode, seconds)`` as each ends,
    ``on_poll()`` every ``every_s`` seconds meanwhile (progress of long jobs).

    Ctrl-C terminates the running ones (``on_interrupt`` for each) and re-raises.
    """
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, float, object]] = {}
    codes: dict[str, int] = {}
    last_poll = time.monotonic()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(job.log, "ab")  # noqa: SIM115 - closed when the process ends
                p = subprocess.Popen(job.cmd, cwd=job.cwd, env=job.env, stdout=fh, stderr=subprocess.STDOUT)
                job.pid = p.pid
                running[p] = (job, time.perf_counter(), fh)
            time.sleep(poll_s)
            if on_poll is not None and time.monotonic() - last_poll > every_s:
                last_poll = time.monotonic()
                try:
                    on_poll()
                except Exception as e:  # noqa: BLE001 - a progress query must not stop the jobs
                    log.debug("progress poll failed: %s", e)
            for p in [p for p in running if p.poll() is not None]:
                job, t0, fh = running.pop(p)
                fh.close()
                codes[job.key] = p.returncode
                on_done(job, p.returncode, time.perf_counter() - t0)
    except KeyboardInterrupt:
        for p, (job, _, fh) in running.items():
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            fh.close()
            if on_interrupt:
                on_interrupt(job)
        raise
    return codes
