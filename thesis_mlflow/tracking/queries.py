"""Reading the tracking store: runs, their metrics and artifacts, experiments, searches. Every
read goes through the retried client of ``runs``; an artifact is read at its run's own artifact
location (not through ``runs:/``, which costs MLflow two more requests per read). Writes, fencing
and step runs are ``runs``'."""

from __future__ import annotations

import functools
from pathlib import Path

import mlflow

from thesis_mlflow.errors import BadInput
from thesis_mlflow.secret import mask
from thesis_mlflow.tracking.runs import client, current_experiment_id, ensure_experiment, fmt, tracking_uri


def get_run(run_id: str):
    return client().get_run(run_id)


def require_run(run_id: str, step: str | None = None) -> mlflow.entities.Run:
    """The run ``run_id``, or a one-line ValueError naming it (and the step it should be)."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise BadInput(f"run {run_id!r} not found at {mask(tracking_uri())} ({(str(e).splitlines() or [type(e).__name__])[0][:120]})") from e
    if step and run.data.tags.get("step") != step:
        raise BadInput(f"run {run_id} is not a {step} run (its step tag is {run.data.tags.get('step')!r})")
    return run


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, by step."""
    return [(m.step, m.value) for m in sorted(client().get_metric_history(run_id, key), key=lambda m: m.step)]


def artifact_paths(run_id: str, folder: str | None = None, artifact_uri: str | None = None) -> list[str]:
    """The run's artifacts directly under ``folder`` (paths from the run's root), listed at the
    run's own artifact location: one request. (MLflow's ``list_artifacts(run_id)`` goes through
    ``runs:/``, which also fetches the run and searches its logged models: three requests per
    listing, ~8 of a demo cell's ~50.) ``artifact_uri``: the run's, when the caller has the run."""
    return [a.path for a in _artifact_repo(artifact_uri or _artifact_root(run_id)).list_artifacts(folder)]


def artifact_sizes(run_id: str, folder: str | None = None, artifact_uri: str | None = None) -> dict[str, int]:
    """{path: bytes} of the run's files directly under ``folder`` (one request, as ``artifact_paths``)."""
    return {a.path: int(a.file_size or 0) for a in _artifact_repo(artifact_uri or _artifact_root(run_id)).list_artifacts(folder)
            if not a.is_dir}


def has_artifact(run_id: str, path: str, artifact_uri: str | None = None) -> bool:
    """Whether the run has an artifact (file or folder) at ``path``."""
    return path in artifact_paths(run_id, path.rsplit("/", 1)[0] if "/" in path else None, artifact_uri)


def artifact_path(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    """Local path of a run's artifact (downloaded when the store is remote), fetched from the
    run's own artifact location (not through ``runs:/``: see ``artifact_paths``)."""
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    # no ``dst``: a local store's file itself, a remote one's copy in a new temporary folder (as MLflow's own)
    return Path(_artifact_repo(_artifact_root(run_id)).download_artifacts(path, dst_path=str(dst) if dst else None))


def _artifact_repo(root: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(root, tracking_uri=tracking_uri())


@functools.lru_cache(maxsize=4096)
def _artifact_root(run_id: str) -> str:
    """A run's artifact location (fixed when the run is created: safe to keep)."""
    return client().get_run(run_id).info.artifact_uri


def experiment_by_name_or_id(name: str):
    """An experiment by name (or, for a number, by id); None when there is none."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None and name.isdigit():
        exp = c.get_experiment(name)
    return exp


def experiment_tags(experiment_id: str) -> dict[str, str]:
    return dict(client().get_experiment(experiment_id).tags or {})


def search_all(experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None, page: int = 1000) -> list:
    """Every run matching ``filter_string``, page by page (``page`` runs per request)."""
    c = client()
    out, token = [], None
    while True:
        runs = c.search_runs(experiment_ids, filter_string, max_results=page, order_by=order_by, page_token=token)
        out.extend(runs)
        token = runs.token
        if not token:
            return out


def quote(value: str) -> str:
    """A value inside a single-quoted search_runs filter string."""
    return str(value).replace("'", "\\'")


def grid_filter(grid: str, step: str = "train") -> str:
    """The runs of one grid (its ``grid.name`` tag) of one step: its cells (train) or its parent (grid)."""
    return f"tags.`grid.name` = '{quote(grid)}' and tags.step = '{step}'"


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
