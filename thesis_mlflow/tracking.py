"""Everything that talks to MLflow (with ``steps/``): store, experiment, runs, reuse, inputs.

Conventions (DESIGN.md section 5): tracking URI from ``MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db`` in the working directory; experiment ``4t-tokenization`` unless
``MLFLOW_EXPERIMENT_NAME`` is set; every run tagged ``step``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "4t-tokenization"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def client() -> MlflowClient:
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
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def current_experiment_id() -> str:
    """The experiment of this process: the one `mlflow run` chose, else ours (created if needed)."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or ensure_experiment()


@contextmanager
def step_run(step: str, run_name: str | None = None, tags: dict | None = None, run_id: str | None = None,
             use_env: bool = True, log_system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Start (or attach to) the run of one step.

    ``mlflow run`` and the grid driver hand us a run id through ``MLFLOW_RUN_ID``: we attach
    to it, so the command a cluster job runs and the command a user types log alike.
    The run ends FAILED on an exception and KILLED on Ctrl-C, never silently FINISHED.
    """
    client()  # sets the tracking URI
    if use_env:  # an upstream step started from inside another step makes its own run
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
    tags = {"step": step, **(tags or {})}
    saved = None  # an outer step's MLFLOW_RUN_ID, put back when this upstream run ends
    if run_id:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=log_system_metrics)
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
        # mlflow.start_run() would adopt (and delete) MLFLOW_RUN_ID from the environment: an
        # upstream step started inside `mlflow run` must neither take nor consume that id.
        # (mlflow.end_run() unsets it as well: it is put back when this run ends.)
        saved = os.environ.pop("MLFLOW_RUN_ID", None)
        try:
            run = mlflow.start_run(experiment_id=current_experiment_id(), run_name=run_name, log_system_metrics=log_system_metrics)
        except BaseException:
            _restore_run_id(saved)
            raise
    try:
        mlflow.set_tags(tags)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        _restore_run_id(saved)


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
        raise ValueError(f"run {run.info.run_id} already has other values for {clash} (logged, now)")
    new = {k: fmt(v) for k, v in params.items() if k not in existing}
    if new:
        mlflow.log_params(new)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Metrics on the active run, as floats."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(local: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(local), artifact_path=artifact_path)


def log_dict(d: dict, artifact_file: str) -> None:
    mlflow.log_dict(d, artifact_file)


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
    for attempt in range(5):
        try:
            mlflow.log_input(ds, context=context)
            return
        except mlflow.exceptions.MlflowException as e:
            # Jobs started together (a pack of cells, a Condor wave) insert the same new dataset at
            # once; the losers get a unique-constraint error. The row exists then: link to it.
            if "UNIQUE constraint" not in str(e) and "duplicate key" not in str(e) or attempt == 4:
                raise
            log.info("dataset %s was logged by another job at the same moment; linking to it", ds.name)
            time.sleep(0.2 * (attempt + 1))


def quote(value: str) -> str:
    """A value inside a single-quoted search_runs filter string."""
    return str(value).replace("'", "\\'")


def find_finished_run(step: str, params: dict, experiment_id: str | None = None) -> mlflow.entities.Run | None:
    """A FINISHED run of ``step`` whose params equal ``params`` (all of them), newest first.

    This is how steps are reused instead of recomputed (mlflow's multistep_workflow pattern).
    """
    c = client()
    exp_id = experiment_id or current_experiment_id()
    filt = [f"tags.step = '{step}'", "attributes.status = 'FINISHED'"]
    filt += [f"params.{k} = '{quote(fmt(v))}'" for k, v in params.items()]
    runs = c.search_runs([exp_id], " and ".join(filt), order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def require_run(run_id: str, step: str | None = None) -> mlflow.entities.Run:
    """The run ``run_id``, or a one-line ValueError naming it (and the step it should be)."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise ValueError(f"run {run_id!r} not found at {tracking_uri()} ({str(e).splitlines()[0][:120]})") from e
    if step and run.data.tags.get("step") != step:
        raise ValueError(f"run {run_id} is not a {step} run (its step tag is {run.data.tags.get('step')!r})")
    return run


def artifact_path(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    """Local path of a run's artifact (downloaded when the store is remote)."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst) if dst else None, tracking_uri=tracking_uri()))


def ui_hint(experiment_id: str | None = None) -> str:
    """How to look at the runs: the runs table URL (3.x opens on a GenAI overview otherwise)."""
    uri = tracking_uri()
    exp = experiment_id or ensure_experiment()
    if uri.startswith("http"):
        return f"MLflow UI: {uri.rstrip('/')}/#/experiments/{exp}/runs"
    return (
        f"mlflow ui --backend-store-uri {uri} --port 5000   then open "
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs"
    )
