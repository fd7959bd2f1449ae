"""The classifier: size, masking, pooling, and that every factor changes the computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from thesis_mlflow.learn import features, synthetic
from thesis_mlflow.learn.binning import Binning
from thesis_mlflow.learn.model import Classifier, ModelConfig

SMALL = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)


@pytest.fixture(scope="module")
def split():
    return synthetic.generate(synthetic.GeneratorConfig(n_events=200, seed=3))["train"]


def batch_for(split, tokenizer, met, vect, n=16):
    sp = split
    scaler = features.Scaler.fit(sp)
    if tokenizer == "direct":
        inp = features.direct_inputs(sp, vect, met, scaler)
    elif tokenizer == "vqvae":
        codes = np.where(sp.valid, np.arange(18)[None, :] % 7, -1)
        inp = features.code_inputs(codes, sp, met, scaler)
    else:
        inp = features.token_inputs(Binning(vect=vect).fit(sp).transform(sp), met)
    return {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in inp.items()}


def vocab(vect):
    return Binning(vect=vect).vocab_size


def test_default_size_is_the_users_400k():
    m = Classifier(ModelConfig(tokenizer="binned", vocab_size=886))
    n, n_emb = m.n_params()
    assert 330_000 <= n <= 350_000
    assert n_emb == 886 * 72
    assert 390_000 <= n + n_emb <= 420_000
    d = m.describe()
    assert (d["d_model"], d["n_layers"], d["n_heads"], d["d_ff"]) == (72, 8, 8, 144)


@pytest.mark.parametrize("tokenizer, met, vect", list(itertools.product(["direct", "binned", "binned_ambre", "vqvae"], [True, False], [4, 5])))
def test_forward_shapes(split, tokenizer, met, vect):
    for n_classes in (2, 5):
        m = Classifier(ModelConfig(tokenizer=tokenizer, met=met, vect=vect, vocab_size=vocab(vect), codebook_size=16, n_classes=n_classes, **SMALL))
        out = m(batch_for(split, tokenizer, met, vect))
        assert out.shape == (16, n_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
@pytest.mark.parametrize("tokenizer", ["direct", "binned"])
def test_appended_padding_leaves_logits_unchanged(split, pooling, tokenizer):
    torch.manual_seed(0)
    m = Classifier(ModelConfig(tokenizer=tokenizer, pooling=pooling, vocab_size=886, **SMALL)).eval()
    b = batch_for(split, tokenizer, True, 4)
    ref = m(b)
    pad = 5
    b2 = dict(b)
    if tokenizer == "direct":
        b2["cont"] = torch.cat([b["cont"], torch.zeros(16, pad, 3)], 1)
        b2["ids"] = torch.cat([b["ids"], torch.zeros(16, pad, dtype=torch.long)], 1)
        b2["valid"] = torch.cat([b["valid"], torch.zeros(16, pad, dtype=torch.bool)], 1)
    else:
        b2["tokens"] = torch.cat([b["tokens"], torch.zeros(16, pad, dtype=torch.long)], 1)
        b2["valid"] = torch.cat([b["valid"], torch.zeros(16, pad, dtype=torch.bool)], 1)
    torch.testing.assert_close(m(b2), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pooling_ignores_padding_even_huge(pooling):
    m = Classifier(ModelConfig(tokenizer="binned", pooling=pooling, **SMALL))
    x = torch.randn(4, 10, 16)
    valid = torch.zeros(4, 10, dtype=torch.bool)
    valid[:, :3] = True
    x_huge = x.clone()
    x_huge[~valid] = 1e30
    out = m.pool(x_huge, valid)
    expect = x[:, :3].amax(1) if pooling == "max" else x[:, :3].mean(1)
    torch.testing.assert_close(out, expect)


def test_model_ignores_padding_token_contents(split):
    """Changing what sits at padded object positions (direct features) changes nothing."""
    m = Classifier(ModelConfig(tokenizer="direct", pooling="max", **SMALL)).eval()
    b = batch_for(split, "direct", True, 4)
    b2 = dict(b)
    b2["cont"] = b["cont"].clone()
    b2["cont"][~b["valid"]] = 1e6
    torch.testing.assert_close(m(b2), m(b))


# --- every factor changes the computation -------------------------------------------------


def _same_weights(a: Classifier, b: Classifier) -> None:
    b.load_state_dict(a.state_dict())


def test_pooling_changes_output(split):
    torch.manual_seed(0)
    mean = Classifier(ModelConfig(tokenizer="binned", pooling="mean", **SMALL)).eval()
    mx = Classifier(ModelConfig(tokenizer="binned", pooling="max", **SMALL)).eval()
    _same_weights(mean, mx)
    b = batch_for(split, "binned", True, 4)
    assert not torch.allclose(mean(b), mx(b))
    cls = Classifier(ModelConfig(tokenizer="binned", pooling="cls", **SMALL))
    assert "cls" in dict(cls.named_parameters()) and "cls" not in dict(mean.named_parameters())
    assert [m.describe()["pooling"] for m in (mean, mx, cls)] == ["mean", "max", "cls"]


def test_tokenizer_changes_parameter_shapes():
    shapes = {}
    for tok in ("direct", "binned", "vqvae"):
        m = Classifier(ModelConfig(tokenizer=tok, codebook_size=512, **SMALL))
        shapes[tok] = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.startswith("embed")}
        assert m.describe()["tokenizer"] == tok
    assert shapes["direct"] != shapes["binned"] != shapes["vqvae"] != shapes["direct"]


def test_met_changes_computation(split):
    # binned: same weights, MET tokens fed or not -> different outputs, and describe_inputs says so
    torch.manual_seed(0)
    m = Classifier(ModelConfig(tokenizer="binned", pooling="mean", **SMALL)).eval()
    with_met, without = batch_for(split, "binned", True, 4), batch_for(split, "binned", False, 4)
    assert not torch.allclose(m(with_met), m(without))
    assert features.describe_inputs({k: v.numpy() for k, v in with_met.items()})["met"] is True
    assert features.describe_inputs({k: v.numpy() for k, v in without.items()})["met"] is False
    # direct: a MET projection exists only with met
    d1 = Classifier(ModelConfig(tokenizer="direct", met=True, **SMALL))
    d0 = Classifier(ModelConfig(tokenizer="direct", met=False, **SMALL))
    assert "embed.met_proj.weight" in d1.state_dict() and "embed.met_proj.weight" not in d0.state_dict()
    assert d1.describe()["met"] is True and d0.describe()["met"] is False


def test_vect_changes_computation(split):
    d4 = Classifier(ModelConfig(tokenizer="direct", vect=4, **SMALL))
    d5 = Classifier(ModelConfig(tokenizer="direct", vect=5, **SMALL))
    assert d4.embed.proj.weight.shape != d5.embed.proj.weight.shape
    assert (d4.describe()["vect"], d5.describe()["vect"]) == (4, 5)
    b4 = Classifier(ModelConfig(tokenizer="binned", vect=4, vocab_size=vocab(4), **SMALL))
    b5 = Classifier(ModelConfig(tokenizer="binned", vect=5, vocab_size=vocab(5), **SMALL))
    assert b4.embed.emb.weight.shape[0] == 886 and b5.embed.emb.weight.shape[0] == 4386
    # the 5-vector tokens hold the energy bin: same events, different tokens
    t4 = batch_for(split, "binned", True, 4)["tokens"]
    t5 = batch_for(split, "binned", True, 5)["tokens"]
    assert not torch.equal(t4, t5)


@pytest.mark.parametrize("kw, msg", [({"tokenizer": "bpe"}, "direct, binned, binned_ambre, vqvae"), ({"pooling": "sum"}, "cls, mean, max"),
                                     ({"vect": 3}, "vect"), ({"d_model": 10, "n_heads": 3}, "divisible")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_masks_drop_at_the_set_rate_independently(p):
    """``keep_mask`` makes four 16-bit uniforms of each 64-bit draw: each kept with probability
    1-p, and no lane or neighbour tied to another. Planted: a threshold off by one lane's range,
    the top bit of an int64 left at 0 (``random_()`` without range: one lane biased), or one
    draw reused for two lanes, each fails it. Bounds: 5 standard errors over 2^20 draws."""
    from thesis_mlflow.learn.model import keep_mask

    g = torch.Generator().manual_seed(7)
    n = 2**20
    keep = keep_mask((n // 4, 4), p, g).numpy().astype(bool)
    assert keep.dtype == bool and keep.shape == (n // 4, 4)
    tol = lambda q, m: 5 * np.sqrt(q * (1 - q) / m)  # noqa: E731
    for lane in range(4):  # each 16-bit lane of a draw, the top one included
        assert abs(keep[:, lane].mean() - (1 - p)) < tol(1 - p, n // 4), lane
    flat = keep.ravel()
    both = (~flat[:-1] & ~flat[1:]).mean()  # neighbours (lanes of one draw, and across draws) dropped together
    assert abs(both - p * p) < tol(p * p, n)
    again = keep_mask((n // 4, 4), p, torch.Generator().manual_seed(7)).numpy().astype(bool)
    assert (again == keep).all()  # the generator alone decides
    assert keep_mask((3, 5, 7), p, g).shape == (3, 5, 7)  # sizes that are not a multiple of 4
