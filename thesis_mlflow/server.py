"""A real ``mlflow server`` process: SQLite backend and served artifacts under one root.

Many concurrent jobs log through one server, never through one SQLite file on a network
filesystem (SQLite locking over NFS loses writes). Move ``--backend-store-uri`` to
PostgreSQL when dozens of jobs log at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(root: Path, host: str, port: int, workers: int = 1, allowed_hosts: str | None = None,
                   backend_store_uri: str | None = None) -> list[str]:
    root = Path(root).resolve()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


@dataclass
class Server:
    proc: subprocess.Popen | None
    uri: str
    pid: int
    root: Path

    def stop(self, timeout: float = 20) -> None:
        stop_pid(self.pid, timeout)


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(root: str | Path, host: str = "127.0.0.1", port: int = 0, workers: int = 1, allowed_hosts: str | None = None,
          wait: float = 90, backend_store_uri: str | None = None) -> Server:
    """Start the server in the background and wait until it answers /health."""
    root = Path(root).resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    cmd = server_command(root, host, port, workers, allowed_hosts, backend_store_uri)
    logf = open(root / "server.log", "ab")
    # own session: the server outlives `make demo` and is stopped through its pid file
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    uri = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    t0 = time.time()
    while not healthy(uri):
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}; see {root / 'server.log'}")
        if time.time() - t0 > wait:
            stop_pid(proc.pid)
            raise RuntimeError(f"mlflow server did not answer on {uri} within {wait:.0f} s; see {root / 'server.log'}")
        time.sleep(0.5)
    (root / "server.pid").write_text(str(proc.pid))
    (root / "server.url").write_text(uri)
    log.info("mlflow server %s (pid %d, store %s)", uri, proc.pid, root)
    return Server(proc, uri, proc.pid, root)


def running(root: str | Path) -> Server | None:
    """The server a previous ``start`` left running under ``root``, if it still answers."""
    root = Path(root).resolve()
    try:
        pid = int((root / "server.pid").read_text())
        uri = (root / "server.url").read_text().strip()
    except (OSError, ValueError):
        return None
    return Server(None, uri, pid, root) if healthy(uri) else None


def stop_pid(pid: int, timeout: float = 20) -> None:
    """Stop the server's whole process group (gunicorn/uvicorn workers included)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
