"""What a rehearsal measured, read back from the tracking store, and the real run's sizes and limits.

A rehearsed cell's run carries its ``cost.*`` metrics (``pipeline.costs``) and its artifacts
(checkpoint, scores, log) whose sizes the store lists. The real grid's cells are matched to the
rehearsal's by their ``grid.cell`` tag; the packs are the real grid's on the chosen backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from thesis_mlflow.forecast.arithmetic import CellCost, FullSize, Limits, Upstream
from thesis_mlflow.grid.condor.settings import memory_mb
from thesis_mlflow.grid.gridfile import Grid
from thesis_mlflow.learn import data
from thesis_mlflow.spec import VQVAE_EPOCHS
from thesis_mlflow.tracking import queries

MB = 1 << 20
FILES = {"checkpoint": ("checkpoints", "checkpoints/last.pt"), "scores": ("eval", "eval/test_scores.npz"), "log": ("logs", "logs/train.log")}
NEEDED = ("cost.setup_s", "cost.epoch_train_s", "cost.steps_per_epoch", "cost.eval_s_per_1k", "cost.peak_rss_mb")


@dataclass
class Measured:
    costs: list[CellCost]
    sizes: dict[str, FullSize]
    missing: list[str]  # cells of the grid without a measurement, each with why
    upstream: list[Upstream]  # the rehearsal's binning and VQ-VAE runs, as the full run's prepare job will need them


def per_job(g: Grid, backend: str, jobs: int = 1) -> int:
    """Cells per job on ``backend``; the local backend's ``jobs`` workers each take their share, one
    cell after another."""
    if backend == "slurm":
        return g.slurm.cells_per_job
    if backend == "condor":
        return g.condor.cells_per_job
    return -(-len(g.cells()) // max(1, jobs))


def limits(g: Grid, backend: str, gpu: bool = False) -> Limits:
    """What each of ``g``'s jobs gets on ``backend``, from the grid file."""
    if backend == "slurm":
        s = g.slurm
        # sbatch's --mem (megabytes, or a K/M/G/T suffix) is a subset of what Condor's sizes allow
        return Limits("slurm", s.seconds, s.signal_before_end_s, s.max_requeues, memory_mb(s.mem), "slurm.mem",
                      side_by_side=s.gpus_per_job > 0 and s.cells_per_job > 1, gpus_per_job=s.gpus_per_job)
    if backend == "condor":
        c = g.condor
        return Limits("condor", None, 0, c.retries, memory_mb(c.request_memory), "condor.request_memory",
                      side_by_side=c.request_gpus > 0 and c.cells_per_job > 1, gpus_per_job=c.request_gpus)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB
    return Limits("local", None, 0, None, int(total), "this machine's memory", side_by_side=False, gpus_per_job=int(gpu))


def full_sizes(g: Grid, n: dict[str, int]) -> dict[str, FullSize]:
    """Each real cell's events, epochs and batch: the data file's splits ``n``, cut where the scale cuts
    them. (The colleague's pre-binned file is taken to have the raw file's splits.)"""
    out = {}
    for c in g.cells():
        def cut(k: int, limit: int) -> int:
            return min(k, limit) if limit else k

        out[c.name] = FullSize(cut(n["train"], c.max_train_events), cut(n["val"], c.max_eval_events), cut(n["test"], c.max_eval_events),
                               c.epochs, c.batch_size)
    return out


def measured(rehearsal: Grid, real: Grid, backend: str, exp_id: str, stacked: bool = False, jobs: int = 1) -> Measured:
    """The rehearsal's measurements of ``real``'s cells, each placed in its real pack."""
    runs = queries.search_all([exp_id], queries.grid_filter(rehearsal.run_name, "train"), order_by=["attributes.start_time ASC"])
    by_tag: dict[str, object] = {}
    for r in runs:
        by_tag.setdefault(r.data.tags.get("grid.cell"), r)
    pack_of = {c.tag: i for i, p in enumerate(real.packs(per_job=per_job(real, backend, jobs))) for c in p}
    costs, missing, upstream_ids = [], [], {}
    for cell in real.cells():
        r = by_tag.get(cell.tag)
        if r is None:
            missing.append(f"{cell.name}: no rehearsal run")
            continue
        m = r.data.metrics
        absent = [k for k in NEEDED if k not in m]
        if absent:
            missing.append(f"{cell.name}: run {r.info.run_id} {r.info.status}, no {', '.join(absent)}")
            continue
        sizes = {}
        for what, (folder, path) in FILES.items():
            sizes[what] = queries.artifact_sizes(r.info.run_id, folder, r.info.artifact_uri).get(path, 0) / MB
        p = r.data.params
        for k in ("binning_run_id", "vqvae_run_id"):
            if p.get(k):
                upstream_ids[p[k]] = k
        costs.append(CellCost(
            cell=cell.name, pack=pack_of[cell.tag], stack=replace(cell, seed=0).tag if stacked else cell.name,
            setup_s=m["cost.setup_s"], warmup_s=m.get("cost.warmup_s", 0.0), epoch_train_s=m["cost.epoch_train_s"],
            steps_per_epoch=int(m["cost.steps_per_epoch"]), eval_s_per_1k=m["cost.eval_s_per_1k"],
            tracking_s_per_epoch=m.get("cost.tracking_s_per_epoch", 0.0), tracking_calls_per_epoch=m.get("cost.tracking_calls_per_epoch", 0.0),
            peak_rss_mb=m["cost.peak_rss_mb"], train_mb_per_1k=m.get("cost.train_mb_per_1k", 0.0), checkpoint_mb=sizes["checkpoint"],
            scores_mb=sizes["scores"], log_mb=sizes["log"], n_train=int(p.get("n_train_events", 0)), n_eval=int(p.get("n_test_events", 0)),
            epochs=int(p.get("epochs", rehearsal.rehearsal.epochs if rehearsal.rehearsal else 1)), cuda_peak_mb=m.get("cost.cuda_peak_mb"),
            inputs_s_per_1k=m.get("cost.inputs_s_per_1k", 0.0)))
    n = data.split_sizes(real.data)
    return Measured(costs, full_sizes(real, n), missing, [upstream_cost(rid, real, n["train"]) for rid in upstream_ids])


def upstream_cost(run_id: str, real: Grid, n_train: int) -> Upstream:
    """A rehearsal's binning or VQ-VAE run, and how much longer the real grid's pre-training trains
    (on ``n_train`` training events at most)."""
    r = queries.get_run(run_id)
    wall = max(0.0, ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000)
    name = r.info.run_name or r.data.tags.get("mlflow.runName", run_id[:8])
    m, p = r.data.metrics, r.data.params
    if "cost.train_s" not in m:  # a binning run: the real one, at full size
        return Upstream(name, wall)
    full_events = min(n_train, int(real.vqvae.get("max_events") or 0) or n_train)
    rehearsed = max(1.0, m.get("cost.events", 1.0)) * max(1, int(p.get("epochs", 1)))
    return Upstream(name, wall, m["cost.train_s"], full_events * int(real.vqvae.get("epochs", VQVAE_EPOCHS)) / rehearsed)
