"""The cell path in the quick loop (``make test-fast``, and so the mutation check): one cell
trained in-process against a local SQLite store (no server, browser or subprocess), the inputs
of each tokenizer with their upstream runs, and the driver's bookkeeping."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from thesis_mlflow.errors import BadInput, MissingInput
from thesis_mlflow.grid import driver, gridfile
from thesis_mlflow.grid.local import submit as local_submit
from thesis_mlflow.learn.metrics import binary_metrics
from thesis_mlflow.pipeline.cell import train_cell
from thesis_mlflow.pipeline.inputs import build_inputs
from thesis_mlflow.spec import CellSpec
from thesis_mlflow.tracking.done import is_done

from .conftest import end_active_runs, sqlite_store, write_colleague_layouts

TINY = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, batch_size=64, warmup_steps=5, lr=3e-3, max_train_events=300,
            max_eval_events=200, epochs=1, system_metrics=False, device="cpu")


@pytest.fixture()
def local_store(tmp_path, monkeypatch, template_store):
    """A SQLite store in this test's folder, in-process: ``mlflow_env``'s store, kept in the quick
    loop (not marked slow); its client."""
    yield mlflow.MlflowClient(sqlite_store(tmp_path, monkeypatch, template_store, "fast"))
    end_active_runs()


def test_one_cell_trains_logs_and_is_done(local_store, tiny_raw):
    spec = CellSpec(tokenizer="direct", pooling="mean", data=str(tiny_raw), **TINY)
    ended = []
    rid = train_cell(spec, on_end=ended.append)
    run = local_store.get_run(rid)
    assert run.info.status == "FINISHED" and is_done(run) and ended == [rid]  # the grid's progress hook: once, when the run ended
    p = run.data.params
    assert (p["n_train_events"], p["n_val_events"], p["n_test_events"]) == ("300", "200", "200")
    assert {"test_auc_vs_ttH", "test_auc_vs_ttZ", "test_rej50_vs_ttW"} <= set(run.data.metrics)  # per background: the labels reached it
    assert (p["tokenizer"], p["pooling"], p["met"], p["vect"]) == ("direct", "mean", "true", "4") and int(p["n_params"]) > 0
    assert p["rng_key"] == spec.stream_key() and p["step_mode"] == "eager"
    assert [m.step for m in local_store.get_metric_history(rid, "val_auc")] == [1]
    s = np.load(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="eval/test_scores.npz"))
    assert len(s["scores"]) == int(p["n_test_events"]) and set(np.unique(s["process"])) <= {1, 2, 3, 4, 5}
    assert binary_metrics(s["labels"].astype(bool), s["scores"])["auc"] == pytest.approx(run.data.metrics["test_auc"], abs=1e-6)
    assert train_cell(spec, rid) == rid  # done: nothing retrained, nothing logged twice
    assert [m.step for m in local_store.get_metric_history(rid, "val_auc")] == [1]
    with pytest.raises(MissingInput):  # bad input: no run, so no progress hook either
        train_cell(spec.replace(data=str(tiny_raw.parent / "absent.h5")), on_end=ended.append)
    assert ended == [rid]
    # where the user finds it: its name and grid tag, the file it read, its log
    assert run.info.run_name == spec.name == "direct-mean-met-4v-s0" and run.data.tags["grid.cell"] == spec.tag
    assert p["data"] == str(tiny_raw) and run.data.tags["step"] == "train" and run.inputs.dataset_inputs
    assert "logs/train.log" in {a.path for a in local_store.list_artifacts(rid, "logs")}


def test_a_cell_trains_in_the_run_it_is_given(local_store, tiny_raw, monkeypatch):
    """A grid's child (``run_id``) or `mlflow run`'s run (``MLFLOW_RUN_ID``): trained there, no
    new run; a given run whose inputs fail is FAILED where the user looks, with the cause."""
    exp = local_store.get_experiment_by_name("fast").experiment_id
    spec = CellSpec(tokenizer="direct", pooling="max", met=False, vect=5, seed=1, data=str(tiny_raw), **TINY)
    child = local_store.create_run(exp, run_name=spec.name, tags={"step": "train", "grid.cell": spec.tag}).info.run_id
    assert train_cell(spec, child) == child and is_done(local_store.get_run(child))
    mine = local_store.create_run(exp, run_name="mlflow-run", tags={"step": "train"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", mine)
    assert train_cell(spec.replace(seed=2)) == mine and is_done(local_store.get_run(mine))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # (MLflow drops it once that run ended)
    assert len(local_store.search_runs([exp])) == 2  # nothing else was created
    for by_env in (False, True):  # a grid's child; `mlflow run`'s run
        broken = local_store.create_run(exp, run_name=f"broken-{by_env}", tags={"step": "train"}).info.run_id
        if by_env:
            monkeypatch.setenv("MLFLOW_RUN_ID", broken)
        ended = []
        with pytest.raises(Exception, match="absent.h5"):
            train_cell(spec.replace(data=str(tiny_raw.parent / "absent.h5")), None if by_env else broken, on_end=ended.append)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        r = local_store.get_run(broken)
        assert r.info.status == "FAILED" and r.data.tags["error.class"] and "absent.h5" in r.data.tags["error.message"], by_env
        assert ended == [broken]  # it ended (FAILED): the grid's progress hook hears of it, once
        assert "logs/train.log" in {a.path for a in local_store.list_artifacts(broken, "logs")}


def test_a_retried_cell_resumes_from_its_checkpoint_and_refuses_other_settings(local_store, tiny_raw, monkeypatch, caplog):
    """A cell retried in its run after failing (1) after epoch 1's metrics, (2) between epoch 2's
    checkpoint upload and its metrics: each retry resumes from the last checkpoint, trains only
    what is left, logs each epoch once and its data input once, and the run ends as an
    uninterrupted one does. A retry with other settings is refused and logs nothing; params
    that `mlflow run` logged in its own spelling are kept, not a clash."""
    import logging

    import torch

    from thesis_mlflow.errors import RunConflict

    from . import fault

    exp = local_store.get_experiment_by_name("fast").experiment_id
    spec = CellSpec(tokenizer="direct", pooling="cls", data=str(tiny_raw), **{**TINY, "epochs": 2})
    ref = train_cell(spec)
    rid = local_store.create_run(exp, run_name="mlflow-run", tags={"step": "train"}).info.run_id
    for k, v in {"lr": "3e-3", "epochs": "2", "met": "True", "data": f"{tiny_raw.parent}/./{tiny_raw.name}", "step_mode": "auto"}.items():
        local_store.log_param(rid, k, v)  # as `mlflow run -P ...` logs them: the user's spelling

    def attempt(fail_at=None):
        caplog.clear()
        with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="thesis_mlflow"):
            if fail_at is None:
                return train_cell(spec, rid)
            fault.install(1, at=fail_at, how="raise", patch=m)  # the first epoch this attempt trains
            with pytest.raises(fault.PlantedFailure):
                train_cell(spec, rid)

    def trained():  # the epochs this attempt trained to the end (fit logs a line for each)
        return [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("epoch ")]

    def steps(key="val_auc"):
        return [m.step for m in local_store.get_metric_history(rid, key)]

    def settings(run):  # each attempt takes the run's lease anew (a lease.g<N> param): not a setting
        return {k: v for k, v in run.data.params.items() if not k.startswith("lease.")}

    attempt("metrics")
    r = local_store.get_run(rid)
    assert r.info.status == "FAILED" and steps() == [1] and trained() == ["1/2"]
    for other in (dict(lr=1e-3), dict(seed=1), dict(epochs=3), dict(pooling="max")):
        with pytest.raises(RunConflict, match=f"refusing to resume: .*'{next(iter(other))}'"):
            train_cell(spec.replace(**other), rid)
    assert settings(local_store.get_run(rid)) == settings(r) and steps() == [1]
    attempt("checkpoint")
    assert "resumed from epoch 1" in caplog.text and steps() == [1]  # epoch 2's checkpoint is up, its metrics not
    assert attempt() == rid
    assert "resumed from epoch 2" in caplog.text and trained() == []  # both epochs in the checkpoint: nothing trained again
    done, want = local_store.get_run(rid), local_store.get_run(ref)
    assert done.info.status == "FINISHED" and is_done(done)
    for k in ("val_auc", "train_loss", "epoch"):  # epoch 2 replayed from the checkpoint's history, each epoch once
        assert steps(k) == [1, 2], k
    assert {m.step: m.value for m in local_store.get_metric_history(rid, "val_auc")} == \
        {m.step: m.value for m in local_store.get_metric_history(ref, "val_auc")}
    assert done.data.metrics["test_auc"] == want.data.metrics["test_auc"]
    w = [torch.load(mlflow.artifacts.download_artifacts(run_id=x, artifact_path="checkpoints/last.pt"), weights_only=True) for x in (ref, rid)]
    for k, v in w[0]["model"].items():
        torch.testing.assert_close(w[1]["model"][k], v, rtol=0, atol=0, msg=k)
    assert len(done.inputs.dataset_inputs) == 1 and done.data.params["step_mode"] == "auto" and done.data.tags["step_mode.used"] == "eager"
    assert done.data.params["lr"] == "3e-3" and done.data.params["n_params"] == want.data.params["n_params"]
    assert local_store.get_metric_history(rid, "train_seconds") and "model/scaler.json" in {
        a.path for a in local_store.list_artifacts(rid, "model")}
    # what a reader of the run finds: the input's role, the checkpoint's scaler and factors, the model's config
    assert {t.key: t.value for t in done.inputs.dataset_inputs[0].tags}["mlflow.data.context"] == "training"
    assert w[1]["scaler"] == w[0]["scaler"] and w[1]["scaler"] and w[1]["factors"]["tokenizer"] == "direct"
    cfg = mlflow.artifacts.load_dict(f"runs:/{rid}/model/config.json")
    assert cfg["model_config"]["d_model"] == TINY["d_model"] and cfg["factors"]["pooling"] == "cls"


@pytest.mark.parametrize("tokenizer", ["direct", "binned", "vqvae"])
def test_inputs_of_each_tokenizer_and_their_upstream_runs(local_store, tiny_raw, tokenizer):
    spec = CellSpec(tokenizer=tokenizer, data=str(tiny_raw), vqvae_epochs=1, vqvae_max_events=300, codebook_size=16, **TINY)
    inp = build_inputs(spec)
    keys = {"direct": {"cont", "ids", "valid", "met"}, "binned": {"tokens", "valid"}, "vqvae": {"tokens", "valid", "met"}}[tokenizer]
    assert set(inp.arrays["train"]) == keys
    assert len(inp.labels["train"]) == 300 and len(inp.labels["test"]) == 200
    # the cell's own factors reach its arrays: MET in or out, 4- or 5-vectors
    other = build_inputs(spec.replace(met=False, vect=5))
    width = {"direct": ("cont", -1, 3, 4), "binned": ("tokens", 1, 20, 18), "vqvae": ("tokens", 1, 18, 18)}[tokenizer]
    key, axis, with_met_4v, without_met_5v = width
    assert inp.arrays["train"][key].shape[axis] == with_met_4v and other.arrays["train"][key].shape[axis] == without_met_5v
    assert ("met" in other.arrays["train"]) is False and ("met" in inp.arrays["train"]) is (tokenizer != "binned")
    assert (inp.info.vect, other.info.vect) == ((None, None) if tokenizer == "direct" else (4, 5))
    # what the train run logs as where its inputs came from: only this tokenizer's own
    assert set(inp.info.params()) == {"direct": set(), "binned": {"binning_run_id", "binned_file", "vocab_size"},
                                      "vqvae": {"vqvae_run_id", "codebook_size"}}[tokenizer]
    assert all(v is not None for v in inp.info.params().values())
    upstream = {"binned": "binning_run_id", "vqvae": "vqvae_run_id"}.get(tokenizer)
    if upstream is None:
        assert inp.info.scaler is not None and inp.info.binning_run_id is None and inp.info.vqvae_run_id is None
        return
    assert getattr(other.info, upstream) != getattr(inp.info, upstream)  # another vect: another upstream run
    rid = getattr(inp.info, upstream)
    assert local_store.get_run(rid).info.status == "FINISHED"
    assert getattr(build_inputs(spec).info, upstream) == rid  # found and reused, not made again
    if tokenizer == "binned":
        assert inp.info.vocab_size > 5 and inp.info.vect == 4
        from thesis_mlflow.pipeline.cell import _prepare

        five = spec.replace(met=False, vect=5)  # the model's table fits the binning (vect 4's happens to be the default size)
        assert _prepare(five, five.train_config()).model.cfg.vocab_size == other.info.vocab_size != inp.info.vocab_size
        return
    assert inp.info.codebook_size == 16 and inp.arrays["train"]["tokens"].max() <= 16 and inp.info.scaler is not None
    # a VQ-VAE run named by the user (here one with 8 codes): used as it is, and refused for the other vect
    from thesis_mlflow.pipeline import upstream

    rid8, _ = upstream.find_or_run(spec.replace(codebook_size=8).vqvae(inp.info.data))
    given = build_inputs(spec.replace(vqvae_run_id=rid8))
    assert rid8 != rid and given.info.vqvae_run_id == rid8 and given.info.codebook_size == 8
    assert given.arrays["test"]["tokens"].max() <= 8 and given.info.params() == {"vqvae_run_id": rid8, "codebook_size": 8}
    assert np.array_equal(build_inputs(spec.replace(vqvae_run_id=rid)).arrays["test"]["tokens"], inp.arrays["test"]["tokens"])
    with pytest.raises(BadInput, match=f"vqvae run {rid8} was trained with vect=4, but vect=5 was requested"):
        build_inputs(spec.replace(vqvae_run_id=rid8, vect=5))


@pytest.fixture(scope="module")
def colleague_files(tmp_path_factory, tiny_raw):
    """The colleague's pre-binned file as it comes (``write_colleague_layouts``: combined in the
    raw file's row order, shuffled), and once with attributes naming its vect and token table."""
    import h5py

    from thesis_mlflow.learn import data
    from thesis_mlflow.learn.binning import Binning, write_binned

    d = tmp_path_factory.mktemp("colleague")
    raw = data.read_raw(tiny_raw)
    write_binned(d / "ours.h5", Binning().fit(raw["train"]), raw, "x")
    combined, _ = write_colleague_layouts(d / "ours.h5", d)
    shutil.copyfile(combined, d / "labelled.h5")
    with h5py.File(d / "labelled.h5", "a") as f:  # its attributes say vect 5 and 5000 tokens: believed over what the tokens look like
        f.attrs["vect"], f.attrs["vocab_size"] = 5, 5000
    return d


