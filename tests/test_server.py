"""The tracking server for a shared cluster: login, PostgreSQL for real, no races when jobs
start together, and jobs that outlive a server restart. Real server processes throughout."""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml

from tests.conftest import login_from_home
from thesis_mlflow.server import devdb
from thesis_mlflow.server import process as server
from thesis_mlflow.tracking import done, leases, queries
from thesis_mlflow.tracking import runs as tracking

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "64", "--warmup-steps", "5", "--lr", "3e-3",
        "--max-train-events", "400", "--max-eval-events", "200", "--epochs", "1"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request):
    """The backend store of the server under test: the session's shared server (SQLite), or a
    server of this test on a throwaway PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    pg = devdb.start()
    yield pg.uri
    pg.stop()


@pytest.fixture(autouse=True)
def _stop_servers(monkeypatch):
    """Every server a test starts is stopped when it ends, whatever happened."""
    started = []
    real_start = server.start

    def start(*a, **kw):
        srv = real_start(*a, **kw)
        started.append(srv)
        return srv

    monkeypatch.setattr(server, "start", start)
    yield
    for srv in started:
        srv.stop()


def _serve(tmp_path, monkeypatch, backend=None, auth=True, port=0, name="srv"):
    """A real server with login; this test's HOME holds the client credentials, as a user's would."""
    srv = server.start(tmp_path / name, port=port, backend_store_uri=backend, auth=auth)
    return _as_its_admin(srv, tmp_path, monkeypatch, auth)


def _as_its_admin(srv, tmp_path, monkeypatch, auth=True, experiment="srv-test"):
    """The client of this test is the user who started ``srv``: its admin login in this test's
    ``~/.mlflow/credentials`` (nothing in the environment), experiment ``experiment``."""
    login_from_home(srv, tmp_path / "home", monkeypatch, experiment, auth)
    return srv


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def test_login_required_and_secrets_kept_private(shared_server, tmp_path, monkeypatch):
    """On the session's server (started by ``server.start``, as ``serve`` does): what its files,
    processes and answers give away, and the login in a browser."""
    name = "srv-login"
    srv = _as_its_admin(shared_server, tmp_path, monkeypatch, experiment=name)
    root = srv.root
    user, password = server.credentials(root)
    for f in (root / server.AUTH_INI, root / server.CREDENTIALS, tmp_path / "home" / ".mlflow" / "credentials"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert root.stat().st_mode & 0o777 == 0o700  # the run store and the password hashes beside them
    cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "basic-auth" in cmdline and password not in cmdline  # never on a command line
    procs = [psutil.Process(srv.pid), *psutil.Process(srv.pid).children(recursive=True)]
    assert len(procs) >= 2  # mlflow server and the uvicorn it starts (with its workers, if several): TCP_NODELAY (test_server_site.py)
    assert all(p.environ().get("PYTHONPATH", "").split(os.pathsep)[0] == str(server.SERVER_SITE) for p in procs)
    api = f"{srv.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(api)[0] == 401
    assert _get(api, (user, password + "x"))[0] == 401
    assert _get(api, ("someone", password))[0] == 401
    assert _get(api, (user, password))[0] == 200
    status, headers = _get(f"{srv.uri}/")  # the UI: the browser is asked for the login
    assert status == 401 and headers.get("www-authenticate", "").lower().startswith("basic")
    # the client authenticates through ~/.mlflow/credentials, nothing in its environment
    c = mlflow.MlflowClient()
    exp = c.create_experiment(name)
    rid = c.create_run(exp, run_name="r").info.run_id
    c.log_metric(rid, "val_auc", 0.7, step=1)
    assert [m.value for m in c.get_metric_history(rid, "val_auc")] == [0.7]
    assert password not in (root / "server.log").read_text()
    assert all(password not in v for v in c.get_run(rid).data.params.values())
    # the UI link works in a browser that has the login (what the prompt gives it)
    assert CHROMIUM, "headless Chromium not found: `make test` installs Debian's chromium package (apt-get install chromium)"
    with _logged_in_browser_proxy(srv.uri, user, password) as base:
        u = f"{base}/#/experiments/{exp}/runs"
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
                              "--virtual-time-budget=15000", "--dump-dom", u], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", dom.stdout, flags=re.S)))
    assert name in text and " r " in text and "1 matching run " in text and "admin" in text, text[:2000]
    # a second start reuses the password (the restart test starts a server twice on one root);
    # a login file readable by others is refused (on a root of its own: the shared server's stays private)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    assert server.ensure_auth_config(other)
    first = server.credentials(other)
    assert server.ensure_auth_config(other) and server.credentials(other) == first and first[1] != password
    (other / server.AUTH_INI).chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        server.ensure_auth_config(other)


@contextmanager
def _logged_in_browser_proxy(upstream: str, user: str, password: str):
    """A loopback proxy that adds the Basic login to every request, as a browser does once the
    user answered its login prompt (headless Chromium cannot answer one)."""
    token = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            req = urllib.request.Request(upstream + self.path, data=body, method=self.command)
            for k, v in self.headers.items():
                if k.lower() not in ("host", "authorization", "content-length", "connection", "origin", "referer"):
                    req.add_header(k, v)
            req.add_header("Authorization", token)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, headers, data = r.status, r.headers.items(), r.read()
            except urllib.error.HTTPError as e:
                status, headers, data = e.code, e.headers.items(), e.read()
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_client_credentials_file_of_the_user_is_left_alone(tmp_path):
    root, home = tmp_path / "srv", tmp_path / "home"
    root.mkdir()
    server.ensure_auth_config(root)
    mine = home / ".mlflow" / "credentials"
    mine.parent.mkdir(parents=True)
    mine.write_text("[mlflow]\nmlflow_tracking_username = me\nmlflow_tracking_password = secret\n")
    path, what = server.install_client_credentials(root, home)
    assert "left alone" in what and "secret" in mine.read_text()
    mine.unlink()
    assert server.install_client_credentials(root, home)[1] == "written"
    assert server.install_client_credentials(root, home)[1] == "already there"


def test_jobs_starting_together_share_one_upstream_run(tmp_path, monkeypatch, tiny_raw, store, request):
    """Train jobs at the same moment on a fresh store, all needing the same upstream run (a
    binning on SQLite, a VQ-VAE on PostgreSQL: one find-or-run serves both) and logging the same
    dataset: all finish, and one upstream run per settings exists. (Two jobs suffice for the
    race; test_leases races more, in threads.)"""
    if store:
        _serve(tmp_path, monkeypatch, backend=store)
    else:  # the shared server, logged in as the grid's jobs are (EDIT on this experiment, no delete)
        request.getfixturevalue("server_exp")
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    env = {**os.environ}
    toks = ["vqvae"] if store else ["binned"]
    cmds = [[sys.executable, "-m", "steps.train", "--tokenizer", tok, "--seed", str(seed), "--data", str(tiny_raw), *TINY,
             "--codebook-size", "16", "--vqvae-epochs", "1", "--vqvae-max-events", "300", "--system-metrics", "false"]
            for tok, seed in itertools.product(toks, [0, 1])]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in cmds]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    every = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    runs = [r for r in every if r.data.tags.get("claim.result") != "lost"]  # a claim that lost the race: ended, kept (no delete right)
    assert all(r.info.status == "KILLED" for r in every if r not in runs)
    by_step = {s: [r for r in runs if r.data.tags.get("step") == s] for s in ("binning", "vqvae", "train")}
    assert len(by_step["binning"]) == (0 if store else 1) and len(by_step["vqvae"]) == (1 if store else 0), {k: len(v) for k, v in by_step.items()}
    assert all(r.info.status == "FINISHED" for r in runs)
    trains = by_step["train"]
    assert len(trains) == len(cmds) and all(r.inputs.dataset_inputs for r in trains)
    if not store:
        assert {r.data.params["binning_run_id"] for r in trains} == {by_step["binning"][0].info.run_id}
    else:
        assert {r.data.params["vqvae_run_id"] for r in trains if r.data.params["tokenizer"] == "vqvae"} == {by_step["vqvae"][0].info.run_id}


def test_a_dead_claimant_does_not_block(mlflow_env, tiny_raw):
    """A job killed while it held the claim of a binning (its process is gone) is taken over."""
    from thesis_mlflow.learn import data
    from thesis_mlflow.pipeline.upstream import find_or_run
    from thesis_mlflow.spec import BinningSpec
    from thesis_mlflow.tracking import leases

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name("test-exp").experiment_id
    key = leases.claim_key("binning", BinningSpec().reuse_params(data.sha256(tiny_raw)))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = str(leases.Holder(socket.gethostname(), gone.pid))
    dead = c.create_run(exp, run_name="binning-dead", tags={"step": "binning", leases.CLAIM_TAG: key, leases.OWNER: holder}).info.run_id
    assert leases.write_once(dead, "lease.g1", holder)
    c.set_tag(dead, "lease.result.g1", "won")
    t0 = time.time()
    rid, path = find_or_run(BinningSpec(str(tiny_raw)))
    assert rid != dead and path.is_file() and time.time() - t0 < 60
    assert c.get_run(dead).info.status == "FAILED" and c.get_run(rid).info.status == "FINISHED"
    assert find_or_run(BinningSpec(str(tiny_raw)))[0] == rid  # and reused from then on


LOGGER = """
import sys, time
from thesis_mlflow.tracking import runs as tracking
with tracking.step_run("train", run_name="outage") as run:
    print(run.info.run_id, flush=True)
    for epoch in range(1, 31):
        tracking.log_metrics({k: epoch / 100 for k in ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "events_per_s")}, step=epoch)
        time.sleep(0.2)
