"""Train one cell and log it: ``train_cell(spec) -> run id``.

Attaches to ``MLFLOW_RUN_ID`` when set (``mlflow run``, grid children, retried cluster jobs)
and resumes from that run's ``checkpoints/last.pt`` when it exists: each epoch's metrics are
logged exactly once. The logged factors are read back from the built model and the data fed
to it, never echoed from the request. Talks to MLflow only through ``tracking``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thesis_mlflow.errors import Diverged, RunConflict
from thesis_mlflow.learn import data, features, metrics
from thesis_mlflow.learn.model import Classifier
from thesis_mlflow.learn.training import evaluate, fit, resolve_device, resolve_step
from thesis_mlflow.pipeline.costs import CostMeter, tensor_bytes
from thesis_mlflow.pipeline.inputs import build_inputs
from thesis_mlflow.spec import FACTORS, CellSpec, cell_name, cell_tag
from thesis_mlflow.tracking import leases, queries
from thesis_mlflow.tracking import runs as tracking
from thesis_mlflow.tracking.done import has_results
from thesis_mlflow.tracking.runlog import RunLog

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/last.pt"
# Settings that must agree between a run's earlier attempts (or `mlflow run`'s own params) and now.
# The study's factors come from ``spec.FACTORS``: a new factor is checked on resume without a second edit.
CHECKED = (*FACTORS, "seed", "task", "epochs", "batch_size", "lr", "d_model", "n_layers", "n_heads", "d_ff", "rng_stream", "rng_scheme")


def train_cell(spec: CellSpec, run_id: str | None = None, stack=None, on_end: Callable[[str], None] | None = None) -> str:
    """See ``_train_cell``; ``stack`` (a ``pipeline.stack.SeedStack``): train this seed together
    with the other seeds of its configuration, each in its own thread. A seed that ends without
    training (finished already, failed before training, trained elsewhere) leaves the stack.
    ``on_end(run_id)``: once the run has ended, finished or not (the grid keeps its parent's
    progress current with it; its failure is logged, never the cell's)."""
    try:
        return _train_cell(spec, run_id, stack, on_end)
    finally:
        if stack is not None:
            stack.leave(spec.seed)


def _train_cell(spec: CellSpec, run_id: str | None, stack, on_end) -> str:
    """Train ``spec``'s cell, evaluate it on the test split and log everything; returns the run id.

    ``run_id``: the (child) run to train in, else ``MLFLOW_RUN_ID``, else a new run. Several
    cells may be trained one after another, or side by side in threads, in one process.

    A new run is created only once the inputs are known good (bad input: no run at all). A run
    that already exists (a grid's child, `mlflow run`'s) is where the user looks: any failure,
    building the inputs included, is recorded on it (FAILED, ``error.class``, its log)."""
    meter = CostMeter()  # this attempt's costs (``cost.*`` metrics), from here: building the inputs is part of them
    tcfg = spec.train_config()
    resolve_step(tcfg.step_mode, resolve_device(tcfg.device))  # refuses graph/compiled without CUDA, before any run
    given = run_id or os.environ.get("MLFLOW_RUN_ID")
    # one process per run: decided before this process touches the run (LeaseHeld: nothing started, nothing logged)
    lease = leases.acquire_run(given, f"train run {given} ({spec.name})") if given else None
    ours = None
    if lease is not None:
        ours = given  # ours from the lease on: if its inputs fail, it ends FAILED here and on_end hears of it
        tracking.add_fence(lease)  # every write to the run checks the lease first, its final status included
    try:
        if lease is None:
            cell = _prepare(spec, tcfg, meter)  # standalone: bad input is refused before any run exists
        else:
            with RunLog("train") as early:  # the run exists (the lease beats): a failure here is recorded on it
                try:
                    cell = _prepare(spec, tcfg, meter)
                except Exception as e:
                    tracking.record_failure(given, e, early)
                    lease.release()
                    raise
        with tracking.step_run("train", run_name=cell.name, tags=cell.tags, log_system_metrics=spec.system_metrics, run_id=given) as run:
            ours = run.info.run_id
            if lease is None:
                lease = leases.acquire_run(run.info.run_id, f"train run {run.info.run_id} ({cell.name})")
                tracking.add_fence(lease)
            with lease.kept():
                _train_logged(run.info.run_id, cell.model, cell.tens, tcfg, cell.params, cell.factors, cell.info, cell.name, lease, stack,
                              meter)
                lease.verify()  # still ours: only now may the run be marked FINISHED
            return run.info.run_id
    finally:
        if lease is not None:
            lease.stop()
            tracking.drop_fence(lease)
        if ours is not None and on_end is not None:
            try:
                on_end(ours)
            except Exception as e:  # noqa: BLE001 - the progress display must never fail a cell
                log.warning("after run %s: %s", ours, e)


@dataclass
class Prepared:
    """A cell ready to train: its model (weights drawn later by fit from the run's stream), its
    tensors, the factors as built, the params to log and where its inputs came from."""

    model: object
    tens: dict
    factors: dict
    params: dict
    info: object
    name: str
    tags: dict


def _prepare(spec: CellSpec, tcfg, meter: CostMeter | None = None) -> Prepared:
    t0 = time.perf_counter()
    inp = build_inputs(spec)
    if meter is not None:  # reading (and binning or encoding) the events, per event: a full-size cell reads more of them
        meter.inputs(time.perf_counter() - t0, sum(len(v) for v in inp.labels.values()))
    model = Classifier(spec.model_config(data.n_classes(spec.task), **_table_sizes(inp.info)))
    tens = {s: features.make_tensors(inp.arrays[s], inp.labels[s], spec.task) for s in data.SPLITS}
    factors = _factors(model, inp)
    params = {**spec.settings(), **{k: factors[k] for k in ("tokenizer", "pooling", "met", "vect", "d_model", "n_layers", "n_heads", "d_ff",
                                                            "n_params", "n_params_embedding")},
              "data": inp.info.data,
              "n_train_events": len(tens["train"]), "n_val_events": len(tens["val"]), "n_test_events": len(tens["test"]),
              **inp.info.params(), **tcfg.stream.params()}
    name = cell_name(factors["tokenizer"], factors["pooling"], factors["met"], factors["vect"], spec.seed)
    tags = {"grid.cell": cell_tag(factors["tokenizer"], factors["pooling"], factors["met"], factors["vect"], spec.seed)}
    return Prepared(model, tens, factors, params, inp.info, name, tags)


def check_scores(scores: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite test scores (a diverged run): ranked as they are, NaN would sort as
    the highest score and give a meaningless AUC."""
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise Diverged(f"{name}: {bad} of {len(scores)} test scores are NaN or infinite (training diverged); no test metrics logged")


def _table_sizes(info) -> dict:
    """The embedding tables the inputs need: the binning's vocabulary, the VQ-VAE's codebook."""
    return {k: getattr(info, k) for k in ("vocab_size", "codebook_size") if getattr(info, k) is not None}


def _factors(model, inp) -> dict:
    """The factors as the built model and the data fed to it have them; they must agree."""
    desc = model.describe()
    fed = features.describe_inputs(inp.arrays["train"])
    for k, v in fed.items():
        if k in desc and desc[k] != v:
            raise RuntimeError(f"model and data disagree on {k}: model {desc[k]}, data {v}")
    if "vect" not in fed and "vect" not in desc:  # token inputs: vect is that of the binning / VQ-VAE that made them
        fed["vect"] = inp.info.vect
    return {**desc, **fed}


def _plain(d: dict) -> dict:
    """numpy scalars as Python numbers (JSON, and checkpoints loadable with weights_only)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def _train_logged(run_id: str, model, tens: dict, tcfg, params: dict, factors: dict, info, name: str, lease, stack,
                  meter: CostMeter) -> str:
    existing = queries.get_run(run_id)
    if has_results(existing):
        log.info("run %s already has its test metrics and scores: nothing to do", run_id)
        return run_id
    logged = existing.data.params  # ours from an earlier attempt, or what `mlflow run` logged
    clash = {k: (logged[k], tracking.fmt(params[k])) for k in CHECKED if k in logged and not tracking.same_value(logged[k], params[k])}
    if clash:
        raise RunConflict(f"run {run_id} was started with other settings; refusing to resume: {clash}")
    # the rest: ours where new; what `mlflow run` or an earlier attempt logged stays
    tracking.log_params({k: v for k, v in params.items() if k not in logged})
    if not existing.inputs.dataset_inputs:
        src = Path(info.binned_file or info.data)
        tracking.log_file_input(src, data.sha256(src), name=src.name, context="training")
    logged_epochs = {step for step, _ in queries.metric_history(run_id, "val_auc")}
    with tempfile.TemporaryDirectory(prefix="thesis-train-") as tmp:  # local checkpoint copies, gone afterwards
        work = Path(tmp)
        resume = None
        if queries.has_artifact(run_id, "checkpoints"):
            resume = queries.artifact_path(run_id, CHECKPOINT, dst=work / "resume")
            log.info("resuming run %s from its checkpoint", run_id)
        if info.scaler is not None:
            tracking.log_dict(info.scaler, "model/scaler.json")
        def on_epoch(epoch: int, values: dict) -> None:
            if lease is not None:
                lease.check()  # taken over while we trained: stop before logging anything more
            if epoch in logged_epochs:
                return
            meter.epoch(len(tens["train"]), values.get("events_per_s", 0.0), tcfg.batch_size)
            with meter.tracking(calls=2):
                tracking.log_metrics({**values, "epoch": epoch}, step=epoch)  # "epoch": the latest value is the progress (grid status)
                logged_epochs.add(epoch)
                tracking.upload_current_log()  # the log so far, one click away while the cell runs

        def on_checkpoint(path: Path) -> None:
            with meter.tracking():
                tracking.log_artifact(path, "checkpoints")

        def on_step_mode(mode: str, fallback: str | None) -> None:
            """The step mode that actually runs: the param (docs/design.md) when not logged yet, and a tag
            always (``mlflow run`` logs its own ``step_mode=auto``; a resume may run elsewhere)."""
            tracking.log_params({} if "step_mode" in logged else {"step_mode": mode})
            tags = {"step_mode.used": mode}
            if fallback:
                tags["step_mode.fallback"] = fallback
            tracking.set_tags(tags)

        meter.train_bytes_per_event = tensor_bytes(tens["train"]) / max(1, len(tens["train"]))
        meter.fitting()
        t0 = time.perf_counter()
        (stack.fit if stack is not None else fit)(model, tens["train"], tens["val"], tcfg, work / "last.pt", resume_from=resume, on_epoch=on_epoch,
            on_checkpoint=on_checkpoint, extra_state={"scaler": info.scaler, "factors": _plain(factors)},
            on_step_mode=on_step_mode)
        tracking.log_metrics({"train_seconds": time.perf_counter() - t0})
        # the trained model on its own training events: the report's overtraining check (train vs test AUC)
        device = resolve_device(tcfg.device)
        with meter.evaluating(len(tens["train"]) + len(tens["test"])):
            train_auc = evaluate(model, tens["train"], device, tcfg.eval_batch_size)["auc"]
            ev = evaluate(model, tens["test"], device, tcfg.eval_batch_size)
        check_scores(ev["scores"], name)  # before anything of the test split is logged
        process = tens["test"].labels  # original label 1-5 per test event
        npz = work / "test_scores.npz"
        np.savez_compressed(npz, labels=ev["is_signal"].astype(np.int8), scores=ev["scores"].astype(np.float32),
                            process=process.astype(np.int8))
        tracking.log_artifact(npz, "eval")
        tracking.log_dict({"factors": _plain(factors),
                           "model_config": model.config_dict()}, "model/config.json")
        # the test metrics go last: a run that has them has its scores too (the grid's "done")
        final = metrics.test_metrics(ev["is_signal"], ev["scores"], process, ev.get("probs"))
        tracking.log_metrics({**final, "test_acc": ev["acc"], "train_auc": train_auc, **meter.metrics()})
    log.info("%s: test AUC %.4f, rejection %.1f @50%% / %.1f @70%%", name, final["test_auc"], final["test_rej_at_eff50"],
             final["test_rej_at_eff70"])
    return run_id
