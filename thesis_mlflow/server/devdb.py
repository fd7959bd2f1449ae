"""A throwaway PostgreSQL server for the tests and benchmarks (never for the thesis data).

``initdb`` in a temporary directory, ``pg_ctl start`` listening on a Unix socket in that
0700 directory only (no TCP port: other users of the machine cannot connect, and the
``trust`` login needs no password anywhere), one database, removed again by ``stop()``.
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (in a
directory that user owns).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from thesis_mlflow.errors import Unavailable
from thesis_mlflow.server.process import free_port


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise Unavailable(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


@dataclass
class PgServer:
    root: Path
    port: int
    as_user: str | None

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@/mlflow?host={self.root}&port={self.port}"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        if self.as_user:
            cmd = ("su", self.as_user, "-s", "/bin/sh", "-c", " ".join(_q(c) for c in cmd))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def start() -> PgServer:
    root = Path(tempfile.mkdtemp(prefix="thesis-pg-"))
    as_user = "postgres" if os.geteuid() == 0 else None
    if as_user:
        shutil.chown(root, as_user, as_user)
        root.chmod(0o700)
    pg = PgServer(root, free_port(), as_user)
    steps = [
        (pg_bin("initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"),
        (pg_bin("pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60",
         "-o", f"-p {pg.port} -k {root} -c listen_addresses='' -c unix_socket_permissions=0700 -c fsync=off -c max_connections=300", "start"),
        (pg_bin("createdb"), "-h", str(root), "-p", str(pg.port), "-U", "postgres", "mlflow"),
    ]
    for cmd in steps:
        r = pg._run(*cmd)
        if r.returncode != 0:
            log = (root / "log").read_text()[-1000:] if (root / "log").exists() else ""
            pg.stop()
            raise Unavailable(f"{Path(cmd[0]).name} failed: {(r.stderr or r.stdout).strip()[-500:]} {log}")
    return pg
