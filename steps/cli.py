"""``thesis-mlflow``: one console script whose subcommands mirror the MLproject entry points.

Lazy, like sqlite-utils' CLI: a subcommand's module is imported when it is asked for, and
those modules import torch, MLflow, pandas or plotly only inside the command itself, so
``--help`` and a refused option answer at once.
"""

from __future__ import annotations

import importlib

import click

from steps._common import user_errors

SUBCOMMANDS = {name: f"steps.{name}" for name in ("generate", "binning", "compare", "vqvae", "train", "grid", "report", "serve",
                                                   "reproduce")}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted([*SUBCOMMANDS, *super().list_commands(ctx)])

    def get_command(self, ctx, name):
        if name in SUBCOMMANDS:
            return importlib.import_module(SUBCOMMANDS[name]).main
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, help="thesis-mlflow: MLflow-tracked tokenization study for 4-top classification.")
def main() -> None:
    pass


@main.command("info", help="Show the tracking store, the experiment and how to open its runs table.")
@user_errors
def info() -> None:
    from thesis_mlflow.secret import mask
    from thesis_mlflow.tracking import queries
    from thesis_mlflow.tracking import runs as tracking

    exp_id = tracking.ensure_experiment()
    runs = tracking.client().search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=10)
    click.echo(f"tracking URI : {mask(tracking.tracking_uri())}")
    click.echo(f"experiment   : {tracking.experiment_name()} (id {exp_id})")
    for r in runs:
        click.echo(f"  {r.info.run_id[:8]}  {r.info.status:<9} {r.data.tags.get('step', '?'):<9} {r.info.run_name}")
    click.echo(queries.ui_hint(exp_id))


@main.command("views", help="Write (or refresh) the saved MLflow UI views of a grid and print their links.")
@click.argument("grid")
@user_errors
def views_cmd(grid: str) -> None:
    from thesis_mlflow.tracking import runs as tracking
    from thesis_mlflow.tracking import views

    views.echo_views(grid, tracking.current_experiment_id(), click.echo)


@main.command("validate", help="Check a raw 4-top HDF5 file against the format (docs/design.md section 3).")
@click.argument("path", type=click.Path(dir_okay=False))
@user_errors
def validate(path: str) -> None:
    from thesis_mlflow.learn import data

    sizes = data.validate_file(path)
    click.echo(f"{path}: OK " + ", ".join(f"{k}={v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
