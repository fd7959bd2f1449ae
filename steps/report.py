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
@click.option("--margin", default="grid", show_default=True,
              help="Equivalence margin in AUC: pairs within +-margin are 'as good as' (TOST); 'grid': the grid file's report.margin, else 0.005.")
@click.option("--test-noise", type=click.Choice(["delong", "bootstrap"]), default="delong", show_default=True,
              help="The test-set part of each interval: DeLong's closed form, or paired bootstrap resamples of the test events.")
@click.option("--n-bootstrap", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Resamples of the test events with --test-noise bootstrap.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap draws (same runs + seed: same report).")
@user_errors
def main(grid: str, out_dir: str | None, margin: str, test_noise: str, n_bootstrap: int, seed: int) -> None:
    from thesis_mlflow.spec import check_margin

    m = None if margin == "grid" else check_margin(margin)  # a wrong margin is named before anything is queried
    from thesis_mlflow.report.build import run_report

    run_report(grid, out_dir, n_bootstrap, echo=click.echo, seed=seed, margin=m, method=test_noise, margin_given=margin)


if __name__ == "__main__":
    main()
