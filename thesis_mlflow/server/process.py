"""A real ``mlflow server`` process: SQLite (or PostgreSQL) backend and served artifacts under one root.

Many concurrent jobs log through one server, never through one SQLite file on a network
filesystem (SQLite locking over NFS loses writes). Move ``--backend-store-uri`` to
PostgreSQL when dozens of jobs log at once.

On a shared login node nothing is trusted that this code did not start or cannot verify:

- The root must be the user's own and writable by nobody else (``permissions.secure_dir``).
- The port must be free before anything is written; the server is "up" only when the
  process started here is alive, the socket answering on the port belongs to its process
  tree, and ``/health`` answers there (over TLS, verified, beyond loopback). A stranger
  already listening on the port is an error before any login is written or sent.
- ``running()`` and ``--stop`` believe ``server.json`` only when it is ours, and the pid in it
  is a live process of this user, started at the recorded time, running ``mlflow server``
  for this root and listening on the recorded port.
- Secrets never go on a command line (``ps`` shows those to every user): the auth config,
  the Flask key and a backend URI with a password reach the server through its environment;
  printed URIs are masked.
- Beyond loopback the server speaks HTTPS with a generated self-signed certificate (or the
  user's); plain HTTP there only with an explicit opt-out.

Logins (``thesis_mlflow.server.logins``): MLflow's basic-auth app, on unless asked otherwise; the
admin login stays under the root; the jobs log in as a user with EDIT on the study only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from thesis_mlflow import secret
from thesis_mlflow.errors import Unavailable, UserError
from thesis_mlflow.permissions import check_private, secure_dir, write_private
from thesis_mlflow.server import logins
from thesis_mlflow.server.logins import AUTH_INI, CREDENTIALS, credentials, ensure_auth_config, install_client_credentials  # noqa: F401 (re-exported)
from thesis_mlflow.tracking.telemetry import telemetry_off

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4  # benchmarks/server_load.py: 1 worker failed 18-25 of 36 jobs at once; 4 failed none
STATE = "server.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PortTaken(UserError):
    """Something else already listens on the server's port."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# One definition of a secret for the whole project (``thesis_mlflow.secret``): the server's
# checks, the job files and every printout agree on what is masked.
mask = secret.mask
has_password = secret.carries_secret


GRACE_S = 5  # seconds a stopping server gives the requests in flight


def server_command(root: Path, host: str, port: int, workers: int = 1, allowed_hosts: str | None = None, auth: bool = True,
                   tls: tuple[Path, Path] | None = None) -> list[str]:
    """The server's command line: paths and options only (the backend URI travels in the environment)."""
    root = Path(root).resolve()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    # uvicorn waits without end for kept-alive TLS connections (every job's and browser's) to
    # close before it exits: a stop then took the full 20 s and a SIGKILL. A request in flight
    # gets GRACE_S to finish; a job whose request is cut retries it against the restarted server.
    opts = f"--timeout-graceful-shutdown {GRACE_S}"
    if tls:
        opts += f" --ssl-certfile {tls[0]} --ssl-keyfile {tls[1]}"
    return cmd + ["--uvicorn-opts", opts]


@dataclass
class Server:
    proc: subprocess.Popen | None
    uri: str  # how this host reaches it (127.0.0.1 when it listens on every interface)
    pid: int
    root: Path
    public_uri: str | None = None  # how worker nodes reach it
    cafile: Path | None = None  # the certificate clients verify (HTTPS)
    experiment_id: str | None = None  # the study's experiment, when the jobs user was given it

    def stop(self, timeout: float = 20) -> None:
        stop_pid(self.pid, timeout)
        try:
            (self.root / STATE).unlink()
        except OSError:
            pass


def healthy(uri: str, cafile: Path | None = None) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=str(cafile)) if uri.startswith("https") else None
        with urllib.request.urlopen(f"{uri}/health", timeout=2, context=ctx) as r:
            return r.status == 200
    except (OSError, ssl.SSLError):
        return False


def answers(uri: str) -> bool:
    """Whether anything answers ``/health`` at ``uri`` (no login sent; certificate not checked:
    this only asks whether that server is still up)."""
    ctx = ssl._create_unverified_context() if uri.startswith("https") else None  # noqa: S323 - a liveness probe, nothing sent
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=3, context=ctx) as r:
            return r.status == 200
    except (OSError, ssl.SSLError):
        return False


def _tree(pid: int) -> list:
    import psutil

    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def listens(pid: int, port: int) -> bool:
    """Whether the process ``pid`` (or one of its children: uvicorn's) listens on ``port``."""
    import psutil

    for p in _tree(pid):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in p.net_connections(kind="inet")):
                return True
        except psutil.Error:
            continue
    return False


