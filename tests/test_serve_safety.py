"""`serve` on a shared login node: it trusts only what it started, keeps its root private,
sends no login to a stranger, gives the jobs the least privilege, and speaks HTTPS beyond
loopback. Real server processes; hostile neighbours played by this test."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest

from tests.privileges import needs_root
from thesis_mlflow.permissions import UnsafePath
from thesis_mlflow.server import devdb, logins
from thesis_mlflow.server import process as server

ROOT = Path(__file__).resolve().parents[1]


class _Impostor(BaseHTTPRequestHandler):
    """Answers everything with 200 and records any Authorization header it is sent."""

    seen: list = []

    def do_GET(self):  # noqa: N802
        if self.headers.get("Authorization"):
            _Impostor.seen.append(self.headers["Authorization"])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *a):
        pass


@pytest.fixture()
def impostor():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow  # starts a server: not in the quick loop (test-fast)
def test_a_foreign_listener_on_the_port_is_an_error_before_any_login_is_written(tmp_path, impostor, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(server.PortTaken, match=f"port {impostor}"):
        server.start(tmp_path / "srv", port=impostor)
    assert not (tmp_path / "srv" / logins.AUTH_INI).exists() and not (home / ".mlflow").exists()
    # the stranger binds between our check and our server's bind: our process dies, the stranger
    # answers /health, and start() still refuses (the answering socket is not our process's)
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)
    with pytest.raises(RuntimeError, match="exited"):
        server.start(tmp_path / "srv2", port=impostor, wait=30)
    assert server.running(tmp_path / "srv2") is None and not (tmp_path / "srv2" / server.STATE).exists()
    assert _Impostor.seen == []


def test_a_listener_gone_as_a_job_connects_is_retried_and_a_stranger_is_not(impostor, monkeypatch):
    """A server killed or restarting just as a job connects: the connection reached a listening
    socket that closed before the check could see whose it was. Nothing was sent and nobody can
    read that connection: it is a refused connection, retried (and the next one checked again),
    so the job rides out the restart. A stranger's listener still ends the request at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import MlflowHostCreds
    from mlflow.utils.rest_utils import http_request

    from thesis_mlflow.tracking import peer

    peer.install()
    monkeypatch.delenv("THESIS_MLFLOW_TRUST_LOOPBACK", raising=False)
    real, checks = peer.describe_peer, []

    def first_gone(port):
        checks.append(port)
        if len(checks) == 1:
            raise peer.ListenerGone(f"no socket listens on port {port} any more")
        return real(port)

    monkeypatch.setattr(peer, "describe_peer", first_gone)
    host = MlflowHostCreds(f"http://127.0.0.1:{impostor}")  # the listener is this process's own: ours
    res = http_request(host, "/health", "GET", max_retries=3, backoff_factor=0, backoff_jitter=0)
    assert res.status_code == 200 and checks == [impostor, impostor]  # refused once, then checked again and sent
    checks.clear()
    monkeypatch.setattr(peer, "describe_peer", lambda port: (checks.append(port), (False, "pid 1 (squatter) of uid 65534"))[1])
    with pytest.raises(MlflowException, match="is answered by pid 1 .squatter. of uid 65534, not by a process of yours: nothing was sent"):
        http_request(host, "/health", "GET", max_retries=3, backoff_factor=0, backoff_jitter=0)
    assert checks == [impostor]  # a stranger is not asked again


@pytest.mark.parametrize("case", ["777", "not-mine", "group-writable-parent", "symlink"])
def test_a_root_others_could_prepare_is_refused(tmp_path, case):
    if case == "777":
        root = tmp_path / "srv"
        root.mkdir()
        root.chmod(0o777)
    elif case == "not-mine":
        needs_root("to give the folder to another user, nobody")
        root = tmp_path / "srv"
        root.mkdir(mode=0o700)
        os.chown(root, 65534, 65534)  # nobody
    elif case == "group-writable-parent":
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o775)
        root = shared / "srv"
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        root = tmp_path / "srv"
        root.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath):
        server.start(root)
    assert not (root / logins.AUTH_INI).exists() or case == "symlink"


