"""``train``: one cell of the grid (tokenizer x pooling x met x vect x seed): train, evaluate, log.

    thesis-mlflow train --tokenizer binned --pooling max
    mlflow run . -e train -P pooling=max -P tokenizer=binned
"""

from __future__ import annotations

import click

from steps._common import BOOL, choice, user_errors
from thesis_mlflow.spec import DEVICES, FIT_ON, PHI_CONVENTIONS, POOLINGS, STEP_MODES, TASKS, TOKENIZERS, VECTS, CellSpec

D = CellSpec()  # the defaults live in the spec, with the reason for each


@click.command("train", help="Train one cell of the grid (tokenizer x pooling x met x vect x seed) and log it.")
@click.option("--tokenizer", type=choice(*TOKENIZERS), default=D.tokenizer, show_default=True)
@click.option("--pooling", type=choice(*POOLINGS), default=D.pooling, show_default=True)
@click.option("--met", type=BOOL, default=str(D.met).lower(), show_default=True)
@click.option("--vect", type=choice(*VECTS), default=str(D.vect), show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=D.seed, show_default=True)
@click.option("--task", type=choice(*TASKS), default=D.task, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=D.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=D.lr, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=D.weight_decay, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=D.warmup_steps, show_default=True)
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=D.dropout, show_default=True)
@click.option("--d-model", type=click.IntRange(min=1), default=D.d_model, show_default=True)
@click.option("--n-layers", type=click.IntRange(min=1), default=D.n_layers, show_default=True)
@click.option("--n-heads", type=click.IntRange(min=1), default=D.n_heads, show_default=True)
@click.option("--d-ff", type=click.IntRange(min=1), default=D.d_ff, show_default=True)
@click.option("--data", "data_", default=D.data, show_default=True, help="Raw 4-top HDF5 (generated if it is the default and missing).")
@click.option("--binned-path", default=D.binned_path, help="Pre-binned HDF5 for tokenizer=binned_ambre.")
@click.option("--n-bins", type=click.IntRange(min=2, max=20), default=D.n_bins, show_default=True)
@click.option("--phi", type=choice(*PHI_CONVENTIONS), default=D.phi, show_default=True)
@click.option("--fit-on", type=choice(*FIT_ON), default=D.fit_on, show_default=True)
@click.option("--vqvae-run-id", default=D.vqvae_run_id, help="tokenizer=vqvae: use this vqvae run (else one is found or trained).")
@click.option("--codebook-size", type=click.IntRange(min=2, max=65536), default=D.codebook_size, show_default=True, help="tokenizer=vqvae.")
@click.option("--vqvae-epochs", type=click.IntRange(min=1), default=D.vqvae_epochs, show_default=True, help="tokenizer=vqvae, when one is trained.")
@click.option("--vqvae-max-events", type=click.IntRange(min=0), default=D.vqvae_max_events, help="tokenizer=vqvae: train it on the first N events (0 = all).")
@click.option("--max-train-events", type=click.IntRange(min=0), default=D.max_train_events, help="Use only the first N training events (0 = all).")
@click.option("--max-eval-events", type=click.IntRange(min=0), default=D.max_eval_events, help="Use only the first N val/test events (0 = all).")
@click.option("--device", type=choice(*DEVICES), default=D.device, show_default=True)
@click.option("--step-mode", type=choice(*STEP_MODES), default=D.step_mode, show_default=True,
              help="auto: torch.compile + CUDA graph on CUDA, eager on the CPU; same science, other kernels.")
@click.option("--system-metrics", type=BOOL, default=str(D.system_metrics).lower(), show_default=True, help="Log MLflow system metrics (CPU, memory, GPU).")
@user_errors
def main(**kw) -> None:
    from thesis_mlflow.grid.status import publish_after_cell
    from thesis_mlflow.pipeline.cell import train_cell

    spec = CellSpec.from_options(**{k.rstrip("_"): v for k, v in kw.items()})
    # a grid's cell (a Condor node, `mlflow run` on a child) keeps its parent's progress current
    click.echo(f"train run {train_cell(spec, on_end=publish_after_cell)}")


if __name__ == "__main__":
    main()
