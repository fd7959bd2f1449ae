"""Shared fixtures: tiny synthetic files and an isolated MLflow store per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thesis_mlflow.learn import data, synthetic


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Test scores cached by run id go to a folder of this test session, never the user's ~/.cache."""
    import os

    os.environ["THESIS_MLFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["THESIS_MLFLOW_OUTPUTS"] = str(tmp_path_factory.mktemp("outputs"))  # worker logs and report pages: never into the checkout
    # the checkout under test may have uncommitted changes while someone edits it (a clean clone in CI):
    # the tests drive grids all the same; tests/test_provenance.py checks the refusal on a repository of its own
    os.environ["THESIS_MLFLOW_ALLOW_DIRTY"] = "1"


@pytest.fixture(scope="session")
def tiny_splits():
    return synthetic.generate(synthetic.GeneratorConfig(n_events=3000, seed=1))


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_splits):
    path = tmp_path_factory.mktemp("raw") / "tiny.h5"
    data.write_raw(path, tiny_splits)
    return path


# Tests that need a tracking store, a server or a trained model are integration tests: marked
# ``slow`` here by the fixtures they use (and by hand where a test starts processes), so that
# ``pytest -m "not slow"`` is the quick loop while editing.
SLOW_FIXTURES = {"mlflow_env", "shared_server", "server_exp", "live_server", "filled_server", "grid_on_server", "store", "filled_store",
                 "binned_files", "jobs_home"}