def test_the_vect_of_a_token_file_without_attributes():
    """Up to 886 tokens (the 4-vector binning's table) is a 4-vector file, more a 5-vector one;
    the file's own ``vocab_size`` attribute when it has one; nothing to go by: the vect asked for."""
    from thesis_mlflow.pipeline.inputs import infer_vect

    assert infer_vect({"all": np.array([[3, 885]])}, {}, 5) == 4  # 886 tokens
    assert infer_vect({"all": np.array([[3, 886]]), "b": np.array([[1]])}, {}, 4) == 5  # 887 tokens
    assert infer_vect({"all": np.array([[3, 10]])}, {"vocab_size": 4386}, 4) == 5 and infer_vect({"all": np.array([[4386]])}, {"vocab_size": 20}, 5) == 4
    assert infer_vect({"all": np.array([[0]])}, {"vocab_size": 0}, 5) == 4  # one token (the padding): vocab 1
    assert infer_vect({"all": np.array([[-1]])}, {}, 5) == 5 and infer_vect({"all": np.array([[-1]])}, {}, 4) == 4  # no tokens: as asked


@pytest.mark.parametrize("which, how", [("combined", "aligned_with_raw"), ("shuffled", "seeded_80_10_10_seed0")])
def test_inputs_from_the_colleagues_file(colleague_files, tiny_raw, which, how):
    """binned_ambre: no upstream run; the file is split (like the raw file when its rows align
    with it), cut to the cell's limits, its vect inferred, and that vect checked."""
    path = colleague_files / f"{which}.h5"
    spec = CellSpec(tokenizer="binned_ambre", binned_path=str(path), data=str(tiny_raw), **TINY)
    inp = build_inputs(spec)
    assert inp.info.params() == {"binned_file": str(path), "vocab_size": inp.info.vocab_size, "ambre_split": how}
    assert inp.info.data == str(path) and inp.info.vect == 4 and 5 < inp.info.vocab_size <= 886
    assert set(inp.arrays["train"]) == {"tokens", "valid"} and inp.arrays["train"]["tokens"].shape[1] == 20
    assert len(inp.labels["train"]) == 300 and len(inp.labels["val"]) == len(inp.labels["test"]) == 200  # the cell's limits
    assert all(len(inp.labels[s]) == len(inp.arrays[s]["tokens"]) for s in ("train", "val", "test"))
    if which == "combined":  # aligned: the raw file's own splits and labels, row for row
        from thesis_mlflow.learn import data

        raw = data.read_raw(tiny_raw)
        assert all(np.array_equal(inp.labels[s], raw[s].y[: len(inp.labels[s])]) for s in ("train", "val", "test"))
    assert build_inputs(spec.replace(met=False)).arrays["train"]["tokens"].shape[1] == 18  # MET in or out
    with pytest.raises(BadInput, match=f"binned file {path} was made with vect=4, but vect=5 was requested"):
        build_inputs(spec.replace(vect=5))
    if which == "shuffled":
        return
    # without the raw file to align with: the seeded split
    assert build_inputs(spec.replace(data=str(colleague_files / "absent.h5"))).info.ambre_split == "seeded_80_10_10_seed0"
    # a file whose attributes name its vect and token table: they are believed
    labelled = spec.replace(binned_path=str(colleague_files / "labelled.h5"), vect=5)
    assert (build_inputs(labelled).info.vect, build_inputs(labelled).info.vocab_size) == (5, 5000)
    with pytest.raises(BadInput, match="was made with vect=5, but vect=4 was requested"):
        build_inputs(labelled.replace(vect=4))


