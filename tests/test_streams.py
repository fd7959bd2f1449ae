"""Every run an independent, reproducible replicate: its own random stream for initial weights,
data order and dropout, on the CPU paths (eager, the uncaptured static step, threads side by side).

Each test here fails when the old scheme (draws keyed by the bare seed, or taken from torch's
process-wide generator) is planted back: see the docstrings for which plant each one catches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.together import at_once
from thesis_mlflow.errors import RunConflict
from thesis_mlflow.learn import features, synthetic
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.model import Classifier, ModelConfig, init_weights
from thesis_mlflow.learn.training import TrainConfig, fit
from thesis_mlflow.spec import SCHEME, CellSpec, RunStream, stream_check

SMALL = dict(tokenizer="binned", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.2)


@pytest.fixture(scope="module")
def splits():
    sp = synthetic.generate(synthetic.GeneratorConfig(n_events=700, seed=5))
    b = Binning().fit(sp["train"])
    return {s: features.make_tensors(features.token_inputs(b.transform(sp[s]), True), sp[s].y, "4t_vs_bg") for s in ("train", "val")}


def _cfg(spec: CellSpec, **kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, lr=3e-3, warmup_steps=3, device="cpu", step_mode="eager")
    return TrainConfig(**{**base, **kw}, seed=spec.seed, stream_key=spec.stream_key())


def _fit(splits, spec: CellSpec, path, **kw):
    model = Classifier(ModelConfig(**{**SMALL, "pooling": spec.pooling}))
    hist = fit(model, splits["train"], splits["val"], _cfg(spec), path, progress=False, **kw)
    return model, hist


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# --------------------------------------------------------------------------- the stream itself


def test_stream_is_a_function_of_key_and_seed_only():
    a, b = RunStream("cell:x", 0), RunStream("cell:x", 0)
    assert a.id == b.id and a.seed64("order", 3) == b.seed64("order", 3)
    ids = {RunStream(k, s).id for k in ("cell:x", "cell:y") for s in (0, 1, 2)}
    assert len(ids) == 6  # every (key, seed) its own stream
    # purposes and epochs are independent children: no two share a seed
    seeds = {a.seed64(p, e) for p in ("init", "order", "dropout") for e in range(5)}
    assert len(seeds) == 15 and all(0 <= s < 2**63 for s in seeds)
    assert a.params() == {"rng_stream": a.id, "rng_scheme": SCHEME, "rng_key": "cell:x"}
    with pytest.raises(ValueError, match="seed"):
        RunStream("cell:x", -1)


def test_stream_key_separates_cells_of_one_seed():
    """The old scheme keyed everything by the bare seed: two cells of seed 0 then shared it."""
    specs = [CellSpec(pooling=p, met=m, vect=v, tokenizer=t) for p in ("cls", "mean", "max") for m in (True, False) for v in (4, 5)
             for t in ("direct", "binned", "vqvae")]
    assert len({s.stream_key() for s in specs}) == len(specs)
    assert CellSpec(seed=0).stream_key() == CellSpec(seed=2).stream_key()  # the seed enters the stream, not the key
    assert CellSpec(pooling="max").stream_key() == "cell:task=4t_vs_bg,tokenizer=direct,pooling=max,met=true,vect=4"
    cfg = CellSpec(pooling="max", seed=2).train_config()
    assert cfg.stream == RunStream("cell:task=4t_vs_bg,tokenizer=direct,pooling=max,met=true,vect=4", 2)


def test_epoch_order_differs_across_cells_and_epochs_and_repeats():
    """Plant: an order from (seed, epoch) only -> the two cells of one seed see the same order."""
    mean, mx = (RunStream(CellSpec(pooling=p).stream_key(), 0) for p in ("mean", "max"))
    assert torch.equal(mean.epoch_order(500, 1), mean.epoch_order(500, 1))
    assert not torch.equal(mean.epoch_order(500, 1), mx.epoch_order(500, 1))
    assert not torch.equal(mean.epoch_order(500, 1), mean.epoch_order(500, 2))
    assert sorted(mean.epoch_order(500, 1).tolist()) == list(range(500))


def test_stream_check_refuses_other_schemes_and_streams():
    s = RunStream("cell:x", 0)
    assert stream_check({"scheme": SCHEME, "id": s.id}, s) is None
    assert "scheme 1" in stream_check(None, s)  # a checkpoint from before streams
    assert "scheme 7" in stream_check({"scheme": 7, "id": s.id}, s)
    assert "stream" in stream_check({"scheme": SCHEME, "id": RunStream("cell:x", 1).id}, s)


# --------------------------------------------------------------------------- weights and dropout


def test_init_weights_come_from_the_generator_only():
    """Plant: weights from torch's global generator -> the global seed changes them."""
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(0)
    a = init_weights(Classifier(cfg), torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    b = init_weights(Classifier(cfg), torch.Generator().manual_seed(7))
    c = init_weights(Classifier(cfg), torch.Generator().manual_seed(8))
    assert _same(a, b) and not _same(a, c)
    emb = a.embed.emb.weight
    assert torch.all(emb[0] == 0) and emb[1:].std().item() == pytest.approx(1.0, abs=0.05)  # padding row zero, N(0, 1) elsewhere


def test_init_weights_refuses_a_parameter_without_rule():
    m = Classifier(ModelConfig(**SMALL))
    m.blocks[0].extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="blocks.0.extra"):
        init_weights(m, torch.Generator())


