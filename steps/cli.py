"""``thesis-mlflow``: one console script whose subcommands mirror the MLproject entry points."""

from __future__ import annotations

import click

from steps import binning, compare, generate, grid, report, serve, train, vqvae
from steps._common import user_errors
from thesis_mlflow import data, tracking


@click.group(help="thesis-mlflow: MLflow-tracked tokenization study for 4-top classification.")
def main() -> None:
    pass


main.add_command(generate.main, "generate")
main.add_command(binning.main, "binning")
main.add_command(train.main, "train")
main.add_command(vqvae.main, "vqvae")
main.add_command(grid.main, "grid")
main.add_command(serve.main, "serve")
main.add_command(report.main, "report")
main.add_command(compare.main, "compare")


@main.command("info", help="Show the tracking store, the experiment and how to open its runs table.")
@user_errors
def info() -> None:
    exp_id = tracking.ensure_experiment()
    runs = tracking.client().search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=10)
    click.echo(f"tracking URI : {tracking.tracking_uri()}")
    click.echo(f"experiment   : {tracking.experiment_name()} (id {exp_id})")
    for r in runs:
        click.echo(f"  {r.info.run_id[:8]}  {r.info.status:<9} {r.data.tags.get('step', '?'):<9} {r.info.run_name}")
    click.echo(tracking.ui_hint(exp_id))


@main.command("validate", help="Check a raw 4-top HDF5 file against the format (DESIGN.md section 3).")
@click.argument("path", type=click.Path(dir_okay=False))
@user_errors
def validate(path: str) -> None:
    sizes = data.validate_file(path)
    click.echo(f"{path}: OK " + ", ".join(f"{k}={v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