def check_port_free(host: str, port: int) -> None:
    """Refuse before anything is written when another process listens on the port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        # as the server binds (uvicorn sets it): connections of a previous server in TIME_WAIT do not
        # count, a listening socket of anyone does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortTaken(f"port {port} on {host} is already in use by another process ({e.strerror}); nothing was started "
                            "and no login was written: choose another --port (0 picks a free one)") from e


def _wait_until_up(proc: subprocess.Popen, port: int, local_uri: str, cafile: Path | None, wait: float, root: Path) -> None:
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise Unavailable(f"mlflow server exited with code {proc.returncode}; see {root / 'server.log'}"
                               + (" (another process may have taken the port)" if proc.returncode else ""))
        if listens(proc.pid, port) and healthy(local_uri, cafile):
            return
        if time.time() - t0 > wait:
            stop_pid(proc.pid)
            raise Unavailable(f"mlflow server did not answer on {local_uri} within {wait:.0f} s; see {root / 'server.log'}")
        time.sleep(0.5)


def start(root: str | Path, host: str = "127.0.0.1", port: int = 0, workers: int = 1, allowed_hosts: str | None = None,
          wait: float = 90, backend_store_uri: str | None = None, auth: bool = True, experiment: str | None = None,
          tls: tuple[Path, Path] | None = None, insecure_http: bool = False) -> Server:
    """Start the server in the background and return once the process started here answers.

    ``tls``: (certificate, key) to serve HTTPS; beyond loopback a self-signed pair is made under
    the root unless ``insecure_http``. ``experiment``: the study experiment the jobs user may
    write (default: ``MLFLOW_EXPERIMENT_NAME`` or ``4t-tokenization``)."""
    root = secure_dir(root)
    if backend_store_uri and backend_store_uri.startswith("postgresql"):
        import importlib.util

        driver = "psycopg2" if backend_store_uri.startswith("postgresql+psycopg2") else "psycopg"
        if importlib.util.find_spec(driver) is None:
            raise Unavailable("--backend-store-uri postgresql://... needs the PostgreSQL driver: pip install 'thesis-mlflow[postgres]'")
    port = port or free_port("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    check_port_free(host, port)
    (root / "artifacts").mkdir(exist_ok=True)
    beyond_loopback = host not in LOOPBACK
    if beyond_loopback and tls is None and not insecure_http:
        from thesis_mlflow.server.tls import ensure_cert  # lazy: cryptography, only beyond loopback

        tls = ensure_cert(root, host)
    scheme = "https" if tls else "http"
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    uri = f"{scheme}://{local}:{port}"
    public = f"{scheme}://{socket.getfqdn() if host in ('0.0.0.0', '::') else host}:{port}"
    cafile = Path(tls[0]) if tls else None

    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # MLflow's job runner (8 huey consumers, ~1 GB): GenAI features we do not use
           # each worker's connection pool: SQLAlchemy's 5 + 10 ran out with 36 jobs on one worker
           # (benchmarks/server_load.py); 4 workers x 20 stay under PostgreSQL's default 100 connections
           "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10", **os.environ, **telemetry_off(),
           # the store, possibly with a password, in the environment: never on the command line
           "MLFLOW_BACKEND_STORE_URI": backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": site_path(os.environ.get("PYTHONPATH"))}
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ensure_auth_config(root))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret(root)  # CSRF key of the login forms; kept across restarts
    cmd = server_command(root, host, port, workers, allowed_hosts, auth, tls)
    logf = open(root / "server.log", "ab")  # noqa: SIM115 - handed to the child
    # own session: the server outlives `make demo` and is stopped through its recorded pid
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    logf.close()
    _wait_until_up(proc, port, uri, cafile, wait, root)
    import psutil

    write_private(root / STATE, json.dumps({"pid": proc.pid, "uri": uri, "public_uri": public, "port": port, "cafile": str(cafile or ""),
                                            "create_time": psutil.Process(proc.pid).create_time(), "uid": os.getuid()}))
    (root / "server.url").write_text(public if beyond_loopback else uri)  # what jobs export (not trusted by running())
    srv = Server(proc, uri, proc.pid, root, public, cafile)
    if auth:
        from thesis_mlflow.tracking.runs import DEFAULT_EXPERIMENT  # lazy: MLflow's client, not needed to start or stop a server

        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        try:
            srv.experiment_id = logins.provision_jobs_user(uri, root, name, cafile)
        except Exception:
            srv.stop()
            raise
    log.info("mlflow server %s (pid %d, store %s)", uri, proc.pid, mask(backend_store_uri) or root)
    return srv


SERVER_SITE = Path(__file__).resolve().parent / "site"


def site_path(pythonpath: str | None) -> str:
    """The server's PYTHONPATH: our start-up code (server/site/sitecustomize.py: TCP_NODELAY on
    every connection, which uvicorn's multi-worker mode leaves off) first, then the caller's."""
    return os.pathsep.join([str(SERVER_SITE), *([pythonpath] if pythonpath else [])])


def flask_secret(root: Path) -> str:
    path = Path(root) / "flask_secret"
    if not path.is_file():
        import secrets

        write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def running(root: str | Path) -> Server | None:
    """The server a previous ``start`` left running under ``root``, if everything recorded about
    it checks out (see the module docstring); None otherwise, and nothing is signalled."""
    import psutil

    root = Path(os.path.abspath(root))
    try:
        check_private(root, "root")
        check_private(root / STATE, "state file")
        st = json.loads((root / STATE).read_text())
        pid, uri, port = int(st["pid"]), str(st["uri"]), int(st["port"])
    except (OSError, ValueError, KeyError, UserError):
        return None
    try:
        p = psutil.Process(pid)
        if p.uids().real != os.getuid() or abs(p.create_time() - float(st["create_time"])) > 1:
            return None  # another user's process, or a new process under a reused pid
        cmd = " ".join(p.cmdline())
        if "mlflow" not in cmd or " server" not in cmd or str(root / "artifacts") not in cmd:
            return None
    except (psutil.Error, ValueError):
        return None
    cafile = Path(st["cafile"]) if st.get("cafile") else None
    if not listens(pid, port) or not healthy(uri, cafile):
        return None
    return Server(None, uri, pid, root, st.get("public_uri") or uri, cafile)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs. A zombie does not: it has exited and
    waits for its parent to reap it (the process that started the server, when that is not the
    one stopping it; or a container's init that never reaps), yet ``killpg(pgid, 0)`` succeeds on it."""
    import psutil

    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def stop_pid(pid: int, timeout: float = 20) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
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
        if not _group_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
