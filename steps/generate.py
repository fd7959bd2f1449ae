"""``generate``: write the built-in synthetic 4-top dataset and log it to MLflow."""

from __future__ import annotations

import click

from steps._common import user_errors
from thesis_mlflow.spec import DEFAULT_DATA


@click.command("generate", help="Generate the built-in synthetic 4-top dataset (format of the real file).")
@click.option("--n-events", type=click.IntRange(min=10), default=302072, show_default=True, help="Total events (80/10/10 split).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=DEFAULT_DATA, show_default=True)
@click.option("--no-log", is_flag=True, help="Write the file and its data card only, no MLflow run; a later generate with the same "
                                             "settings logs that file without generating it again.")
@user_errors
def main(n_events: int, seed: int, output: str, no_log: bool) -> None:
    from thesis_mlflow.paths import resolve
    from thesis_mlflow.pipeline.upstream import run_generate

    run_id = run_generate(n_events, seed, output, log_run=not no_log)
    if run_id is None:
        click.echo(f"wrote {resolve(output)} (not logged)")
        return
    from thesis_mlflow.tracking import queries

    click.echo(f"generate run {run_id}: {resolve(output)}")
    click.echo(queries.ui_hint())


if __name__ == "__main__":
    main()
