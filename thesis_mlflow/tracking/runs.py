"""Writing to MLflow (with ``steps/``): the store and its retried client, the experiment, step
runs, fenced writes, inputs and the uploads of each run's own log (the file itself is
``runlog``'s); reading is ``queries``', which code made a run ``provenance``'s, when a train run
counts as finished ``done``'s (the one rule). Sections, in order: the store, experiment and step
runs; fencing and writes.

Conventions (docs/design.md section 5): tracking URI from ``MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db`` in the working directory; experiment ``4t-tokenization`` unless
``MLFLOW_EXPERIMENT_NAME`` is set; every run tagged ``step``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from thesis_mlflow.errors import BadInput, BadSetting, LeaseLost, RunConflict, Unavailable, UserError
from thesis_mlflow.secret import mask
from thesis_mlflow.tracking import peer
from thesis_mlflow.tracking.provenance import DIFF_ARTIFACT, code_state, provenance_tags
from thesis_mlflow.tracking.runlog import ERROR_CLASS, ERROR_MESSAGE, RunLog, one_line, stack

log = logging.getLogger(__name__)
peer.install()  # every new loopback connection of this process is checked before the login goes out on it

# --------------------------------------------------------------------------- the store, experiment and step runs
DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "4t-tokenization"
# A job keeps retrying a dead tracking server (a restart, a login-node reboot) for up to ~8 minutes (489 s, below)
# before it fails: MLflow's exponential backoff, 7 retries x factor 2 (0, 4, 8, ... 64 s, then
# 120 s, urllib3's cap per wait). A retried write is stored once (the server drops an
# identical metric row), so no epoch is lost or doubled. Each attempt waits at most 30 s for
# an answer (MLflow's default, 120 s, would let one hanging request last 16 minutes; a
# checkpoint of the thesis model is ~5 MB). Users may set other values.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
BACKOFF_MAX_S = 120.0  # urllib3's cap on one wait


def retry_budget_s() -> float:
    """The longest one request keeps trying against a server that is down or hangs, in one place:
    n + 1 attempts of up to T s each, and n - 1 waits between them (urllib3 retries the first at
    once), f * 2^i s for i = 1 .. n - 1 plus up to ``jitter`` s, each capped at 120 s.
    Defaults (n 7, f 2, T 30, jitter 1): 8 x 30 + (5 + 9 + 17 + 33 + 65 + 120) = 489 s."""
    n = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    f = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    t = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    jitter = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "1.0"))
    waits = sum(min(f * 2**i + jitter, BACKOFF_MAX_S) for i in range(1, n))
    return (n + 1) * t + waits


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def client(uri: str | None = None) -> MlflowClient:
    """The MLflow client of this process, every call through ``retrying``: an overloaded server's
    refusal is waited for, a read's as a write's. ``uri``: a store fixed by the caller (see
    ``raw_client``)."""
    return _Retried(raw_client(uri))  # type: ignore[return-value] - MlflowClient's calls, each retried


def raw_client(uri: str | None = None) -> MlflowClient:
    """The client without the overload retry: only for a call whose next repetition is its retry
    (a lease's periodic beat). Without ``uri``, the environment's store, made this process's
    default; with it, that store only (a background thread keeps the store it was started on and
    never re-reads the environment: after a change there it would write elsewhere, and without
    one, into ``./mlflow.db`` of whatever folder the process is in)."""
    if uri is not None:
        return MlflowClient(uri)
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def ensure_experiment(name: str | None = None) -> str:
    """Create the experiment if needed and return its id.

    Called once before parallel jobs start: concurrent first use of a fresh SQLite store
    can race on schema creation.
    """
    name = name or experiment_name()
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    elif exp.lifecycle_stage == "deleted":
        try:
            c.restore_experiment(exp.experiment_id)
        except mlflow.exceptions.MlflowException as e:
            if "PERMISSION_DENIED" not in str(e) and "403" not in str(e):
                raise
            raise BadInput(f"experiment {name!r} is deleted and this login may not restore it: restore it with the admin login "
                           f"(MLflow UI, or `mlflow experiments restore --experiment-id {exp.experiment_id}`) or use another "
                           "MLFLOW_EXPERIMENT_NAME") from e
    return exp.experiment_id


def current_experiment_id() -> str:
    """The experiment of this process: the one `mlflow run` chose, else ours (created if needed)."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or ensure_experiment()


def reach_store() -> str:
    """``current_experiment_id``, or one line naming the store (masked) and why it cannot be
    reached: a host that does not resolve is said at once (MLflow's own retries would spend
    minutes on it, then end in the database driver's traceback)."""
    uri = tracking_uri()
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise BadSetting(f"MLFLOW_TRACKING_URI {mask(uri)} is not a URI ({e})") from e
    if host and "://" in uri and not uri.startswith(("file:", "sqlite:")):
        try:
            socket.getaddrinfo(host, port)
        except (socket.gaierror, UnicodeError) as e:
            raise Unavailable(f"tracking store {mask(uri)} cannot be reached: its host {host!r} does not resolve "
                              f"({getattr(e, 'strerror', None) or e})") from e
    try:
        return current_experiment_id()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store's driver raises, said in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise Unavailable(f"tracking store {mask(uri)} cannot be reached: {type(e).__name__}: {mask(first)}") from e


@contextmanager
def step_run(step: str, run_name: str | None = None, tags: dict | None = None, run_id: str | None = None,
             use_env: bool = True, log_system_metrics: bool = False, lease=None) -> Iterator[mlflow.ActiveRun]:
    """Start (or attach to) the run of one step.

    ``mlflow run`` and the grid driver hand us a run id through ``MLFLOW_RUN_ID``: we attach
    to it, so the command a cluster job runs and the command a user types log alike.
    The run ends FAILED on an exception and KILLED on Ctrl-C, never silently FINISHED.
    ``lease`` (``leases.Lease``): verified before the run is marked FINISHED; when this process
    lost it (``LeaseLost``) the run is left as it is, for the process that holds it now.
    """
    raw_client()  # sets the tracking URI
    if use_env:  # an upstream step started from inside another step makes its own run
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
    tags = {"step": step, **(tags or {})}
    # An upstream step inside another (`mlflow run`'s) must neither take nor consume the outer
    # step's MLFLOW_RUN_ID (ending a run unsets it; start_run() without an id would adopt it):
    # it is set aside and put back when this run ends.
    saved = os.environ.pop("MLFLOW_RUN_ID", None) if not (use_env and run_id) else None
    if run_id:
        try:
            run = retrying(mlflow.start_run, run_id=run_id, log_system_metrics=log_system_metrics)
        except BaseException:
            _restore_run_id(saved)
            raise
        if run_name:
            tags["mlflow.runName"] = run_name
        exp_name = client().get_experiment(run.info.experiment_id).name
        if exp_name != experiment_name() and "MLFLOW_EXPERIMENT_NAME" not in os.environ and exp_name == "Default":
            log.warning(
                "this run logs to experiment 'Default' (mlflow run without --experiment-name); "
                "use --experiment-name %s or export MLFLOW_EXPERIMENT_NAME=%s to compare it with the grid",
                DEFAULT_EXPERIMENT, DEFAULT_EXPERIMENT,
            )
    else:
        try:
            run = retrying(mlflow.start_run, experiment_id=current_experiment_id(), run_name=run_name, log_system_metrics=log_system_metrics)
        except BaseException:
            _restore_run_id(saved)
            raise
    runlog = RunLog(step)  # logs/<step>.log of this run: uploaded at the end whatever happens
    stack().append(runlog)
    rid = run.info.run_id
    fencing = fenced(lease) if lease is not None else contextlib.nullcontext()
    try:
        with fencing:
            set_tags({**provenance_tags(step), **tags})
            code = code_state()
            if code.dirty:  # which uncommitted changes ran: the diff beside the run
                retrying(mlflow.log_text, code.diff, DIFF_ARTIFACT)
            yield run
            fence(rid)  # still ours: only now may the run be marked FINISHED
            upload_log(runlog)
            end_run(rid, RunStatus.FINISHED)
    except LeaseLost:
        detach_run()  # another process holds the run now: not one more byte from this one
        raise
    except BaseException as e:
        if not _end_failed(rid, runlog, e, RunStatus.KILLED if isinstance(e, KeyboardInterrupt) else RunStatus.FAILED):
            detach_run()
            raise LeaseLost(f"run {rid}: lost its lease while failing ({type(e).__name__}); left to its holder") from e
        raise
    finally:
        stack().remove(runlog)
        runlog.close()
        _restore_run_id(saved)


def _end_failed(run_id: str, runlog, e: BaseException, status) -> bool:
    """Record a failure on the run (error tags, log, status) only while this process may write
    it; False (nothing written) when a fence says another process holds it now."""
    try:
        fence(run_id)
    except LeaseLost:
        return False
    except Exception as err:  # noqa: BLE001 - the server is unreachable: try the writes anyway (they retry)
        log.debug("could not check the lease before recording a failure: %s", err)
    log_failure(runlog, e)
    upload_log(runlog)
    end_run(run_id, status)
    return True


def end_run(run_id: str, status) -> None:
    """End the active run ``run_id`` with ``status`` (a ``RunStatus``), the write retried under
    overload. Not ``mlflow.end_run``: it leaves the run before writing its status, so a write the
    server refused could not be sent again, and the failure's own tags would then start a new run."""
    client().set_terminated(run_id, RunStatus.to_string(status))
    detach_run()


# --------------------------------------------------------------------------- fencing and writes

# A run this process writes under a lease (a train run, an upstream claim, a grid's parent) is
# fenced: before each write batch to it (params, metrics, tags, artifacts, the log, the final
# status) the tracking server is asked whether this process still holds the lease, and the
# write is not made when it does not (``LeaseLost``). Why a check per batch rather than a
# generation stamped on every write for readers to filter: MLflow's artifacts and statuses
# cannot carry one, and every reader (the UI, the report, a user's notebook) would have to know.
# The window left is one batch long (writes within FENCE_BATCH_S of the server's confirmation,
# on this process's monotonic clock, which runs on while it is stopped), against a holder that
# paused for minutes (a Condor suspend, an NFS stall) and woke up writing.
FENCE_BATCH_S = 1.0  # writes within this long after a confirmation form one batch (one check per epoch, not per write)
_FENCES: dict[str, object] = {}
_FENCE_LOCK = threading.Lock()


def add_fence(lease) -> None:
    """From now on, writes to ``lease.run_id`` from this process go through ``lease.verify()``."""
    with _FENCE_LOCK:
        _FENCES[lease.run_id] = lease


def drop_fence(lease) -> None:
    with _FENCE_LOCK:
        if _FENCES.get(lease.run_id) is lease:
            del _FENCES[lease.run_id]


@contextmanager
def fenced(lease) -> Iterator[None]:
    """``add_fence`` while the body runs."""
    add_fence(lease)
    try:
        yield
    finally:
        drop_fence(lease)


def fence(run_id: str | None = None) -> None:
    """``LeaseLost`` when ``run_id`` (default: the active run) is fenced and no longer ours."""
    if run_id is None:
        run = mlflow.active_run()
        run_id = run.info.run_id if run else None
    lease = _FENCES.get(run_id) if run_id else None
    if lease is not None:
        lease.verify(max_age=FENCE_BATCH_S)


def upload_log(rl) -> None:
    """A run log (``RunLog``) so far as ``logs/<step>.log`` of the active run (never fails
    the step, except with ``LeaseLost``: a run fenced to another process gets no upload)."""
    try:
        rl.handler.flush()
        rl.uploaded = time.monotonic()
        log_artifact(rl.path, "logs")
    except LeaseLost:
        raise
    except Exception as e:  # noqa: BLE001 - a log upload must not take the training down
        log.debug("log upload failed: %s", e)


# A train run offers its log after every epoch; it goes up at most this often, counted from when
# the log opened (and always at the run's end). A thesis epoch takes minutes, so each goes up; a
# demo cell's sub-second epochs sent two uploads per cell that nobody could open before the final
# one (72 cells: 144 of its ~4,200 requests, each a PUT of the whole file through the server).
LOG_EVERY_S = 30.0


def upload_current_log() -> None:
    """This thread's innermost active step log, uploaded (a train run calls it every epoch)
    unless it opened or went up less than ``LOG_EVERY_S`` ago."""
    if stack():
        rl = stack()[-1]
        if time.monotonic() - rl.uploaded < LOG_EVERY_S:
            return
        upload_log(rl)


def log_failure(rl, e: BaseException) -> None:
    """Traceback into the run log, error tags on the active run."""
    rl.traceback(e)
    try:
        set_tags({ERROR_CLASS: type(e).__name__, ERROR_MESSAGE: one_line(e)})
    except Exception as err:  # noqa: BLE001
        log.debug("could not tag the failure: %s", err)


def record_failure(run_id: str, e: BaseException, runlog) -> None:
    """A failure before the run could be started here (building a cell's inputs): recorded on the
    existing run as a failure inside it would be (FAILED, ``error.class`` / ``error.message``, its
    log), so a grid's cell never fails where nobody looks. Fenced like every write."""
    fence(run_id)
    c = client()
    runlog.traceback(e)
    runlog.handler.flush()
    c.set_tag(run_id, ERROR_CLASS, type(e).__name__)
    c.set_tag(run_id, ERROR_MESSAGE, one_line(e))
    c.log_artifact(run_id, str(runlog.path), "logs")
    c.set_terminated(run_id, "FAILED")


def detach_run() -> None:
    """Leave the active run without touching its status (another process holds it now, or
    ``end_run`` has written it): MLflow's own end_run (also registered at exit) would mark it
    FINISHED."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()  # MLflow's private stack of active runs: no public way to leave one untouched
    if stack:
        run = stack.pop()
        os.environ.pop("MLFLOW_RUN_ID", None)
        monitor = fluent.run_id_to_system_metrics_monitor.pop(run.info.run_id, None)
        if monitor is not None:
            monitor.finish()


def _restore_run_id(saved: str | None) -> None:
    if saved is not None:
        os.environ["MLFLOW_RUN_ID"] = saved


def log_params(params: dict) -> None:
    """Log params as strings (booleans as ``true``/``false``) on the active run.

    ``mlflow run`` has already logged the entry point's own parameters as the user spelled
    them (``1e-4``, ``data/x.h5``): a key already there with the same meaning is left as is,
    a key with another value is an error naming both (a resumed run started differently).
    """
    run = mlflow.active_run()
    existing = client().get_run(run.info.run_id).data.params if run else {}
    clash = {k: (existing[k], fmt(v)) for k, v in params.items() if k in existing and not same_value(existing[k], v)}
    if clash:
        raise RunConflict(f"run {run.info.run_id} already has other values for {clash} (logged, now)")
    new = {k: fmt(v) for k, v in params.items() if k not in existing}
    if new:
        fence()
        retrying(mlflow.log_params, new)


# An overloaded server answers some writes with an error instead of a slow success: its
# connection pool timed out ("QueuePool limit ... reached", MLflow reports it as BAD_REQUEST, so
# the HTTP layer does not retry it) or SQLite was busy. Nothing was written then: a job waits
# and sends the same write again (identical metric rows are stored once anyway).
TRANSIENT = ("QueuePool limit", "database is locked", "could not obtain lock", "too many clients", "remaining connection slots")
WRITE_RETRIES = 8


def retrying(fn, *args, transient: tuple[str, ...] = TRANSIENT, **kwargs):
    """``fn(*args, **kwargs)``, again after an error naming one of ``transient`` (default: a
    server overload), with backoff 1, 2, 4 ... 30 s."""
    for attempt in range(WRITE_RETRIES):
        try:
            return fn(*args, **kwargs)
        except mlflow.exceptions.MlflowException as e:
            if attempt == WRITE_RETRIES - 1 or not any(t in str(e) for t in transient):
                raise
            wait = min(2.0**attempt, 30.0)
            log.warning("tracking server overloaded (%s); retrying in %.0f s", (str(e).splitlines() or [type(e).__name__])[0][:120], wait)
            time.sleep(wait)


class _Retried:
    """The MLflow client with every call through ``retrying`` (an overloaded server is waited
    for, not a failed write)."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name: str):
        fn = getattr(self._c, name)
        if not callable(fn):
            return fn
        return lambda *args, **kwargs: retrying(fn, *args, **kwargs)


def set_experiment_tag(experiment_id: str, key: str, value: str) -> None:
    client().set_experiment_tag(experiment_id, key, value)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Metrics on the active run, as floats (one timestamp for all tries: a retried write is stored once)."""
    ts = int(time.time() * 1000)
    run_id = mlflow.active_run().info.run_id
    batch = [mlflow.entities.Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
    fence(run_id)
    client().log_batch(run_id, metrics=batch)


def set_tags(tags: dict) -> None:
    """Tags on the active run (retried under overload like every write)."""
    fence()
    retrying(mlflow.set_tags, {k: fmt(v) for k, v in tags.items()})


def log_artifact(local: str | Path, artifact_path: str | None = None) -> None:
    fence()
    retrying(mlflow.log_artifact, str(local), artifact_path=artifact_path)


def log_dict(d: dict, artifact_file: str) -> None:
    fence()
    retrying(mlflow.log_dict, d, artifact_file)


def fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def same_value(logged: str, value) -> bool:
    """Same meaning, not same spelling: ``1e-4`` == ``0.0001``, ``True`` == ``true``,
    ``data/x.h5`` == ``/project/data/x.h5`` (relative to the working directory), ``''`` == ``""``."""
    a, b = str(logged).strip("'\""), fmt(value)
    if a.lower() == b.lower():
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        pass
    if a and b and ("/" in a or "/" in b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def log_file_input(path: str | Path, digest: str, name: str | None = None, context: str = "training") -> None:
    """Log a file dataset with ``mlflow.log_input`` (name, digest, source path)."""
    path = Path(path).resolve()
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path))
    ds = MetaDataset(source=source, name=name or path.name, digest=digest[:36])
    fence()
    # Jobs started together (a pack of cells, a Condor wave) insert the same new dataset at once;
    # the losers get a unique-constraint error. The row exists then: the next try links to it.
    retrying(mlflow.log_input, ds, context=context, transient=(*TRANSIENT, "UNIQUE constraint", "duplicate key"))