def test_a_stopped_server_left_unreaped_counts_as_stopped():
    """``serve --stop`` run by another process than the one that started the server (or under a
    container's init that never reaps): the server's processes exit and stay zombies, which
    ``kill(0)`` still finds. Stopping waits for running processes only, so it returns at once
    rather than after its 20 s timeout."""
    import signal
    import time

    import psutil

    live = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a child of ours we do not reap: a zombie once it ends
    try:
        assert server._group_alive(live.pid)
        os.killpg(live.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while psutil.Process(live.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "sleep did not end on SIGTERM"
            time.sleep(0.05)
        os.killpg(live.pid, 0)  # the zombie still answers a signal check ...
        assert not server._group_alive(live.pid)  # ... but runs no more
    finally:
        live.kill()
        live.wait()


def test_planted_state_is_not_believed_nor_signalled(tmp_path):
    root = tmp_path / "srv"
    root.mkdir(mode=0o700)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for state in ({"pid": victim.pid, "uri": "http://127.0.0.1:1", "port": 1, "create_time": 0, "uid": os.getuid()},
                      {"pid": os.getpid(), "uri": "http://127.0.0.1:1", "port": 1, "create_time": 0}):
            (root / server.STATE).write_text(json.dumps(state))
            (root / server.STATE).chmod(0o600)
            assert server.running(root) is None
            res = subprocess.run([sys.executable, "-m", "steps.cli", "serve", "--root", str(root), "--stop"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
            assert res.returncode == 0 and "nothing signalled" in res.stdout
        assert victim.poll() is None  # still alive: never signalled
    finally:
        victim.kill()


def _get(url, login=None, cafile=None):
    req = urllib.request.Request(url)
    if login:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode())
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow  # starts a server: not in the quick loop (test-fast)
def test_https_beyond_loopback_least_privilege_and_one_login_per_server(tmp_path, monkeypatch, impostor):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study")
    for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    a = server.start(tmp_path / "a", host="0.0.0.0", workers=1)
    try:
        port = int(a.uri.rsplit(":", 1)[1])
        assert a.uri.startswith("https://127.0.0.1:") and a.public_uri.startswith("https://") and a.cafile.is_file()
        # HTTPS only, and verifiable with the generated certificate
        assert server.healthy(a.uri, a.cafile)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
        with pytest.raises(urllib.error.URLError):  # an unverified certificate is refused by a careful client
            urllib.request.urlopen(f"{a.uri}/health", timeout=5)
        # the jobs' login, through the user's credentials file and MLflow's own certificate variable
        path, what = logins.install_client_credentials(a.root, home, uri=a.uri, alive=server.answers)
        assert what == "written" and path.stat().st_mode & 0o777 == 0o600 and logins.JOBS_USER in path.read_text()
        admin, jobs = logins.credentials(a.root), logins.jobs_credentials(a.root)
        assert admin[1] not in path.read_text()  # the admin login stays under the root
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(logins.install_client_cert(a.cafile, a.uri, home)))
        c = mlflow.MlflowClient(a.uri)
        exp = c.get_experiment_by_name("study").experiment_id
        rid = c.create_run(exp, run_name="job").info.run_id
        c.log_metric(rid, "val_auc", 0.7, step=1)
        c.set_terminated(rid)
        assert c.get_run(rid).info.status == "FINISHED"
        # least privilege: no user management, nothing it was not given
        api = a.uri + "/api/2.0/mlflow"
        assert _get(f"{api}/users/get?username=admin", jobs, a.cafile) == 403
        req = urllib.request.Request(f"{api}/users/create", data=json.dumps({"username": "eve", "password": "x" * 12}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Basic " + base64.b64encode(f"{jobs[0]}:{jobs[1]}".encode()).decode()})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=str(a.cafile)))
        assert e.value.code == 403
        private = logins._api(a.uri, "/api/2.0/mlflow/experiments/create", admin, {"name": "admins-only"}, a.cafile)["experiment_id"]
        assert _get(f"{api}/experiments/get?experiment_id={private}", jobs, a.cafile) == 403
        # secrets never on a command line of the server's processes
        for p in server._tree(a.pid):
            cmd = " ".join(p.cmdline())
            assert admin[1] not in cmd and jobs[1] not in cmd
        # a second server (under another root) may not replace the login of the first while it answers
        b_root, b_uri = tmp_path / "b", f"http://127.0.0.1:{impostor}"
        b_root.mkdir(mode=0o700)
        with pytest.raises(logins.OtherServersLogin, match="another running server"):
            logins.install_client_credentials(b_root, home, uri=b_uri, alive=server.answers)
        assert path.read_text().count(a.uri) == 1
        a.stop()  # while this process keeps TLS connections to it open (MLflow's client pool)
        assert "Finished server process" in (a.root / "server.log").read_text()  # it ended by itself, not SIGKILLed after 20 s
        assert logins.install_client_credentials(b_root, home, uri=b_uri, alive=server.answers)[1] == "written"
        assert b_uri in path.read_text() and jobs[1] not in path.read_text()
    finally:
        a.stop()


@pytest.mark.slow  # starts a server: not in the quick loop (test-fast)
def test_a_backend_password_stays_off_command_lines_and_logs(tmp_path, monkeypatch):
    pg = devdb.start()
    try:
        assert "127.0.0.1" not in pg.uri and "host=" in pg.uri  # the throwaway database has no TCP port
        uri = pg.uri.replace("postgres@", "postgres:Sup3rSecret@")  # trust on its private socket: the password is not checked
        srv = server.start(tmp_path / "srv", backend_store_uri=uri, auth=False, workers=1)
        try:
            for p in server._tree(srv.pid):
                assert "Sup3rSecret" not in " ".join(p.cmdline())
            assert "Sup3rSecret" not in (tmp_path / "srv" / "server.log").read_text()
            assert server.mask(uri).count("***") == 1 and "Sup3rSecret" not in server.mask(uri)
            res = subprocess.run([sys.executable, "-m", "steps.cli", "serve", "--root", str(tmp_path / "srv"), "--stop"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
            assert res.returncode == 0 and "stopped" in res.stdout
        finally:
            srv.stop()
    finally:
        pg.stop()
    with socket.socket() as s:  # nothing of ours left on a port
        s.bind(("127.0.0.1", 0))


@pytest.mark.parametrize("uri, secret", [
    ("postgresql://u:Sup3r@db.example/mlflow", "Sup3r"),
    ("postgresql://u@db.example/mlflow?password=Sup3r&sslmode=require", "Sup3r"),
    ("postgresql:///mlflow?host=/run/pg&PASSWORD=Sup3r", "Sup3r"),
    ("host=/run/pg dbname=mlflow password=Sup3r", "Sup3r"),
])
def test_every_form_of_a_uri_password_is_masked(uri, secret):
    masked = server.mask(uri)
    assert secret not in masked and "***" in masked and server.has_password(uri)
    assert not server.has_password("postgresql://u@db.example/mlflow?sslmode=require")


def test_serve_refuses_a_password_on_its_command_line_and_takes_it_from_the_environment_or_a_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from steps.serve import main as serve

    root = tmp_path / "srv"
    res = CliRunner().invoke(serve, ["--root", str(root), "--backend-store-uri", "postgresql://u:Sup3r@127.0.0.1:1/x"])
    assert res.exit_code == 2 and "visible to every user" in res.output and "Sup3r" not in res.output, res.output
    assert not root.exists()  # nothing started, nothing written
    # the same URI from a file of one's own: accepted (the server then fails to reach the database: not this test's point)
    from steps.serve import _store_uri

    f = tmp_path / "store.uri"
    f.write_text("postgresql://u:Sup3r@127.0.0.1:1/x\n")
    f.chmod(0o600)
    import click

    with click.Context(serve) as ctx:
        ctx.set_parameter_source("backend_store_uri", click.core.ParameterSource.DEFAULT)
        assert _store_uri(None, str(f)) == "postgresql://u:Sup3r@127.0.0.1:1/x"
        f.chmod(0o644)
        with pytest.raises(click.UsageError, match="readable by others"):
            _store_uri(None, str(f))
        # from the environment (click's envvar): not on the command line, so not refused
        ctx.set_parameter_source("backend_store_uri", click.core.ParameterSource.ENVIRONMENT)
        assert _store_uri("postgresql://u:Sup3r@h/x", None) == "postgresql://u:Sup3r@h/x"


SQUATTER = r"""
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen(16)
open(out + ".ready", "w").close()
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    with open(out, "ab") as f:
        f.write(data + b"\n----\n")
    try:
        c.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=mlflow\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    c.close()
"""


@pytest.mark.slow  # starts a server: not in the quick loop (test-fast)
def test_a_squatter_of_another_user_on_the_servers_port_gets_no_login(tmp_path, monkeypatch, tiny_raw):
    """The server is stopped; another user binds its port and answers 401 like MLflow does. A
    train job started now must send it nothing (the jobs' login least of all), fail at once
    instead of retrying into it for minutes, and say what answers there. Plant: the peer check
    off -> the squatter records the Authorization header of the job's first request."""
    import shutil
    import tempfile
    import time

    needs_root("to play another user, nobody, with runuser")
    if not shutil.which("runuser"):
        pytest.skip("needs runuser to play another user (nobody) on this machine")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    port = server.free_port()
    uri = f"http://127.0.0.1:{port}"  # where the user's server ran until it stopped: its jobs' login is in ~/.mlflow
    server.install_client_credentials(tmp_path / "srv", home, uri=uri)
    box = Path(tempfile.mkdtemp(prefix="squat-"))
    box.chmod(0o777)  # the other user writes what it receives here
    (box / "squat.py").write_text(SQUATTER)
    (box / "squat.py").chmod(0o644)
    sq = subprocess.Popen(["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(box / "squat.py"), str(port), str(box / "got")])
    try:
        deadline = time.monotonic() + 30
        while not (box / "got.ready").exists():
            assert sq.poll() is None and time.monotonic() < deadline, "the squatter did not start"
            time.sleep(0.1)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "squatted"}
        env.pop("MLFLOW_TRACKING_USERNAME", None)
        env.pop("MLFLOW_TRACKING_PASSWORD", None)
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "steps.train", "--tokenizer", "direct", "--epochs", "1", "--max-train-events", "100",
                              "--data", str(tiny_raw)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - t0
    finally:
        sq.kill()
        sq.wait()
    got = (box / "got").read_bytes() if (box / "got").exists() else b""
    user, password = logins.jobs_credentials(tmp_path / "srv")
    secret = base64.b64encode(f"{user}:{password}".encode())
    assert secret not in got and b"Authorization" not in got, got[:500]
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "not by a process of yours: nothing was sent" in out and "uid 65534" in out, out[-2000:]
    assert "Traceback" not in out  # one line the user can act on
    assert took < 60, took  # at once, not after minutes of retries
    shutil.rmtree(box, ignore_errors=True)
