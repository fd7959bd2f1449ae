"""Child processes run a few at a time (a local grid's workers, a pack's cells as processes), each
logging to its file; Ctrl-C (or a signal turned into it, ``signals``) stops the running ones."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class ChildProcess:
    """One process to run (a cell's ``steps.train``, a local worker's pack), its log and, once started, its pid."""

    key: str  # what the caller calls it (a cell name)
    cmd: list[str]
    env: dict
    log: Path
    cwd: Path
    pid: int = 0  # set once started
    cells: list = field(default_factory=list)  # a worker's (cell, run id) pairs


def run_processes(jobs: list[ChildProcess], parallel: int, on_done: Callable[[ChildProcess, int, float], None],
                  on_interrupt: Callable[[ChildProcess], None] | None = None, poll_s: float = 0.2, on_poll: Callable[[], None] | None = None,
                  every_s: float = 5.0) -> dict[str, int]:
    """Run ``jobs`` with at most ``parallel`` at once; ``on_done(job, returncode, seconds)`` as each ends,
    ``on_poll()`` every ``every_s`` seconds meanwhile (progress of long jobs).

    Ctrl-C terminates the running ones (``on_interrupt`` for each) and re-raises.
    """
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[ChildProcess, float, object]] = {}
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
