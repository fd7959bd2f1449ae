"""``binning``: Ambre-style tokens of a raw file, written atomically and logged; reused when done."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import mlflow
import numpy as np

from steps._common import choice, resolve, user_errors
from thesis_mlflow import data, tracking
from thesis_mlflow.binning import FIT_ON, PHI_CONVENTIONS, Binning, write_binned

log = logging.getLogger("steps.binning")
DEFAULT_INPUT = "data/4tops_synthetic.h5"


def default_output(input_path: Path, n_bins: int, vect: int, phi: str, fit_on: str) -> Path:
    return input_path.parent / "binned" / f"{input_path.stem}_v{vect}_b{n_bins}_{phi}_{fit_on}.h5"


def reuse_params(digest: str, n_bins: int, vect: int, phi: str, fit_on: str) -> dict:
    """The params that identify a binning: same values -> same tokens."""
    return {"input_sha256": digest, "n_bins": n_bins, "vect": vect, "phi": phi, "fit_on": fit_on}


def run_binning(input: str, output: str | None, n_bins: int, vect: int, phi: str, fit_on: str, use_env: bool = True) -> tuple[str, Path]:
    """Validate, fit on train, tokenise all splits, write atomically, log. Returns (run id, file)."""
    inp = resolve(input)
    b = Binning(n_bins=n_bins, vect=vect, phi_convention=phi, fit_on=fit_on)  # checks the options
    splits = data.read_raw(inp)  # validates before anything is written
    out = resolve(output) if output else default_output(inp, n_bins, vect, phi, fit_on)
    digest = data.sha256(inp)
    name = f"binning-v{vect}-b{n_bins}-{phi}-{fit_on}"
    with tracking.step_run("binning", run_name=name, use_env=use_env) as run:
        tracking.log_params({**reuse_params(digest, n_bins, vect, phi, fit_on), "input": input, "input_file": str(inp),
                             "output_file": str(out), "vocab_size": b.vocab_size})
        tracking.log_file_input(inp, digest, name=inp.name, context="training")
        t0 = time.perf_counter()
        b.fit(splits["train"])
        binned = write_binned(out, b, splits, digest)
        elapsed = time.perf_counter() - t0
        mlflow.log_artifact(str(out), artifact_path="binned")
        mlflow.log_dict(b.to_dict(), "binning/edges.json")
        metrics = binning_metrics(b, splits["train"], binned.X["train"])
        metrics["binning_seconds"] = elapsed
        mlflow.log_metrics(metrics)
        tracking.log_params({"output_sha256": data.sha256(out)})
        log.info("binned %s -> %s (vocab %d, %.1f s)", inp.name, out, b.vocab_size, elapsed)
        return run.info.run_id, out


def binning_metrics(b: Binning, train: data.Split, tokens: np.ndarray) -> dict[str, float]:
    """Vocabulary use, per-bin population of each quantile feature on train, unknown IDs."""
    used = np.unique(tokens[tokens > 0])
    m = {"vocab_used_fraction": len(used) / (b.vocab_size - 1), "unknown_id_count": float(np.sum(train.ids > b.n_ids))}
    dec = b.decode(tokens[:, :18])
    valid = train.valid
    for f, key in (("pt", "b_pT"), ("eta", "b_eta"), ("e", "b_E")):
        if key in dec:
            counts = np.bincount(dec[key][valid], minlength=b.n_bins + 1)[1:]
            for i, c in enumerate(counts, 1):
                m[f"pop_{f}_bin{i}"] = c / max(valid.sum(), 1)
    met_b = b.decode(tokens[:, 18])["met"]
    counts = np.bincount(met_b, minlength=b.n_bins + 1)[1:]
    for i, c in enumerate(counts, 1):
        m[f"pop_met_bin{i}"] = c / len(met_b)
    return m


def find_or_run_binning(input: str, n_bins: int = 5, vect: int = 4, phi: str = "signed", fit_on: str = "all") -> tuple[str, Path]:
    """The binned file for these settings: from a FINISHED run with the same input digest and
    params if one exists (its file, or its artifact when the file is gone), else a new run."""
    inp = resolve(input)
    if not inp.is_file():
        raise FileNotFoundError(f"raw input {inp} not found")
    digest = data.sha256(inp)
    run = tracking.find_finished_run("binning", reuse_params(digest, n_bins, vect, phi, fit_on))
    if run is not None:
        out = Path(run.data.params.get("output_file", ""))
        if out.is_file() and data.sha256(out) == run.data.params.get("output_sha256"):
            log.info("reusing binning run %s (%s)", run.info.run_id, out)
            return run.info.run_id, out
        local = tracking.artifact_path(run.info.run_id, f"binned/{out.name}")
        log.info("reusing binning run %s (artifact %s)", run.info.run_id, local)
        return run.info.run_id, local
    return run_binning(str(inp), None, n_bins, vect, phi, fit_on, use_env=False)


@click.command("binning", help="Ambre-style binned tokens (DESIGN.md section 4) of a raw 4-top file.")
@click.option("--input", "input_", default=DEFAULT_INPUT, show_default=True, help="Raw 4-top HDF5 file.")
@click.option("--output", default="", help="Binned HDF5 to write [default: <input dir>/binned/<stem>_v<vect>_b<n>_<phi>_<fit_on>.h5].")
@click.option("--n-bins", type=click.IntRange(min=2, max=20), default=5, show_default=True)
@click.option("--vect", type=choice(4, 5), default="4", show_default=True)
@click.option("--phi", type=choice(*PHI_CONVENTIONS), default="signed", show_default=True)
@click.option("--fit-on", type=choice(*FIT_ON), default="all", show_default=True)
@user_errors
def main(input_: str, output: str, n_bins: int, vect: str, phi: str, fit_on: str) -> None:
    run_id, out = run_binning(input_, output or None, n_bins, int(vect), phi.lower(), fit_on.lower())
    click.echo(f"binning run {run_id}: {out}")


if __name__ == "__main__":
    main()
