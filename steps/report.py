"""``report``: the PhD summary of a grid, built from programmatic MLflow queries.

    thesis-mlflow report --grid binning_vs_direct-demo
    mlflow run . -e report -P grid=binning_vs_direct-demo
"""

from __future__ import annotations

import click

from steps._common import user_errors


@click.command("report", help="Build the PhD summary of a grid from the tracking server.")
@click.option("--grid", required=True, help="The grid.name tag (e.g. binning_vs_direct or binning_vs_direct-demo).")
@click.option("--out-dir", default=None, help="Where to write summary.{html,csv,tex}, effects.csv, figures/ [default: dashboards/<grid>].")
@click.option("--n-bootstrap", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Resamples of the test events (the test-set part of each interval).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and permutation draws (same runs + seed: same report).")
@user_errors
def main(grid: str, out_dir: str | None, n_bootstrap: int, seed: int) -> None:
    from thesis_mlflow.report.build import run_report

    run_report(grid, out_dir, n_bootstrap, echo=click.echo, seed=seed)


if __name__ == "__main__":
    main()
