"""``generate``: write the built-in synthetic 4-top dataset and log it to MLflow."""

from __future__ import annotations

import json
import time

import click
import mlflow

from steps._common import ROOT, log, resolve, user_errors  # noqa: F401  (ROOT puts the library on sys.path)
from thesis_mlflow import data, synthetic, tracking


def run_generate(n_events: int, seed: int, output: str, use_env: bool = True) -> str:
    """Generate, write atomically, log; return the run id."""
    cfg = synthetic.GeneratorConfig(n_events=n_events, seed=seed)
    out = resolve(output)
    with tracking.step_run("generate", run_name=f"generate-n{n_events}-s{seed}", use_env=use_env) as run:
        tracking.log_params({"n_events": n_events, "seed": seed, "output": output, "output_file": str(out)})
        t0 = time.perf_counter()
        splits = synthetic.generate(cfg)
        data.write_raw(out, splits, attrs={"generator": "thesis_mlflow.synthetic", "seed": seed, "n_events": n_events})
        elapsed = time.perf_counter() - t0
        card = synthetic.data_card(splits, cfg)
        digest = data.sha256(out)
        card["sha256"] = digest
        card_path = out.with_suffix(".card.json")
        with data.atomic_path(card_path) as tmp:
            tmp.write_text(json.dumps(card, indent=2))
        tracking.log_params({"output_sha256": digest})
        tracking.log_file_input(out, digest, name=out.name, context="output")
        mlflow.log_artifact(str(card_path), artifact_path="data")
        mlflow.log_metrics({"generate_seconds": elapsed, **{f"n_{k}": v for k, v in card["split_sizes"].items()}})
        log.info("wrote %s (%d events, %.1f s), data card %s", out, n_events, elapsed, card_path)
        return run.info.run_id


@click.command("generate", help="Generate the built-in synthetic 4-top dataset (format of the real file).")
@click.option("--n-events", type=click.IntRange(min=10), default=302072, show_default=True, help="Total events (80/10/10 split).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default="data/4tops_synthetic.h5", show_default=True)
@user_errors
def main(n_events: int, seed: int, output: str) -> None:
    run_id = run_generate(n_events, seed, output)
    click.echo(f"generate run {run_id}: {resolve(output)}")
    click.echo(tracking.ui_hint())


if __name__ == "__main__":
    main()