def test_driver_bookkeeping():
    cells = [CellSpec(tokenizer=t, pooling=p, seed=s) for s in (0, 1, 2) for t in ("direct", "binned") for p in ("cls", "max")]
    todo = [(c, f"r{i}") for i, c in enumerate(cells)]
    groups = gridfile.by_configuration(todo)
    assert len(groups) == 4 and all([c.seed for c, _ in v] == [0, 1, 2] for v in groups.values())
    assert list(groups)[0] == CellSpec(tokenizer="direct", pooling="cls")  # configurations in the order given
    workers = local_submit.split_over_workers(todo, 3)
    assert sorted(len(w) for w in workers) == [3, 3, 6] and sum(map(len, workers)) == 12
    for w in workers:  # a configuration's seeds never split over two workers
        assert all(len([c for c, _ in w if c.replace(seed=0) == k]) in (0, 3) for k in groups)
    assert driver.stacking("auto", True) and not driver.stacking("auto", False)  # auto: stacked on a GPU, not on a CPU
    assert driver.stacking("on", False)
    assert not driver.stacking("off", True)
    with pytest.raises(ValueError, match="stack_seeds must be one of auto, on, off"):
        driver.stacking("yes", True)


# The bottom layer every module speaks (exceptions, paths, the cell's settings): not counted as
# a module the cell path "enters", as the standard library is not.
VOCABULARY = {"thesis_mlflow.errors", "thesis_mlflow.paths", "thesis_mlflow.spec", "thesis_mlflow.permissions"}
LAYER = {"learn": 1, "tracking": 1, "pipeline": 2, "grid": 3, "report": 3, "server": 3}


