"""``vqvae``: pre-train the per-object VQ-VAE on the training split and log it; reused when done."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click
import mlflow
import torch

from steps._common import choice, resolve, user_errors
from steps.binning import DEFAULT_INPUT
from thesis_mlflow import data, features, tracking
from thesis_mlflow.vqvae import ObjectVQVAE, VQConfig, VQTrainConfig, load_payload, save_payload, train_vqvae

log = logging.getLogger("steps.vqvae")
ARTIFACT = "vqvae/model.pt"


def reuse_params(digest: str, o: dict) -> dict:
    return {"input_sha256": digest, **{k: o[k] for k in ("vect", "codebook_size", "latent_dim", "epochs", "seed", "batch_size", "lr", "max_events")}}


def run_vqvae(o: dict, use_env: bool = True) -> tuple[str, Path]:
    """Validate, train, log. ``o``: input, vect, codebook_size, latent_dim, epochs, seed, batch_size, lr, max_events."""
    cfg = VQConfig(vect=o["vect"], codebook_size=o["codebook_size"], latent_dim=o["latent_dim"])
    tcfg = VQTrainConfig(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], seed=o["seed"])
    inp = resolve(o["input"])
    tr = data.read_raw(inp)["train"]  # validates before anything is logged
    if o["max_events"]:
        tr = data.Split(X=tr.X[: o["max_events"]], y=tr.y[: o["max_events"]])
    digest = data.sha256(inp)
    scaler = features.Scaler.fit(tr)
    x = features.direct_inputs(tr, o["vect"], False, scaler)
    v = x["valid"]
    names = ["e", "pt", "eta", "phi"][5 - o["vect"]:]
    with tracking.step_run("vqvae", run_name=f"vqvae-v{o['vect']}-k{o['codebook_size']}", use_env=use_env) as run:
        tracking.log_params({**reuse_params(digest, o), "input": o["input"], "input_file": str(inp), "n_objects": int(v.sum()), "commitment": cfg.commitment,
                             "ema": cfg.ema, "decay": cfg.decay, "kmeans_init": cfg.kmeans_init, "dead_threshold": cfg.dead_threshold})
        tracking.log_file_input(inp, digest, name=inp.name, context="training")
        torch.manual_seed(o["seed"])
        model = ObjectVQVAE(cfg, seed=o["seed"])
        hist = train_vqvae(model, x["cont"][v], x["ids"][v], tcfg, names,
                           on_epoch=lambda e, m: mlflow.log_metrics(m, step=e))
        final = hist[-1]
        mlflow.log_metrics({"final_codebook_usage": final["codebook_usage"], "final_perplexity": final["perplexity"]})
        path = Path(tempfile.mkdtemp(prefix="vqvae-")) / "model.pt"
        torch.save(save_payload(model, scaler.to_dict(), o["seed"]), path)
        mlflow.log_artifact(str(path), artifact_path="vqvae")
        msg = (f"codebook usage {final['codebook_usage']:.1%} of {cfg.codebook_size} codes, "
               f"perplexity {final['perplexity']:.1f} (>= {cfg.codebook_size / 2:.0f} wanted)")
        log.info(msg)
        return run.info.run_id, path


def defaults(**kw) -> dict:
    o = {"input": DEFAULT_INPUT, "vect": 4, "codebook_size": 512, "latent_dim": 8, "epochs": 10, "seed": 0, "batch_size": 4096,
         "lr": 1e-3, "max_events": 0}
    o.update(kw)
    return o


def find_or_run_vqvae(o: dict) -> tuple[str, Path]:
    """A FINISHED vqvae run with the same input digest and params, else a new one."""
    inp = resolve(o["input"])
    if not inp.is_file():
        raise FileNotFoundError(f"raw input {inp} not found")
    run = tracking.find_finished_run("vqvae", reuse_params(data.sha256(inp), o))
    if run is not None:
        log.info("reusing vqvae run %s", run.info.run_id)
        return run.info.run_id, tracking.artifact_path(run.info.run_id, ARTIFACT)
    return run_vqvae({**o, "input": str(inp)}, use_env=False)


def load_model(run_id: str) -> tuple[ObjectVQVAE, features.Scaler]:
    payload = torch.load(tracking.artifact_path(run_id, ARTIFACT), weights_only=False)
    return load_payload(payload), features.Scaler.from_dict(payload["scaler"])


@click.command("vqvae", help="Pre-train the per-object VQ-VAE tokenizer on the training split.")
@click.option("--input", "input_", default=DEFAULT_INPUT, show_default=True, help="Raw 4-top HDF5 file.")
@click.option("--vect", type=choice(4, 5), default="4", show_default=True)
@click.option("--codebook-size", type=click.IntRange(min=2, max=65536), default=512, show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=4096, show_default=True, help="Objects per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--max-events", type=click.IntRange(min=0), default=0, help="Train on the first N training events only (0 = all).")
@user_errors
def main(input_, vect, codebook_size, latent_dim, epochs, seed, batch_size, lr, max_events) -> None:
    o = defaults(input=input_, vect=int(vect), codebook_size=codebook_size, latent_dim=latent_dim, epochs=epochs, seed=seed,
                 batch_size=batch_size, lr=lr, max_events=max_events)
    run_id, _ = run_vqvae(o)
    r = tracking.client().get_run(run_id)
    click.echo(f"vqvae run {run_id}: codebook usage {r.data.metrics['final_codebook_usage']:.1%}, "
               f"perplexity {r.data.metrics['final_perplexity']:.1f} of {codebook_size} codes")


if __name__ == "__main__":
    main()
