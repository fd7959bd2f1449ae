"""The cell spec: one validated description of a cell, round-tripping through the train command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steps.train import main as train_cmd
from thesis_mlflow.errors import BadSetting, LeaseHeld, MissingInput
from thesis_mlflow.grid.gridfile import load_grid
from thesis_mlflow.spec import BinningSpec, CellSpec, VQSpec, cell_name, cell_tag

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "grids" / "binning_vs_direct.yaml"


def _parse(args: list[str]) -> CellSpec:
    ctx = train_cmd.make_context("train", list(args))
    return CellSpec.from_options(**{k.rstrip("_"): v for k, v in ctx.params.items()})


@pytest.mark.parametrize("scale", ["demo", "full"])
def test_every_grid_cell_round_trips_through_its_command(scale):
    """The command a grid job runs rebuilds exactly the cell the driver meant."""
    for cell in load_grid(GRID, scale, base_dir=ROOT).cells():
        assert _parse(cell.cli_args()) == cell, cell.name


def test_defaults_are_the_thesis_settings():
    s = CellSpec()
    assert (s.d_model, s.n_layers, s.n_heads, s.d_ff, s.epochs, s.batch_size) == (72, 8, 8, 144, 50, 64)
    assert _parse([]) == s
    assert s.name == "direct-cls-met-4v-s0" and s.tag == "tokenizer=direct,pooling=cls,met=true,vect=4,seed=0"
    assert s.settings()["lr"] == 1e-4 and set(s.factors()) == {"tokenizer", "pooling", "met", "vect", "seed"}


@pytest.mark.parametrize("kw, msg", [
    ({"pooling": "avg"}, "pooling must be one of cls, mean, max; got 'avg'"),
    ({"vect": 3}, "vect must be 4 or 5"),
    ({"d_model": 15, "n_heads": 2}, "divisible"),
    ({"tokenizer": "binned_ambre"}, "needs binned_path"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"step_mode": "turbo"}, "step_mode must be one of auto, eager, graph, compiled"),
    ({"met": "yes"}, "met must be true or false"),
])
def test_bad_values_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        CellSpec(**kw)


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match=r"unknown cell settings \['poolng'\]"):
        CellSpec.from_options(poolng="max")


def test_spec_is_frozen_and_hashable():
    s = CellSpec(tokenizer="binned", pooling="max")
    with pytest.raises(AttributeError):
        s.pooling = "cls"  # type: ignore[misc]
    assert {s: 1}[CellSpec(tokenizer="binned", pooling="max")] == 1
    assert s.replace(seed=2).seed == 2 and s.seed == 0


def test_cli_answers_without_loading_torch_or_mlflow():
    """--help and a refused option never import the heavy packages."""
    code = ("import sys; from steps.cli import main\n"
            "try:\n    main(['train', '--pooling', 'foo'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'pandas', 'plotly', 'numpy', 'h5py') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'foo' is not one of 'cls', 'mean', 'max'" in res.stderr


@pytest.mark.parametrize("exc, one_line", [
    (BadSetting("vect must be 4 or 5; got 6"), True),
    (MissingInput("data file x.h5 not found"), True),
    (LeaseHeld("run abc", "node7:1234"), True),
    (ValueError("zip() argument 2 is shorter than argument 1"), False),  # a bug: its traceback is what the next person needs
    (KeyError("scores"), False),
])
def test_cli_shows_user_errors_as_one_line_and_bugs_with_their_traceback(monkeypatch, exc, one_line):
    from click.testing import CliRunner

    from steps.cli import main
    from thesis_mlflow.pipeline import upstream

    def boom(*a, **kw):
        raise exc

    monkeypatch.setattr(upstream, "run_generate", boom)
    res = CliRunner().invoke(main, ["generate", "--n-events", "10", "--output", "x.h5"])
    assert res.exit_code == getattr(exc, "exit_code", 1)
    if one_line:
        assert isinstance(res.exception, SystemExit) and res.output.strip().splitlines() == [f"Error: {exc}"]
    else:
        assert res.exception is exc  # not turned into a one-line message: the traceback is printed


def test_names_and_tags_spell_every_factor():
    assert cell_name("binned", "max", False, 5, 2) == "binned-max-nomet-5v-s2"
    assert cell_tag("binned", "max", False, 5, 2) == "tokenizer=binned,pooling=max,met=false,vect=5,seed=2"
    assert CellSpec(met=True).name.endswith("-met-4v-s0") and "met=true" in CellSpec(met=True).tag


@pytest.mark.parametrize("kw, ok", [
    ({"n_bins": 2}, True), ({"n_bins": 20}, True), ({"n_bins": 1}, False), ({"n_bins": 21}, False), ({"n_bins": 5.0}, False),
    ({"codebook_size": 2}, True), ({"codebook_size": 65536}, True), ({"codebook_size": 1}, False), ({"codebook_size": 65537}, False),
    ({"dropout": 0.0}, True), ({"dropout": 0.99}, True), ({"dropout": 1.0}, False), ({"dropout": -0.1}, False),
    ({"lr": 1e-9}, True), ({"lr": 0.0}, False), ({"lr": float("inf")}, False),
    ({"epochs": 1}, True), ({"epochs": 0}, False), ({"batch_size": 1}, True), ({"batch_size": 0}, False),
    ({"d_model": 1, "n_heads": 1}, True), ({"d_model": 0, "n_heads": 1}, False), ({"vqvae_epochs": 1}, True), ({"vqvae_epochs": 0}, False),
    ({"weight_decay": 0.0}, True), ({"weight_decay": -1e-3}, False), ({"warmup_steps": 0}, True), ({"warmup_steps": -1}, False),
    ({"seed": 0}, True), ({"seed": -1}, False), ({"max_train_events": 0}, True), ({"max_train_events": -5}, False),
    ({"device": "cuda"}, True), ({"device": "tpu"}, False),
])
def test_the_edges_of_each_range(kw, ok):
    """Each limit at its boundary: the last allowed value passes, the first refused one does not."""
    if ok:
        CellSpec(**kw)
    else:
        with pytest.raises(BadSetting, match=f"^{next(iter(kw))} must"):  # named as the user wrote it
            CellSpec(**kw)


def test_binned_ambre_needs_its_file_named():
    with pytest.raises(BadSetting) as e:
        CellSpec(tokenizer="binned_ambre")
    assert str(e.value) == "tokenizer=binned_ambre needs binned_path (the colleague's pre-binned HDF5 file)"


def test_options_are_matched_case_insensitively_and_stored_as_spelled():
    s = CellSpec.from_options(task="4T_VS_TTH", pooling="MAX", tokenizer="Binned", phi="ABS", fit_on="Background", device="CPU",
                              step_mode="Eager", vect="5")
    assert (s.task, s.pooling, s.tokenizer, s.phi, s.fit_on, s.device, s.step_mode, s.vect) == (
        "4t_vs_ttH", "max", "binned", "abs", "background", "cpu", "eager", 5)
    with pytest.raises(BadSetting, match="pooling must be one of cls, mean, max; got 'Avg'"):
        CellSpec.from_options(pooling="Avg")  # refused as the user typed it


def test_a_cell_names_its_upstream_runs():
    s = CellSpec(tokenizer="binned", vect=5, n_bins=7, phi="abs", fit_on="background", codebook_size=64, vqvae_epochs=3, vqvae_max_events=99)
    assert s.binning("raw.h5") == BinningSpec(input="raw.h5", n_bins=7, vect=5, phi="abs", fit_on="background")
    assert s.vqvae("raw.h5") == VQSpec(input="raw.h5", vect=5, codebook_size=64, epochs=3, max_events=99)
    assert s.binning("raw.h5").run_name == "binning-v5-b7-abs-background" and s.vqvae("raw.h5").run_name == "vqvae-v5-k64"
    assert s.binning("raw.h5").reuse_params("d") == {"input_sha256": "d", "n_bins": 7, "vect": 5, "phi": "abs", "fit_on": "background"}


def test_cli_args_spell_the_command_a_job_runs():
    s = CellSpec(tokenizer="binned", pooling="max", met=False, vect=5, seed=2, epochs=3, lr=1e-3)
    assert s.cli_args() == ["--tokenizer", "binned", "--pooling", "max", "--met", "false", "--vect", "5", "--seed", "2", "--task", "4t_vs_bg",
                            "--data", "data/4tops_synthetic.h5", "--epochs", "3", "--lr", "0.001"]
    # the factors, task and data always, even at their defaults: a job's command says what it trains
    assert CellSpec().cli_args() == ["--tokenizer", "direct", "--pooling", "cls", "--met", "true", "--vect", "4", "--seed", "0",
                                     "--task", "4t_vs_bg", "--data", "data/4tops_synthetic.h5"]
    amb = CellSpec(tokenizer="binned_ambre", binned_path="/d/a b.h5", system_metrics=False)
    assert amb.cli_args()[-4:] == ["--system-metrics", "false", "--binned-path", "/d/a b.h5"]
    assert amb.cli_args().count("--binned-path") == 1


def _typed(value: str, like):
    """An MLproject default (a string) as the spec's field type."""
    if isinstance(like, bool):
        return {"true": True, "false": False}[value]
    return type(like)(value)