def test_one_cell_enters_few_modules_and_climbs_back_up_only_through_its_callbacks(local_store, tiny_raw):
    """Following one cell from ``train_cell`` to its logged metrics (every call between two of
    the package's modules, traced): the parts of the package it enters, and the calls from a
    lower layer up to a higher one. A subpackage's modules count as that subpackage (issue #46:
    counting modules rewarded files holding several concepts; a concept split into its own
    module must never fail this): the cell enters ``learn``, ``tracking`` and ``pipeline``, never
    ``grid``, ``report`` or ``server``; 3 kinds of climb: the training loop's three callbacks into
    the cell (each epoch's metrics, its checkpoint, the step mode used)."""
    import collections
    import sys
    import threading

    def module(frame):
        name = frame.f_globals.get("__name__", "") if frame is not None else ""
        return name if name.startswith("thesis_mlflow") else None

    def layer(name):
        return 0 if name in VOCABULARY else LAYER.get(name.split(".")[1], 9)

    entered, climbs = set(), collections.Counter()

    def trace(frame, event, arg):
        if event != "call" or (m := module(frame)) is None:
            return
        caller = frame.f_back
        while caller is not None and module(caller) is None:
            caller = caller.f_back
        c = module(caller)
        if c != m:
            entered.add(m)
            if c is not None and layer(m) > layer(c):
                climbs[(c.rsplit(".", 1)[-1], m.rsplit(".", 1)[-1], frame.f_code.co_name)] += 1

    spec = CellSpec(tokenizer="direct", pooling="mean", data=str(tiny_raw), **TINY)
    sys.setprofile(trace)
    threading.setprofile(trace)
    try:
        train_cell(spec)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    outside = sorted(entered - VOCABULARY)
    assert "thesis_mlflow.tracking.runs" in outside and "thesis_mlflow.learn.training" in outside  # the trace sees the path
    assert {m.split(".")[1] for m in outside} == {"learn", "tracking", "pipeline"}, outside
    assert set(climbs) <= {("training", "cell", "on_epoch"), ("training", "cell", "on_step_mode"), ("training", "cell", "on_checkpoint")}, climbs
    assert sum(climbs.values()) <= 3, climbs  # one epoch: one call each


