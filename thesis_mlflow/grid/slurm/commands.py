"""How SLURM's commands are called: ``run`` (a command that must work: its last words as one
line when it does not), ``query`` (a question whose answer may be missing: None), and ``user``.
Every other module of the SLURM backend calls SLURM through these."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess

from thesis_mlflow.errors import Unavailable

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT_S = 120


def user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def run(cmd: list[str], check: bool = True, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S, input=stdin, env=env)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"{cmd[0]} did not answer in {SUBMIT_TIMEOUT_S} s (is SLURM's controller up?)") from e
    if check and out.returncode != 0:
        raise Unavailable(f"{shlex.join(cmd[:3])} ... failed: {last_line(out)}")
    return out


def last_line(out: subprocess.CompletedProcess) -> str:
    """The last words of a failed SLURM command (its 'fatal:' or 'error:' line), on one line."""
    lines = [ln.strip() for ln in (out.stderr or out.stdout or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit {out.returncode}"


def query(cmd: list[str], timeout_s: float = 60) -> str | None:
    """A SLURM query's output; None when the command is missing, times out or fails (logged):
    the caller decides what not knowing means."""
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s did not answer: %s", cmd[0], e)
        return None
    if out.returncode != 0:
        log.debug("%s failed: %s", cmd[0], out.stderr.strip()[:300])
        return None
    return out.stdout
