"""A real ``mlflow server`` process: SQLite (or PostgreSQL) backend and served artifacts under one root.

Many concurrent jobs log through one server, never through one SQLite file on a network
filesystem (SQLite locking over NFS loses writes). Move ``--backend-store-uri`` to
PostgreSQL when dozens of jobs log at once.

Authentication is MLflow's basic-auth app, on unless asked otherwise: on first start an
admin password is generated into ``<root>/basic_auth.ini`` and ``<root>/credentials``, both
readable by their owner only (0600); the server finds the ini through
``MLFLOW_AUTH_CONFIG_PATH`` in its own environment, never on a command line. Clients
authenticate through MLflow's credentials file, ``~/.mlflow/credentials`` (see
``install_client_credentials``).
"""

from __future__ import annotations

import configparser
import logging
import os
import secrets
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


AUTH_INI = "basic_auth.ini"
CREDENTIALS = "credentials"
MARKER = "# written by thesis-mlflow serve"


def server_command(root: Path, host: str, port: int, workers: int = 1, allowed_hosts: str | None = None,
                   backend_store_uri: str | None = None, auth: bool = True) -> list[str]:
    root = Path(root).resolve()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_auth_config(root: Path) -> Path:
    """The basic-auth config of this server root, created once with a generated admin password."""
    ini = Path(root) / AUTH_INI
    if not ini.is_file():
        password = secrets.token_urlsafe(24)
        write_private(ini, f"""{MARKER}: the admin password of this server; keep this file 0600
[mlflow]
default_permission = READ
database_uri = sqlite:///{Path(root).resolve() / 'basic_auth.db'}
admin_username = admin
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# one password hash check per client and minute instead of one per request (one worker: no staleness)
auth_cache_ttl_seconds = 60
""")
        write_private(Path(root) / CREDENTIALS, credentials_text("admin", password))
    if ini.stat().st_mode & 0o077:
        raise PermissionError(f"{ini} is readable by others (mode {oct(ini.stat().st_mode & 0o777)}); chmod 600 it")
    return ini


def flask_secret(root: Path) -> str:
    path = Path(root) / "flask_secret"
    if not path.is_file():
        write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def credentials(root: Path) -> tuple[str, str]:
    cp = configparser.ConfigParser()
    cp.read(Path(root) / AUTH_INI)
    return cp["mlflow"]["admin_username"], cp["mlflow"]["admin_password"]


def credentials_text(user: str, password: str) -> str:
    return f"{MARKER}\n[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n"


def install_client_credentials(root: Path, home: Path | None = None) -> tuple[Path, str]:
    """Put this server's credentials where MLflow clients look (``~/.mlflow/credentials``, 0600):
    jobs on a shared home read them there, so no secret travels on a command line or in a job's
    environment. A file that this command did not write is left alone. Returns (path, what happened)."""
    path = Path(home or Path.home()) / ".mlflow" / "credentials"
    text = credentials_text(*credentials(root))
    if path.is_file():
        old = path.read_text()
        if old == text:
            return path, "already there"
        if not old.startswith(MARKER):
            return path, "left alone (it holds other credentials): copy " + str(Path(root) / CREDENTIALS) + " there yourself"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, text)
    return path, "written"


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


DEFAULT_WORKERS = 4  # benchmarks/server_load.py: 1 worker failed 18-25 of 36 jobs at once; 4 failed none


def start(root: str | Path, host: str = "127.0.0.1", port: int = 0, workers: int = 1, allowed_hosts: str | None = None,
          wait: float = 90, backend_store_uri: str | None = None, auth: bool = True) -> Server:
    """Start the server in the background and wait until it answers /health."""
    root = Path(root).resolve()
    if backend_store_uri and backend_store_uri.startswith("postgresql"):
        import importlib.util

        driver = "psycopg2" if backend_store_uri.startswith("postgresql+psycopg2") else "psycopg"
        if importlib.util.find_spec(driver) is None:
            raise ValueError("--backend-store-uri postgresql://... needs the PostgreSQL driver: pip install 'thesis-mlflow[postgres]'")
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    if auth:  # the stores under ROOT (runs, password hashes) are readable through the server's login only
        root.chmod(0o700)
    port = port or free_port(host)
    cmd = server_command(root, host, port, workers, allowed_hosts, backend_store_uri, auth)
    # MLflow's job runner (8 huey consumers, ~1 GB) serves GenAI features this project does not use
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           # each worker's connection pool: SQLAlchemy's 5 + 10 ran out with 36 jobs on one worker
           # (benchmarks/server_load.py); 4 workers x 20 stay under PostgreSQL's default 100 connections
           "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10", **os.environ}
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ensure_auth_config(root))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret(root)  # CSRF key of the login forms; kept across restarts
    logf = open(root / "server.log", "ab")
    # own session: the server outlives `make demo` and is stopped through its pid file
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
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
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child, or it lingers as a zombie
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