def test_an_interrupt_stops_every_fit_in_its_thread_then_lets_the_process_train_again(monkeypatch):
    """Ctrl-C or a signal while cells train in threads: each fit stops at its next step
    (``Stopped``), the driver waits for them and re-raises; afterwards a fit of the same process
    (a notebook's next grid) trains again (plant: the stop never lifted -> the check raises)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from thesis_mlflow.errors import Stopped
    from thesis_mlflow.learn import training

    started = threading.Barrier(3)
    interrupted = []

    def wait_interrupted(fs):
        if not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        return driver.__dict__["_real_wait"](fs)

    def fit():
        started.wait(10)
        while True:
            training.check_stop()
            time.sleep(0.005)

    monkeypatch.setitem(driver.__dict__, "_real_wait", driver.wait)
    monkeypatch.setattr(driver, "wait", wait_interrupted)
    with ThreadPoolExecutor(2) as pool:
        fs = [pool.submit(fit) for _ in range(2)]
        started.wait(10)
        with pytest.raises(KeyboardInterrupt):
            driver._wait_or_stop(fs)
    lifted = not training.STOP.is_set()
    training.STOP.clear()  # (for the next tests of this worker, whatever the answer)
    assert all(isinstance(f.exception(), Stopped) for f in fs) and lifted


def test_resume_checks_every_factor_the_spec_declares():
    """A factor added to ``spec.FACTORS`` is checked on resume with no second edit: ``CHECKED`` is
    built from it, not a copy of its names (plant: the names written out again fails this)."""
    import ast
    import inspect

    from thesis_mlflow.pipeline import cell
    from thesis_mlflow.spec import FACTORS

    tree = ast.parse(inspect.getsource(cell))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CHECKED")
    first = node.value.elts[0]
    assert isinstance(first, ast.Starred) and first.value.id == "FACTORS"
    assert cell.CHECKED[: len(FACTORS)] == FACTORS and {"seed", "task", "epochs", "lr", "rng_stream"} <= set(cell.CHECKED)
