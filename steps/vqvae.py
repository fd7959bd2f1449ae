"""``vqvae``: pre-train the per-object VQ-VAE on the training split and log it; reused when done."""

from __future__ import annotations

import click

from steps._common import choice, user_errors
from thesis_mlflow.spec import CODEBOOK_SIZE, DEFAULT_DATA, VECTS, VQVAE_EPOCHS


@click.command("vqvae", help="Pre-train the per-object VQ-VAE tokenizer on the training split.")
@click.option("--input", "input_", default=DEFAULT_DATA, show_default=True, help="Raw 4-top HDF5 file.")
@click.option("--vect", type=choice(*VECTS), default="4", show_default=True)
@click.option("--codebook-size", type=click.IntRange(min=2, max=65536), default=CODEBOOK_SIZE, show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=VQVAE_EPOCHS, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=4096, show_default=True, help="Objects per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--max-events", type=click.IntRange(min=0), default=0, help="Train on the first N training events only (0 = all).")
@user_errors
def main(input_, vect, codebook_size, latent_dim, epochs, seed, batch_size, lr, max_events) -> None:
    from thesis_mlflow.pipeline.upstream import run_vqvae
    from thesis_mlflow.spec import VQSpec
    from thesis_mlflow.tracking import runs as tracking

    o = VQSpec(input=input_, vect=int(vect), codebook_size=codebook_size, latent_dim=latent_dim, epochs=epochs, seed=seed,
               batch_size=batch_size, lr=lr, max_events=max_events)
    run_id, _ = run_vqvae(o)
    m = tracking.client().get_run(run_id).data.metrics
    click.echo(f"vqvae run {run_id}: codebook usage {m['final_codebook_usage']:.1%}, "
               f"perplexity {m['final_perplexity']:.1f} of {codebook_size} codes")


if __name__ == "__main__":
    main()