def test_dropout_masks_come_from_the_runs_generator():
    """Plant: dropout from the process-wide generator -> two runs' generators do not matter,
    and one run's masks follow whatever else drew before."""
    model = init_weights(Classifier(ModelConfig(**{**SMALL, "tokenizer": "direct", "met": False})), torch.Generator().manual_seed(0))
    model.train()
    batch = {"cont": torch.randn(32, 18, 3), "ids": torch.randint(1, 8, (32, 18)), "valid": torch.ones(32, 18, dtype=torch.bool)}
    with pytest.raises(RuntimeError, match="set_noise"):
        model(batch)
    outs = []
    for seed in (1, 1, 2):
        model.set_noise(torch.Generator().manual_seed(seed))
        torch.rand(100)  # another run's draw from the global generator in between
        outs.append(model(batch))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    model.eval()  # no dropout in evaluation: no generator needed, nothing drawn
    model.set_noise(None)
    model(batch)


# --------------------------------------------------------------------------- whole runs


def test_same_run_twice_is_identical_whatever_the_global_state(splits, tmp_path):
    spec = CellSpec(tokenizer="binned", pooling="max", seed=1)
    torch.manual_seed(0)
    a, ha = _fit(splits, spec, tmp_path / "a.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    b, hb = _fit(splits, spec, tmp_path / "b.pt")
    assert _same(a, b)
    assert [h["metrics"]["train_loss"] for h in ha] == [h["metrics"]["train_loss"] for h in hb]


def test_cells_of_one_seed_start_apart_and_seeds_differ():
    """Plant: initial weights from the bare seed -> mean and max pooling (the same parameters)
    start from the very same weights. (That fit trains from this draw: the next test.)"""
    starts = {}
    for pooling, seed in (("mean", 0), ("max", 0), ("mean", 1)):
        spec = CellSpec(tokenizer="binned", pooling=pooling, seed=seed)
        starts[pooling, seed] = init_weights(Classifier(ModelConfig(**{**SMALL, "pooling": pooling})), _cfg(spec).stream.torch_generator("init"))
    assert set(starts["mean", 0].state_dict()) == set(starts["max", 0].state_dict())  # same parameters...
    assert not _same(starts["mean", 0], starts["max", 0])  # ...other values
    assert not _same(starts["mean", 0], starts["mean", 1])


def test_fit_draws_the_start_from_the_stream(splits, tmp_path):
    """What fit trains from is the stream's ``init`` draw, whatever the model held before."""
    spec = CellSpec(tokenizer="binned", pooling="mean", seed=0)
    cfg = _cfg(spec, epochs=1, lr=1e-12, weight_decay=0.0, warmup_steps=0)  # an LR so small the weights stay put
    torch.manual_seed(5)
    model = Classifier(ModelConfig(**{**SMALL, "pooling": "mean"}))
    fit(model, splits["train"], splits["val"], cfg, tmp_path / "x.pt", progress=False)
    want = init_weights(Classifier(ModelConfig(**{**SMALL, "pooling": "mean"})), cfg.stream.torch_generator("init"))
    for (k, a), b in zip(model.state_dict().items(), want.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=k)


def test_resume_redraws_the_same_masks(splits, tmp_path):
    """Stopped after epoch 1 and resumed: the very weights of an uninterrupted run, dropout on.
    Plant: masks from a generator not reseeded from (stream, epoch) -> the resumed epoch 2 draws
    other masks."""
    spec = CellSpec(tokenizer="binned", pooling="cls", seed=0)
    ref, _ = _fit(splits, spec, tmp_path / "ref.pt")

    def stop(epoch, _):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(splits, spec, tmp_path / "one.pt", on_epoch=stop)
    torch.rand(1000)  # the process's generators moved on meanwhile
    resumed = Classifier(ModelConfig(**{**SMALL, "pooling": "cls"}))
    fit(resumed, splits["train"], splits["val"], _cfg(spec), tmp_path / "two.pt", resume_from=tmp_path / "one.pt", progress=False)
    assert _same(ref, resumed)


def test_resume_under_another_stream_or_scheme_is_refused(splits, tmp_path):
    spec = CellSpec(tokenizer="binned", pooling="cls", seed=0)
    _fit(splits, spec, tmp_path / "one.pt")
    other = CellSpec(tokenizer="binned", pooling="cls", seed=1)
    model = Classifier(ModelConfig(**{**SMALL, "pooling": "cls"}))
    with pytest.raises(RunConflict, match="random stream"):
        fit(model, splits["train"], splits["val"], _cfg(other, epochs=3), tmp_path / "x.pt", resume_from=tmp_path / "one.pt", progress=False)
    ck = torch.load(tmp_path / "one.pt", weights_only=True)
    del ck["stream"]  # as a checkpoint written before streams
    torch.save(ck, tmp_path / "old.pt")
    with pytest.raises(RunConflict, match="scheme 1"):
        fit(model, splits["train"], splits["val"], _cfg(spec, epochs=3), tmp_path / "y.pt", resume_from=tmp_path / "old.pt", progress=False)


def test_side_by_side_in_threads_equals_alone(splits, tmp_path):
    """Two cells trained at once in threads of one process (as a pack does) end bit-identical to
    each trained alone. Plant: dropout or weights from the process-wide generator -> each cell's
    draws interleave with the other's, in an order set by thread timing."""
    specs = [CellSpec(tokenizer="binned", pooling="max", seed=0), CellSpec(tokenizer="binned", pooling="max", seed=1)]
    alone = [_fit(splits, s, tmp_path / f"alone{i}.pt")[0] for i, s in enumerate(specs)]
    together = at_once(lambda i, s: _fit(splits, s, tmp_path / f"together{i}.pt")[0], list(enumerate(specs)))
    for i in range(2):
        assert _same(alone[i], together[i]), i
    assert not _same(alone[0], alone[1])
