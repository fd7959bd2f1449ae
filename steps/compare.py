"""``compare``: our binned tokens against a file made elsewhere; which convention matches it."""

from __future__ import annotations

import click

from steps._common import user_errors


@click.command("compare", help="Compare our binned file (or binning run) with a pre-binned file made elsewhere.")
@click.option("--ours", required=True, help="Our binned HDF5, or the run id of a binning run.")
@click.option("--theirs", required=True, help="The other binned HDF5 (any key names, split or combined).")
@click.option("--raw", default="", help="Raw file: re-bin it under each convention to find the one that matches theirs.")
@click.option("--n-bins", type=click.IntRange(min=2, max=20), default=5, show_default=True, help="Used when ours lacks the attribute.")
@click.option("--vect", type=click.Choice(["4", "5"]), default="4", show_default=True, help="Used when ours lacks the attribute.")
@user_errors
def main(ours, theirs, raw, n_bins, vect) -> None:
    from thesis_mlflow.pipeline.compare import log_comparison

    _, summary, m = log_comparison(ours, theirs, raw or None, n_bins, int(vect))
    click.echo(f"theirs: {summary['theirs_layout']}")
    click.echo(f"token overlap {m['token_overlap']:.4f}, JS {m['token_js']:.5f} bits; rows aligned: {summary['aligned']}")
    if "events" in summary:
        click.echo(f"identical tokens: {summary['events']['identical_token_fraction']:.4f}")
    if "best_match" in summary:
        click.echo(f"best matching convention: {summary['best_match']}")


if __name__ == "__main__":
    main()
