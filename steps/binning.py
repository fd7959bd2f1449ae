"""``binning``: Ambre-style tokens of a raw file, written atomically and logged; reused when done."""

from __future__ import annotations

import click

from steps._common import choice, user_errors
from thesis_mlflow.spec import DEFAULT_DATA, FIT_ON, PHI_CONVENTIONS, VECTS


@click.command("binning", help="Ambre-style binned tokens (docs/design.md section 4) of a raw 4-top file.")
@click.option("--input", "input_", default=DEFAULT_DATA, show_default=True, help="Raw 4-top HDF5 file.")
@click.option("--output", default="", help="Binned HDF5 to write [default: <input dir>/binned/<stem>_v<vect>_b<n>_<phi>_<fit_on>.h5].")
@click.option("--n-bins", type=click.IntRange(min=2, max=20), default=5, show_default=True)
@click.option("--vect", type=choice(*VECTS), default="4", show_default=True)
@click.option("--phi", type=choice(*PHI_CONVENTIONS), default="signed", show_default=True)
@click.option("--fit-on", type=choice(*FIT_ON), default="all", show_default=True)
@user_errors
def main(input_: str, output: str, n_bins: int, vect: str, phi: str, fit_on: str) -> None:
    from thesis_mlflow.pipeline.upstream import run_binning
    from thesis_mlflow.spec import BinningSpec

    run_id, out = run_binning(BinningSpec(input_, n_bins, int(vect), phi.lower(), fit_on.lower()), output or None)
    click.echo(f"binning run {run_id}: {out}")


if __name__ == "__main__":
    main()
