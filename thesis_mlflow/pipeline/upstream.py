"""The steps other steps need, run once per settings and reused: dataset, binning, VQ-VAE.

mlflow's multistep_workflow pattern: a step is identified by its params (the input's digest
among them); a FINISHED run with the same params is reused instead of recomputed. Talks to
MLflow only through ``tracking``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from thesis_mlflow.errors import MissingInput
from thesis_mlflow.learn import data, synthetic
from thesis_mlflow.learn.binning import Binning, write_binned
from thesis_mlflow.paths import ROOT, resolve
from thesis_mlflow.spec import DEFAULT_DATA, BinningSpec, RunStream, VQSpec
from thesis_mlflow.tracking import leases, queries
from thesis_mlflow.tracking import runs as tracking

log = logging.getLogger(__name__)
VQVAE_ARTIFACT = "vqvae/model.pt"
FULL_SIZE = 302072  # events of the built-in dataset (the real file's total)


# --------------------------------------------------------------------------- dataset


def run_generate(n_events: int, seed: int, output: str, use_env: bool = True, log_run: bool = True) -> str | None:
    """Generate the built-in dataset, write it atomically with its data card, log; return the run id.

    A file already at ``output`` whose data card records these generator settings and its digest
    is logged as it is, not generated again (``generate.reused`` tag). ``log_run=False``: write
    the file and its card only, no MLflow run (``make demo`` does so while its server starts)."""
    cfg = synthetic.GeneratorConfig(n_events=n_events, seed=seed)
    out = resolve(output)
    if not log_run:
        if generated_before(cfg, out) is None:
            write_generated(cfg, out)
        return None
    with tracking.step_run("generate", run_name=f"generate-n{n_events}-s{seed}", use_env=use_env) as run:
        tracking.log_params({"n_events": n_events, "seed": seed, "output": output, "output_file": str(out)})
        card, elapsed = generated_before(cfg, out), None
        if card is None:
            card, elapsed = write_generated(cfg, out)
        tracking.set_tags({"generate.reused": str(elapsed is None).lower()})
        tracking.log_params({"output_sha256": card["sha256"]})
        tracking.log_file_input(out, card["sha256"], name=out.name, context="output")
        tracking.log_artifact(out.with_suffix(".card.json"), "data")
        tracking.log_metrics({**({"generate_seconds": elapsed} if elapsed is not None else {}),
                              **{f"n_{k}": v for k, v in card["split_sizes"].items()}})
        if elapsed is None:
            log.info("%s already holds this dataset (its data card: same settings, same digest): logged, not generated again", out)
        else:
            log.info("wrote %s (%d events, %.1f s), data card %s", out, n_events, elapsed, out.with_suffix(".card.json"))
        return run.info.run_id


def write_generated(cfg: synthetic.GeneratorConfig, out: Path) -> tuple[dict, float]:
    """Generate, write the file and then its data card (with the file's digest); (card, seconds)."""
    t0 = time.perf_counter()
    splits = synthetic.generate(cfg)
    data.write_raw(out, splits, attrs={"generator": "thesis_mlflow.learn.synthetic", "seed": cfg.seed, "n_events": cfg.n_events})
    elapsed = time.perf_counter() - t0
    card = synthetic.data_card(splits, cfg)
    card["sha256"] = data.sha256(out)
    with data.atomic_path(out.with_suffix(".card.json")) as tmp:
        tmp.write_text(json.dumps(card, indent=2))
    return card, elapsed


def generated_before(cfg: synthetic.GeneratorConfig, out: Path) -> dict | None:
    """The data card of ``out`` when it records ``cfg`` and the file's present digest; else None
    (no card, other settings, or a file changed since the card was written)."""
    try:
        card = json.loads(out.with_suffix(".card.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("config") != synthetic.card_config(cfg) or not out.is_file():
        return None
    return card if data.sha256(out) == card.get("sha256") else None


def ensure_raw(path: str) -> Path:
    """The raw file; the built-in dataset is generated (and logged) when it is the one missing."""
    p = resolve(path)
    if p.is_file():
        return p
    if p in (resolve(DEFAULT_DATA), ROOT / DEFAULT_DATA):  # the built-in dataset, from here or the project
        import fcntl

        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p.with_name(p.name + ".lock"), "w") as lock:  # jobs starting together generate it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not p.is_file():
                log.info("%s missing: generating the built-in dataset", p)
                run_generate(FULL_SIZE, 0, str(p), use_env=False)
        return p
    raise MissingInput(f"data file {p} not found (give --data a raw 4-top HDF5 file)")


# --------------------------------------------------------------------------- binning


def default_binned_output(input_path: Path, o: BinningSpec) -> Path:
    return input_path.parent / "binned" / f"{input_path.stem}_v{o.vect}_b{o.n_bins}_{o.phi}_{o.fit_on}.h5"


def run_binning(o: BinningSpec, output: str | None = None, use_env: bool = True, run_id: str | None = None,
                lease=None) -> tuple[str, Path]:
    """Validate, fit on train, tokenise all splits, write atomically, log. Returns (run id, file).
    ``run_id``: a claim run to log into (``find_or_run``)."""
    inp = resolve(o.input)
    b = Binning(n_bins=o.n_bins, vect=o.vect, phi_convention=o.phi, fit_on=o.fit_on)
    splits = data.read_raw(inp)  # validates before anything is written
    out = resolve(output) if output else default_binned_output(inp, o)
    digest = data.sha256(inp)
    with tracking.step_run("binning", run_name=o.run_name, use_env=use_env, run_id=run_id, lease=lease) as run:
        tracking.log_params({**o.reuse_params(digest), "input": o.input, "input_file": str(inp),
                             "output_file": str(out), "vocab_size": b.vocab_size})
        tracking.log_file_input(inp, digest, name=inp.name, context="training")
        t0 = time.perf_counter()
        b.fit(splits["train"])
        binned = write_binned(out, b, splits, digest)
        elapsed = time.perf_counter() - t0
        tracking.log_artifact(out, "binned")
        tracking.log_dict(b.to_dict(), "binning/edges.json")
        metrics = binning_metrics(b, splits["train"], binned.X["train"])
        metrics["binning_seconds"] = elapsed
        tracking.log_metrics(metrics)
        tracking.log_params({"output_sha256": data.sha256(out)})
        log.info("binned %s -> %s (vocab %d, %.1f s)", inp.name, out, b.vocab_size, elapsed)
        return run.info.run_id, out


def binning_metrics(b, train: data.Split, tokens: np.ndarray) -> dict[str, float]:
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


def _binned_file_of(run) -> Path:
    """A finished binning run's file: where it was written if still intact, else its artifact."""
    out = Path(run.data.params.get("output_file", ""))
    if out.is_file() and data.sha256(out) == run.data.params.get("output_sha256"):
        log.info("reusing binning run %s (%s)", run.info.run_id, out)
        return out
    local = queries.artifact_path(run.info.run_id, f"binned/{out.name}")
    log.info("reusing binning run %s (artifact %s)", run.info.run_id, local)
    return local


# --------------------------------------------------------------------------- VQ-VAE


def run_vqvae(o: VQSpec, use_env: bool = True, run_id: str | None = None, lease=None) -> tuple[str, Path]:
    """Validate, train, log. Returns (run id, local model file). ``run_id``: a claim run to log into."""
    import torch

    from thesis_mlflow.learn import features  # lazy: torch, only for a VQ-VAE (generate and binning stay light)
    from thesis_mlflow.learn.vqvae import ObjectVQVAE, VQConfig, VQTrainConfig, save_payload, train_vqvae  # lazy: torch, only for a VQ-VAE

    cfg = VQConfig(vect=o.vect, codebook_size=o.codebook_size, latent_dim=o.latent_dim)
    tcfg = VQTrainConfig(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, seed=o.seed)
    stream = RunStream(o.stream_key(), o.seed)  # every draw of the pre-training: weights, codebook, k-means, order
    inp = resolve(o.input)
    tr = data.read_raw(inp)["train"]  # validates before anything is logged
    if o.max_events:
        tr = data.Split(X=tr.X[: o.max_events], y=tr.y[: o.max_events])
    digest = data.sha256(inp)
    scaler = features.Scaler.fit(tr)
    x = features.direct_inputs(tr, o.vect, False, scaler)
    v = x["valid"]
    names = ["e", "pt", "eta", "phi"][5 - o.vect:]
    with tracking.step_run("vqvae", run_name=f"vqvae-v{o.vect}-k{o.codebook_size}", use_env=use_env, run_id=run_id, lease=lease) as run:
        tracking.log_params({**o.reuse_params(digest), "input": o.input, "input_file": str(inp), "n_objects": int(v.sum()),
                             "commitment": cfg.commitment, "ema": cfg.ema, "decay": cfg.decay, "kmeans_init": cfg.kmeans_init,
                             "dead_threshold": cfg.dead_threshold, **stream.params()})
        tracking.log_file_input(inp, digest, name=inp.name, context="training")
        model = ObjectVQVAE(cfg, stream)
        t0 = time.perf_counter()
        hist = train_vqvae(model, x["cont"][v], x["ids"][v], tcfg, names, on_epoch=lambda e, m: tracking.log_metrics(m, step=e),
                           stream=stream)
        final = hist[-1]
        # the training's share of the run, for a rehearsal's forecast of the full pre-training (forecast.arithmetic)
        tracking.log_metrics({"final_codebook_usage": final["codebook_usage"], "final_perplexity": final["perplexity"],
                              "cost.train_s": time.perf_counter() - t0, "cost.events": float(len(tr.y))})
        path = Path(tempfile.mkdtemp(prefix="vqvae-")) / "model.pt"
        torch.save(save_payload(model, scaler.to_dict(), o.seed), path)
        tracking.log_artifact(path, "vqvae")
        log.info("codebook usage %.1f%% of %d codes, perplexity %.1f (>= %.0f wanted)", 100 * final["codebook_usage"], cfg.codebook_size,
                 final["perplexity"], cfg.codebook_size / 2)
        return run.info.run_id, path


def _vqvae_file_of(run) -> Path:
    log.info("reusing vqvae run %s", run.info.run_id)
    return queries.artifact_path(run.info.run_id, VQVAE_ARTIFACT)


# --------------------------------------------------------------------------- found or made once


def find_or_run(o: BinningSpec | VQSpec) -> tuple[str, Path]:
    """The upstream run ``o`` describes: a FINISHED run of that step with the same input digest
    and params if one exists, else one made now (by exactly one of the jobs asking together:
    ``leases.find_or_claim``). Returns (run id, local output file)."""
    inp = resolve(o.input)
    if not inp.is_file():
        raise MissingInput(f"raw input {inp} not found")
    run, claim = leases.find_or_claim(o.step, o.reuse_params(data.sha256(inp)), o.run_name)
    if run is not None:
        return run.info.run_id, _REUSE[o.step](run)
    with leases.claimed(claim):  # the claim lives while we work, and ends FAILED if we fail, even before logging
        return _RUN[o.step](dataclasses.replace(o, input=str(inp)), use_env=False, run_id=claim.run_id, lease=claim)


_REUSE = {"binning": _binned_file_of, "vqvae": _vqvae_file_of}
_RUN = {"binning": run_binning, "vqvae": run_vqvae}


def load_vqvae(run_id: str):
    """(model, scaler) of a vqvae run; a clear error when the run does not exist or is no vqvae run."""
    from thesis_mlflow.learn import safeload  # lazy: torch, only for a VQ-VAE
    from thesis_mlflow.learn.features import Scaler  # lazy: torch, only for a VQ-VAE
    from thesis_mlflow.learn.vqvae import load_payload  # lazy: torch, only for a VQ-VAE

    queries.require_run(run_id, "vqvae")
    payload = safeload.load(queries.artifact_path(run_id, VQVAE_ARTIFACT))
    return load_payload(payload), Scaler.from_dict(payload["scaler"])