print("done", flush=True)
"""


@pytest.mark.slow  # starts a server: not in the quick loop (test-fast)
def test_jobs_survive_a_server_restart(tmp_path, monkeypatch):
    """The server is SIGKILLed mid-run and restarted: the job rides out the outage and finishes, every epoch once."""
    assert tracking.retry_budget_s() >= 60
    port = server.free_port()
    srv = _serve(tmp_path, monkeypatch, port=port)
    job = subprocess.Popen([sys.executable, "-c", LOGGER], cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = job.stdout.readline().strip()
    c = mlflow.MlflowClient()
    deadline = time.monotonic() + 120
    while len(c.get_metric_history(run_id, "val_auc")) < 3:
        assert time.monotonic() < deadline and job.poll() is None, "the logging job made no progress"
        time.sleep(0.1)
    os.killpg(srv.pid, signal.SIGKILL)
    down = time.monotonic()
    while True:  # until the dead server's processes have let go of the port (a deadline, not a fixed sleep)
        try:
            server.check_port_free("127.0.0.1", port)
            break
        except server.PortTaken:
            assert time.monotonic() - down < 60, "the killed server's port stayed taken for a minute"
            time.sleep(0.2)
    server.start(tmp_path / "srv", port=port)  # the restart itself takes seconds: that is the outage
    assert job.poll() is None, f"the job gave up during a {time.monotonic() - down:.0f} s outage"
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0 and "done" in out, err[-2000:]
    for k in ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "events_per_s"):
        assert [m.step for m in c.get_metric_history(run_id, k)] == list(range(1, 31)), k
    assert c.get_run(run_id).info.status == "FINISHED"


def test_bad_upstream_run_id_and_bad_grid_key(mlflow_env, tiny_raw, tmp_path):
    from click.testing import CliRunner

    from steps.cli import main

    res = CliRunner().invoke(main, ["train", "--tokenizer", "vqvae", "--vqvae-run-id", "0123456789abcdef", "--data", str(tiny_raw), *TINY])
    assert res.exit_code == 1 and "run '0123456789abcdef' not found" in res.output and "Traceback" not in res.output
    doc = yaml.safe_load((ROOT / "configs/grids/binning_vs_direct.yaml").read_text())
    doc["factors"]["poolng"] = doc["factors"].pop("pooling")
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(main, ["grid", "run", str(g), "--scale", "demo", "--dry-run"])
    assert res.exit_code == 1 and "unknown keys ['poolng']" in res.output and "allowed" in res.output
    doc["scaless"] = doc.pop("scales")
    g.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(main, ["grid", "run", str(g), "--scale", "demo", "--dry-run"])
    assert res.exit_code == 1 and "unknown keys ['scaless']" in res.output, res.output


def test_a_failing_claimant_releases_its_claim(mlflow_env, tmp_path):
    """A job whose upstream step fails (here: a broken input) ends its claim FAILED at once, so the
    jobs waiting for it take over without waiting for the heartbeat to go stale."""
    from thesis_mlflow.pipeline.upstream import find_or_run
    from thesis_mlflow.spec import BinningSpec

    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError):
        find_or_run(BinningSpec(str(bad)))
    runs = mlflow.search_runs(experiment_names=["test-exp"], filter_string="tags.step = 'binning'", output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"] and leases.CLAIM_TAG in runs[0].data.tags


def test_a_runs_artifacts_are_listed_and_fetched_at_its_own_location(server_exp, tmp_path, monkeypatch):
    """Against a real server with its login: listing a run's artifacts is one request once the
    run's artifact location is known (MLflow's ``list_artifacts(run_id)`` goes through ``runs:/``:
    the run fetched again and its logged models searched, three requests), and a download is a
    listing and the file. Planted: ``artifact_paths`` through ``MlflowClient.list_artifacts``
    (3 requests a listing), or ``artifact_path`` through ``download_artifacts(run_id=...)``,
    each fails it."""
    import requests.sessions

    c = mlflow.MlflowClient()
    run = c.create_run(c.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id)
    rid = run.info.run_id
    f = tmp_path / "test_scores.npz"
    f.write_bytes(b"scores")
    c.log_artifact(rid, str(f), "eval")
    calls = []
    real = requests.sessions.Session.request

    def counted(self, method, url, *a, **k):
        calls.append(url.split("/api/", 1)[-1].split("?")[0])
        return real(self, method, url, *a, **k)

    monkeypatch.setattr(requests.sessions.Session, "request", counted)
    assert queries.artifact_paths(rid, "eval", run.info.artifact_uri) == ["eval/test_scores.npz"]
    assert done.has_scores(rid, run.info.artifact_uri) and not queries.has_artifact(rid, "eval/other.npz", run.info.artifact_uri)
    assert len(calls) == 3 and not any("logged-models" in u for u in calls), calls
    calls.clear()
    assert queries.artifact_paths(rid, "eval") == ["eval/test_scores.npz"]  # by id: the location asked once, then kept
    assert queries.artifact_paths(rid) == ["eval"]
    assert len(calls) == 3, calls
    calls.clear()
    got = queries.artifact_path(rid, "eval/test_scores.npz", dst=tmp_path / "dl")
    assert got.read_bytes() == b"scores" and got.parent.parent == tmp_path / "dl"
    # a listing and the file (and MLflow's own server-info, asked once per process before a first download)
    assert len([u for u in calls if "server-info" not in u]) == 2 and not any("logged-models" in u or "runs/get" in u for u in calls), calls
