"""``reproduce RUN_ID``: train a run's cell again from what it recorded and compare the test scores."""

from __future__ import annotations

import click

from steps._common import user_errors


@click.command("reproduce", help="Train the cell of train run RUN_ID again (new run, tagged reproduction.of) and compare test scores.")
@click.argument("run_id")
@user_errors
def main(run_id: str) -> None:
    from thesis_mlflow.pipeline.reproduce import reproduce

    v = reproduce(run_id)
    for line in v.lines():
        click.echo(line)
    if v.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