# `make test` runs two workers with --dist loadgroup: one group per test file (what loadfile
# does: a module's fixtures and servers stay in one worker), except that every file using the
# session's shared server is one group, so that server starts once (each start is 15-20 s
# here); and the groups go out longest first, so both workers stay busy to the end.
SHARED_SERVER = {"shared_server", "server_exp"}
LONGEST_FIRST = ("test_slurm.py", "test_serve_safety.py", "test_stacked.py", "test_grid.py", "test_train.py", "test_stats.py", "test_packing.py",
                 "test_answer.py", "test_report.py", "test_streams.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids: after it they would be ignored
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("simulation"):
            item.add_marker(pytest.mark.slow)  # simulations: thousands of simulated grids, not the quick loop either
    shared = {item.path for item in items if SHARED_SERVER & set(getattr(item, "fixturenames", ()))}

    def group(item) -> str:
        return "shared-server" if item.path in shared else item.path.name

    def rank(g: str) -> int:
        return 0 if g == "shared-server" else 1 + (LONGEST_FIRST.index(g) if g in LONGEST_FIRST else len(LONGEST_FIRST))

    first_seen = {}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
        first_seen.setdefault(group(item), len(first_seen))
    items.sort(key=lambda it: (rank(group(it)), first_seen[group(it)]))  # stable: a file's own order kept


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """xdist carries each test's group to its scheduler as an ``@group`` suffix of the test id;
    pytest 9.2 ignores that write (pytest-xdist#1386, open; constraints.txt pins 9.1.1). The
    tests are then dealt out one by one and each worker sets up every module's fixtures and
    servers again: said, not silently slower."""
    import warnings

    if getattr(session.config.option, "loadgroup", False) and session.items and not any("@" in it.nodeid for it in session.items):
        warnings.warn(f"--dist loadgroup: the test groups did not take (pytest {pytest.__version__}; with 9.2 see pytest-xdist#1386): "
                      "each worker sets up every module's fixtures and servers again; install the pins: "
                      "pip install -c constraints.txt -e '.[dev]'", pytest.PytestConfigWarning, stacklevel=1)


@pytest.fixture(scope="session")
def template_store(tmp_path_factory):
    """An empty SQLite tracking store with MLflow's schema, made once: creating one runs ~40
    migrations (2-4 s), copying the file takes milliseconds. (On a bare GPU node without MLflow,
    the tests that need a store skip, saying so.)"""
    mlflow = pytest.importorskip("mlflow", reason="needs MLflow (a bare GPU node: carry its wheels to run these)")

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture()
def recompile_limit():
    """torch.compile's recompile limit at its default of 8 for one test, and a reader of it; put
    back afterwards (not monkeypatch: undoing an alias of torch's config module left it broken)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    before = getattr(cfg, name)
    setattr(cfg, name, 8)
    yield lambda: getattr(cfg, name)
    setattr(cfg, name, before)


def sqlite_store(tmp_path, monkeypatch, template_store, experiment: str) -> str:
    """A fresh SQLite tracking store in ``tmp_path`` with one experiment, this process pointed at
    it (no leaking run ids; the working directory is ``tmp_path``); returns its URI. Used by the
    fixtures ``mlflow_env`` (integration tests) and ``local_store`` (the quick loop)."""
    import shutil

    import mlflow

    shutil.copyfile(template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    # created here with its artifacts under this test's folder: a process started in the checkout
    # (cwd=ROOT) would otherwise make it with ./mlruns there
    mlflow.MlflowClient(uri).create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def login_from_home(srv, home: Path, monkeypatch, experiment: str, auth: bool = True) -> None:
    """This test's MLflow client (and every process it starts) talks to ``srv`` as a user's jobs
    do: the jobs login in ``home``'s ``~/.mlflow/credentials`` (HOME points there), nothing secret
    in the environment, experiment ``experiment``."""
    import mlflow

    from thesis_mlflow.server import logins

    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    if auth:
        logins.install_client_credentials(srv.root, home, srv.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    mlflow.set_tracking_uri(srv.uri)


def end_active_runs() -> None:
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture()
def mlflow_env(tmp_path, monkeypatch, template_store):
    """A fresh SQLite tracking store and experiment ``test-exp`` for one test; its URI."""
    yield sqlite_store(tmp_path, monkeypatch, template_store, "test-exp")
    end_active_runs()


def write_colleague_layouts(binned, d):
    """The colleague's pre-binned file as it comes, made from our binned file ``binned``: one
    combined split, other key names, no attributes. ``combined.h5`` keeps the raw file's row
    order (tokens and labels stored as floats, as some scripts do); ``shuffled.h5`` does not."""
    import h5py

    from thesis_mlflow.learn import prebinned

    x, y = prebinned.read_tokens(binned).stacked()
    with h5py.File(d / "combined.h5", "w") as f:
        f["tokens"], f["labels"] = x.astype(np.float32), y.astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(y))
    with h5py.File(d / "shuffled.h5", "w") as f:
        f["data"], f["y"] = x[perm], y[perm]
    return d / "combined.h5", d / "shuffled.h5"


def make_event_rows(objs, met=50.0, met_phi=0.1):
    """One raw row from a list of (id, E, pT, eta, phi)."""
    row = np.zeros(data.WIDTH, np.float32)
    for i, (pid, E, pt, eta, phi) in enumerate(objs):
        row[i] = pid
        row[20 + 4 * i : 24 + 4 * i] = (E, pt, eta, phi)
    row[18], row[19] = met, met_phi
    return row


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory):
    """One real tracking server with its login on, as users run it, for the modules whose tests
    can share it; each test uses its own experiment (``server_exp``) and logs in as the jobs do."""
    from thesis_mlflow.server import process as server

    s = server.start(tmp_path_factory.mktemp("shared-srv") / "srv", auth=True, workers=2)
    yield s
    s.stop()


@pytest.fixture()
def server_exp(shared_server, monkeypatch, request):
    """A fresh experiment of this test on the shared server, made by the admin with EDIT for the
    jobs login (as ``serve`` gives the study's experiment); the MLflow environment points at it
    and logs in as the jobs user, with exactly the rights a grid job has."""
    import mlflow

    from thesis_mlflow.server import logins

    name = f"t-{request.node.name}"[:200]
    exp_id = logins.provision_jobs_user(shared_server.uri, shared_server.root, name)
    user, password = logins.jobs_credentials(shared_server.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)  # the environment, for this test's processes: a test HOME holds no login
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(k, raising=False)
    mlflow.set_tracking_uri(shared_server.uri)
    yield exp_id
    while mlflow.active_run():
        mlflow.end_run()


# --------------------------------------------------------------------------- nothing into the checkout
# Every test writes under pytest's temporary folders. What a test run leaves in the checkout
# (git's view, ignored files included: ./mlruns, mlflow.db, outputs/) fails the run, naming it:
# a user's next `make demo` or `git status` would otherwise find a stranger's runs there.
_CHECKOUT = Path(__file__).resolve().parents[1]
_EXPECTED = (".pytest_cache/", "__pycache__/")  # pytest's own cache; byte code


def _checkout_entries() -> set[str] | None:
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=_CHECKOUT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # not a git checkout (an unpacked sdist): nothing to compare
    return {ln[3:] for ln in out.stdout.splitlines() if ln[:2] in ("??", "!!") and not ln[3:].endswith(_EXPECTED)}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist) compares once
        session.config.stash[_BEFORE] = _checkout_entries()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    after = _checkout_entries() or set()
    left = sorted(after - before)
    if left:
        session.config.get_terminal_writer().line(f"tests left files in the checkout {_CHECKOUT}: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()