def test_train_options_and_mlproject_parameters_are_the_cell_spec():
    """One source for a cell's settings: the ``train`` command's options and the MLproject's
    ``train`` parameters are CellSpec's fields, with its defaults, and the MLproject command
    passes each one on (plant: a default changed in one place -> this fails)."""
    import dataclasses

    import yaml

    from steps.train import main

    fields = {f.name: f.default for f in dataclasses.fields(CellSpec)}
    ctx = main.make_context("train", [])
    opts = {k.rstrip("_"): v for k, v in ctx.params.items()}
    assert set(opts) == set(fields)
    assert CellSpec.from_options(**opts) == CellSpec()
    ep = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["train"]
    assert set(ep["parameters"]) == set(fields)
    assert {k: _typed(p["default"], fields[k]) for k, p in ep["parameters"].items()} == fields
    for k in fields:
        assert f"--{k.replace('_', '-')} {{{k}}}" in ep["command"], k


def test_model_and_training_configs_are_derived_from_the_cell():
    """A cell's ModelConfig and TrainConfig take every field they share with it, by name, and
    the cell's model and training defaults are theirs (declared once)."""
    import dataclasses

    from thesis_mlflow.spec import ModelConfig, TrainConfig

    spec = CellSpec(tokenizer="binned", pooling="max", met=False, vect=5, seed=2, d_model=24, n_layers=3, n_heads=4, d_ff=40,
                    dropout=0.05, epochs=7, batch_size=32, lr=2e-3, weight_decay=0.1, warmup_steps=9, device="cpu", step_mode="eager")
    m = spec.model_config(2, vocab_size=500)
    t = spec.train_config()
    for cfg in (m, t):
        for f in dataclasses.fields(cfg):
            if hasattr(spec, f.name) and f.name not in ("vocab_size", "stream_key"):
                assert getattr(cfg, f.name) == getattr(spec, f.name), f.name
    assert m.vocab_size == 500 and t.stream_key == spec.stream_key()
    d = CellSpec()
    assert all(getattr(d, k) == getattr(ModelConfig(), k) for k in ("d_model", "n_layers", "n_heads", "d_ff", "dropout"))
    assert all(getattr(d, k) == getattr(TrainConfig(), k) for k in ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps"))


def test_the_query_api_keeps_its_old_name_with_a_warning():
    """Notebooks written before the package was grouped by role import ``thesis_mlflow.results``."""
    import thesis_mlflow
    from thesis_mlflow.report import results

    with pytest.warns(DeprecationWarning, match="now thesis_mlflow.report.results"):
        from thesis_mlflow import results as old
    assert old is results
    with pytest.raises(AttributeError):
        thesis_mlflow.nothing_here  # noqa: B018
