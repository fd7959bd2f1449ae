"""``train``: one grid cell. Builds the inputs of the chosen tokenizer, trains, evaluates, logs.

Attaches to ``MLFLOW_RUN_ID`` when set (``mlflow run``, grid children, retried cluster jobs)
and resumes from that run's ``checkpoints/last.pt`` when it exists.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import click
import mlflow
import numpy as np

from steps._common import BOOL, ROOT, choice, resolve, user_errors
from steps.binning import DEFAULT_INPUT, find_or_run_binning
from thesis_mlflow import data, features, tracking
from thesis_mlflow.binning import read_binned
from thesis_mlflow.grid import cell_name, cell_tag
from thesis_mlflow.model import POOLINGS, TOKENIZERS, Classifier, ModelConfig
from thesis_mlflow.train import STEP_MODES, TrainConfig, evaluate, fit, resolve_device, resolve_step, seed_everything

log = logging.getLogger("steps.train")
CKPT = "checkpoints/last.pt"
# Fault injection for tests of eviction: SIGKILL this process right after epoch N is logged
# (only in the cell whose run name is FAULT_CELL_ENV, when that is set).
FAULT_ENV = "THESIS_MLFLOW_KILL_AFTER_EPOCH"
FAULT_CELL_ENV = "THESIS_MLFLOW_KILL_CELL"


# --------------------------------------------------------------------------- inputs


def ensure_raw(path: str) -> Path:
    """The raw file; the built-in dataset is generated (and logged) when it is the one missing."""
    p = resolve(path)
    if p.is_file():
        return p
    if p in (resolve(DEFAULT_INPUT), ROOT / DEFAULT_INPUT):  # the built-in dataset, from here or the project
        from steps.generate import run_generate

        log.info("%s missing: generating the built-in dataset", p)
        run_generate(302072, 0, str(p), use_env=False)
        return p
    raise FileNotFoundError(f"data file {p} not found (give --data a raw 4-top HDF5 file)")


def _limit(opts: dict, split: str) -> int | None:
    """First N events of a split (demo and test scales); None = all. Applied before task selection."""
    n = opts["max_train_events"] if split == "train" else opts["max_eval_events"]
    return n or None


def infer_vect(X: dict, attrs: dict, requested: int) -> int:
    """A file without a ``vect`` attribute: up to 886 tokens is a 4-vector binning, more a 5-vector one."""
    vocab = attrs.get("vocab_size") or max(int(x.max()) for x in X.values()) + 1
    return 5 if int(vocab) > 886 else 4 if int(vocab) > 0 else requested


def read_ambre(path: Path, raw_path: str, seed: int) -> tuple[dict, dict, dict, str]:
    """The colleague's file through the compare reader; a combined split is split like the raw
    file when its rows align with it, else by a seeded 80/10/10 split (which one is logged)."""
    from thesis_mlflow import compare

    tf = compare.read_tokens(path)
    raw_p = resolve(raw_path)
    if tf.combined and raw_p.is_file():
        raw = data.read_raw(raw_p)
        X, y, how = compare.split_like_raw(tf, {s: len(v) for s, v in raw.items()}, {s: v.y for s, v in raw.items()},
                                           {s: v.valid.sum(1) for s, v in raw.items()}, seed=seed)
    else:
        X, y, how = compare.split_like_raw(tf, {}, {}, {}, seed=seed)
    return X, y, tf.attrs, how


def build_inputs(opts: dict) -> tuple[dict, dict, dict]:
    """Per-split model inputs and labels, plus params describing where they came from."""
    tok, met, vect = opts["tokenizer"], opts["met"], opts["vect"]
    info: dict = {}
    if tok in ("binned", "binned_ambre"):
        if tok == "binned":
            raw = ensure_raw(opts["data"])
            run_id, path = find_or_run_binning(str(raw), n_bins=opts["n_bins"], vect=vect, phi=opts["phi"], fit_on=opts["fit_on"])
            info.update(binning_run_id=run_id, data=str(raw), binned_file=str(path))
            bd = read_binned(path)
            X, y, attrs = bd.X, bd.y, bd.attrs
        else:
            if not opts["binned_path"]:
                raise ValueError("tokenizer=binned_ambre needs binned_path (the colleague's pre-binned HDF5 file)")
            X, y, attrs, how = read_ambre(resolve(opts["binned_path"]), opts["data"], opts["seed"])
            info.update(data=str(resolve(opts["binned_path"])), binned_file=str(resolve(opts["binned_path"])), ambre_split=how)
        for sp in data.SPLITS:
            n = _limit(opts, sp)
            X[sp], y[sp] = X[sp][:n], y[sp][:n]
        file_vect = int(attrs.get("vect") or infer_vect(X, attrs, vect))
        if file_vect != vect:
            raise ValueError(f"binned file {info['binned_file']} was made with vect={file_vect}, but vect={vect} was requested")
        info["vect"] = file_vect
        info["vocab_size"] = int(attrs.get("vocab_size") or max(int(x.max()) for x in X.values()) + 1)
        inputs = {s: features.token_inputs(X[s], met) for s in data.SPLITS}
        return inputs, y, info
    raw = ensure_raw(opts["data"])
    splits = data.read_raw(raw)
    splits = {sp: data.Split(X=v.X[: _limit(opts, sp)], y=v.y[: _limit(opts, sp)]) for sp, v in splits.items()}
    info["data"] = str(raw)
    scaler = features.Scaler.fit(splits["train"])
    info["scaler"] = scaler.to_dict()
    if tok == "vqvae":
        from steps import vqvae

        if opts["vqvae_run_id"]:
            vq_run = opts["vqvae_run_id"]
        else:
            vq_run, _ = vqvae.find_or_run_vqvae(vqvae.defaults(input=str(raw), vect=vect, codebook_size=opts["codebook_size"],
                                                               epochs=opts["vqvae_epochs"], max_events=opts["vqvae_max_events"]))
        model, vq_scaler = vqvae.load_model(vq_run)
        if model.cfg.vect != vect:
            raise ValueError(f"vqvae run {vq_run} was trained with vect={model.cfg.vect}, but vect={vect} was requested")
        info.update(vqvae_run_id=vq_run, codebook_size=model.cfg.codebook_size, scaler=vq_scaler.to_dict(), vect=model.cfg.vect)
        inputs = {}
        for s in data.SPLITS:
            x = features.direct_inputs(splits[s], vect, False, vq_scaler)
            codes = model.encode(x["cont"], x["ids"], x["valid"])
            inputs[s] = features.code_inputs(codes, splits[s], met, vq_scaler)
        return inputs, {s: splits[s].y for s in data.SPLITS}, info
    inputs = {s: features.direct_inputs(splits[s], vect, met, scaler) for s in data.SPLITS}
    return inputs, {s: splits[s].y for s in data.SPLITS}, info


# --------------------------------------------------------------------------- run

# Settings that must agree between a run's earlier attempts (or `mlflow run`'s own params) and now.
CHECKED = ("tokenizer", "pooling", "met", "vect", "seed", "task", "epochs", "batch_size", "lr", "d_model", "n_layers", "n_heads", "d_ff")


def run_train(opts: dict) -> str:
    """Train one cell and log it; returns the run id."""
    tcfg = TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], weight_decay=opts["weight_decay"],
                       warmup_steps=opts["warmup_steps"], seed=opts["seed"], device=opts["device"], step_mode=opts["step_mode"])
    n_cls = data.n_classes(opts["task"])
    step_mode = resolve_step(tcfg.step_mode, resolve_device(tcfg.device))
    inputs, labels, info = build_inputs(opts)
    seed_everything(opts["seed"])
    mcfg = ModelConfig(tokenizer=opts["tokenizer"], pooling=opts["pooling"], met=opts["met"], vect=opts["vect"], n_classes=n_cls,
                       d_model=opts["d_model"], n_layers=opts["n_layers"], n_heads=opts["n_heads"], d_ff=opts["d_ff"],
                       dropout=opts["dropout"], vocab_size=info.get("vocab_size", 886), codebook_size=info.get("codebook_size", 512))
    model = Classifier(mcfg)
    tens = {s: features.make_tensors(inputs[s], labels[s], opts["task"]) for s in data.SPLITS}

    # Params are read back from the built model and the data it is fed, never echoed.
    desc = model.describe()
    fed = features.describe_inputs(inputs["train"])
    for k, v in fed.items():
        if k in desc and desc[k] != v:
            raise RuntimeError(f"model and data disagree on {k}: model {desc[k]}, data {v}")
    if "vect" not in fed and "vect" not in desc:  # token inputs: vect is that of the binning / VQ-VAE that made them
        fed["vect"] = info["vect"]
    factors = {**desc, **fed}
    name = cell_name(factors["tokenizer"], factors["pooling"], factors["met"], factors["vect"], tcfg.seed)
    params = {
        "tokenizer": factors["tokenizer"], "pooling": factors["pooling"], "met": factors["met"], "vect": factors["vect"],
        "seed": tcfg.seed, "epochs": tcfg.epochs, "batch_size": tcfg.batch_size, "lr": tcfg.lr, "weight_decay": tcfg.weight_decay,
        "warmup_steps": tcfg.warmup_steps, "dropout": mcfg.dropout, "d_model": factors["d_model"], "n_layers": factors["n_layers"],
        "n_heads": factors["n_heads"], "d_ff": factors["d_ff"], "n_params": factors["n_params"],
        "n_params_embedding": factors["n_params_embedding"], "task": opts["task"], "data": info["data"], "step_mode": step_mode,
        "n_train_events": len(tens["train"]), "n_val_events": len(tens["val"]), "n_test_events": len(tens["test"]),
    }
    for k in ("binning_run_id", "vqvae_run_id", "binned_file", "vocab_size", "codebook_size", "ambre_split"):
        if k in info:
            params[k] = info[k]
    tags = {"grid.cell": cell_tag(params["tokenizer"], params["pooling"], params["met"], params["vect"], tcfg.seed)}

    with tracking.step_run("train", run_name=name, tags=tags) as run:
        run_id = run.info.run_id
        c = tracking.client()
        existing = c.get_run(run_id)
        if "test_auc" in existing.data.metrics:
            log.info("run %s already has test metrics: nothing to do", run_id)
            return run_id
        logged = existing.data.params  # ours from an earlier attempt, or what `mlflow run` logged
        clash = {k: (logged[k], tracking.fmt(params[k])) for k in CHECKED if k in logged and not tracking.same_value(logged[k], params[k])}
        if clash:
            raise ValueError(f"run {run_id} was started with other settings; refusing to resume: {clash}")
        # the rest: ours where new; what `mlflow run` or an earlier attempt logged stays
        tracking.log_params({k: v for k, v in params.items() if k not in logged})
        if not existing.inputs.dataset_inputs:
            src = Path(info.get("binned_file") or info["data"])
            tracking.log_file_input(src, data.sha256(src), name=src.name, context="training")
        logged_epochs = {m.step for m in c.get_metric_history(run_id, "val_auc")}
        with tempfile.TemporaryDirectory(prefix="thesis-train-") as tmp:  # local checkpoint copies, gone afterwards
            work = Path(tmp)
            ckpt_local = work / "last.pt"
            resume = None
            if any(a.path == "checkpoints" for a in c.list_artifacts(run_id)):
                resume = tracking.artifact_path(run_id, CKPT, dst=work / "resume")
                log.info("resuming run %s from its checkpoint", run_id)
            if "scaler" in info:
                mlflow.log_dict(info["scaler"], "model/scaler.json")
            kill_after = int(os.environ.get(FAULT_ENV, "0") or 0)
            if os.environ.get(FAULT_CELL_ENV) not in (None, "", name):
                kill_after = 0

            def on_checkpoint(path: Path) -> None:
                mlflow.log_artifact(str(path), artifact_path="checkpoints")

            def on_epoch(epoch: int, metrics: dict) -> None:
                if epoch in logged_epochs:
                    return
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
                logged_epochs.add(epoch)
                if kill_after and epoch == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)

            t0 = time.perf_counter()
            fit(model, tens["train"], tens["val"], tcfg, ckpt_local, resume_from=resume, on_epoch=on_epoch, on_checkpoint=on_checkpoint,
                extra_state={"scaler": info.get("scaler"), "factors": factors})
            mlflow.log_metric("train_seconds", time.perf_counter() - t0)
            dev = resolve_device(tcfg.device)
            ev = evaluate(model, tens["test"], dev, tcfg.eval_batch_size)
            mlflow.log_metrics({"test_auc": ev["auc"], "test_acc": ev["acc"], "test_rej_at_eff50": ev["rej50"], "test_rej_at_eff70": ev["rej70"]})
            npz = work / "test_scores.npz"
            np.savez_compressed(npz, labels=ev["is_signal"].astype(np.int8), scores=ev["scores"].astype(np.float32),
                                process=tens["test"].labels.astype(np.int8))
            mlflow.log_artifact(str(npz), artifact_path="eval")
            mlflow.log_dict({"factors": {k: (v if not isinstance(v, np.generic) else v.item()) for k, v in factors.items()},
                             "model_config": model.config_dict()}, "model/config.json")
        log.info("%s: test AUC %.4f, rejection %.1f @50%% / %.1f @70%%", name, ev["auc"], ev["rej50"], ev["rej70"])
        return run_id


@click.command("train", help="Train one cell of the grid (tokenizer x pooling x met x vect x seed) and log it.")
@click.option("--tokenizer", type=choice(*TOKENIZERS), default="direct", show_default=True)
@click.option("--pooling", type=choice(*POOLINGS), default="cls", show_default=True)
@click.option("--met", type=BOOL, default="true", show_default=True)
@click.option("--vect", type=choice(4, 5), default="4", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--task", type=choice(*data.TASKS), default="4t_vs_bg", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1, show_default=True)
@click.option("--d-model", type=click.IntRange(min=1), default=72, show_default=True)
@click.option("--n-layers", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--n-heads", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--d-ff", type=click.IntRange(min=1), default=144, show_default=True)
@click.option("--data", "data_", default=DEFAULT_INPUT, show_default=True, help="Raw 4-top HDF5 (generated if it is the default and missing).")
@click.option("--binned-path", default="", help="Pre-binned HDF5 for tokenizer=binned_ambre.")
@click.option("--n-bins", type=click.IntRange(min=2, max=20), default=5, show_default=True)
@click.option("--phi", type=choice("signed", "abs"), default="signed", show_default=True)
@click.option("--fit-on", type=choice("all", "background"), default="all", show_default=True)
@click.option("--vqvae-run-id", default="", help="tokenizer=vqvae: use this vqvae run (else one is found or trained).")
@click.option("--codebook-size", type=click.IntRange(min=2, max=65536), default=512, show_default=True, help="tokenizer=vqvae.")
@click.option("--vqvae-epochs", type=click.IntRange(min=1), default=10, show_default=True, help="tokenizer=vqvae, when one is trained.")
@click.option("--vqvae-max-events", type=click.IntRange(min=0), default=0, help="tokenizer=vqvae: train it on the first N events (0 = all).")
@click.option("--max-train-events", type=click.IntRange(min=0), default=0, help="Use only the first N training events (0 = all).")
@click.option("--max-eval-events", type=click.IntRange(min=0), default=0, help="Use only the first N val/test events (0 = all).")
@click.option("--device", type=choice("auto", "cpu", "cuda"), default="auto", show_default=True)
@click.option("--step-mode", type=choice(*STEP_MODES), default="auto", show_default=True,
              help="auto: torch.compile + CUDA graph on CUDA, eager on the CPU; same science, other kernels.")
@user_errors
def main(**kw) -> None:
    opts = {k.rstrip("_"): v for k, v in kw.items()}
    for k in ("tokenizer", "pooling", "task", "phi", "fit_on", "device", "step_mode"):
        opts[k] = opts[k].lower()
    opts["vect"] = int(opts["vect"])
    run_id = run_train(opts)
    click.echo(f"train run {run_id}")


if __name__ == "__main__":
    main()
