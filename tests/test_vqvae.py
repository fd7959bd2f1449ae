"""VQ-VAE: quantiser invariants over an option grid, EMA, dead codes, padding, the entry point."""

from __future__ import annotations

import itertools

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from steps.cli import main
from thesis_mlflow.learn import features
from thesis_mlflow.learn.vqvae import ObjectVQVAE, VectorQuantizer, VQConfig, VQTrainConfig, kmeans, train_vqvae, usage_stats

OPTION_GRID = list(itertools.product([True, False], [True, False], [True, False], [0.0, 0.5]))


@pytest.mark.parametrize("ema, kmeans_init, cosine, dead", OPTION_GRID)
def test_quantiser_invariants_over_options(ema, kmeans_init, cosine, dead):
    torch.manual_seed(0)
    vq = VectorQuantizer(VQConfig(codebook_size=16, latent_dim=4, ema=ema, kmeans_init=kmeans_init, cosine=cosine, dead_threshold=dead))
    z = torch.randn(256, 4)
    vq.train()
    zq, idx, loss = vq(z)
    assert zq.shape == z.shape and idx.shape == (256,) and idx.min() >= 0 and idx.max() < 16
    assert torch.isfinite(loss) and loss >= 0
    vq.eval()
    zq, idx, _ = vq(z)
    # in eval mode the quantised vectors are exactly the codebook rows of the returned indices
    torch.testing.assert_close(zq, vq.codes()[idx])
    # and each index is the nearest code
    ref = vq.codes()
    zz = torch.nn.functional.normalize(z, dim=-1) if cosine else z
    d = ((zz[:, None] - ref[None]) ** 2).sum(-1) if not cosine else -(zz @ ref.T)
    assert torch.equal(idx, d.argmin(-1))


def test_straight_through_gradient_reaches_encoder():
    vq = VectorQuantizer(VQConfig(codebook_size=8, latent_dim=3))
    z = torch.randn(32, 3, requires_grad=True)
    zq, _, loss = vq(z)
    (zq.sum() + loss).backward()
    assert z.grad is not None and torch.all(z.grad != 0)


def test_ema_moves_used_codes_toward_assignments():
    vq = VectorQuantizer(VQConfig(codebook_size=4, latent_dim=2, kmeans_init=False, decay=0.5, dead_threshold=0.0))
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
        vq.ema_sum.copy_(vq.codebook)
    target = torch.tensor([1.0, 1.0])
    z = target + 0.01 * torch.randn(64, 2)
    before = vq.codebook[0].clone()
    vq.train()
    _, idx, _ = vq(z)
    assert torch.all(idx == 0)
    after = vq.codebook[0]
    assert torch.norm(after - target) < torch.norm(before - target)
    torch.testing.assert_close(vq.codebook[1], torch.tensor([10.0, 10.0]), rtol=0.05, atol=0.5)  # unused codes barely move


def test_dead_code_is_restarted():
    vq = VectorQuantizer(VQConfig(codebook_size=4, latent_dim=2, kmeans_init=False, decay=0.5, dead_threshold=0.9))
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [100.0, 100.0]]))
        vq.ema_sum.copy_(vq.codebook)
    z = torch.rand(64, 2) * 2
    vq.train()
    vq(z)  # code 3 gets nothing: its EMA count drops to 0.5 < 0.9 -> restarted onto an encoding
    assert torch.norm(vq.codebook[3]) < 5
    assert any(torch.allclose(vq.codebook[3], zi) for zi in z)


def test_kmeans_init_separates_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2) * 0.1 + c for c in (torch.tensor([5.0, 0]), torch.tensor([-5.0, 0]))])
    c = kmeans(x, 2, 10, False, g)
    assert sorted(c[:, 0].round().tolist()) == [-5.0, 5.0]


def _tiny_objects(split, vect=4):
    sc = features.Scaler.fit(split)
    x = features.direct_inputs(split, vect, False, sc)
    return x


def test_padding_gets_no_code_and_same_stream_same_codes(tiny_splits):
    """The pre-training's draws are its stream's alone: the same stream gives the same codes
    whatever torch's global generator holds; another seed gives other codes."""
    from thesis_mlflow.spec import RunStream

    tr = tiny_splits["train"]
    x = _tiny_objects(tr)
    codes = []
    for global_seed, seed in ((0, 0), (123, 0), (0, 1)):
        torch.manual_seed(global_seed)  # must not matter
        stream = RunStream("vqvae:test", seed)
        m = ObjectVQVAE(VQConfig(codebook_size=32, hidden=16), stream)
        v = x["valid"]
        train_vqvae(m, x["cont"][v], x["ids"][v], VQTrainConfig(epochs=1, batch_size=1024), ["pt", "eta", "phi"], stream=stream)
        codes.append(m.encode(x["cont"], x["ids"], v))
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])
    assert np.all(codes[0][~x["valid"]] == -1) and np.all(codes[0][x["valid"]] >= 0)
    stats = usage_stats(codes[0], 32)
    assert 0 < stats["codebook_usage"] <= 1 and 1 <= stats["perplexity"] <= 32


@pytest.mark.parametrize("kw, msg", [({"codebook_size": 1}, "codebook_size"), ({"decay": 1.0}, "decay"), ({"vect": 6}, "vect"),
                                     ({"commitment": -1}, "commitment"), ({"dead_threshold": -1}, "dead_threshold")])
def test_options_checked_up_front(kw, msg):
    with pytest.raises(ValueError, match=msg):
        VQConfig(**kw)


VQ_TINY = ["--codebook-size", "32", "--epochs", "2", "--batch-size", "512", "--max-events", "800"]


def test_vqvae_entry_point_logs_metrics_and_model(mlflow_env, tiny_raw):
    res = CliRunner().invoke(main, ["vqvae", "--input", str(tiny_raw), "--vect", "5", *VQ_TINY])
    assert res.exit_code == 0, res.output
    assert "codebook usage" in res.output and "perplexity" in res.output
    (r,) = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert r.info.status == "FINISHED" and r.data.tags["step"] == "vqvae"
    c = mlflow.MlflowClient()
    for k in ("recon_loss", "recon_loss_e", "recon_loss_pt", "recon_loss_eta", "recon_loss_phi", "recon_loss_id", "commit_loss",
              "perplexity", "codebook_usage", "dead_codes"):
        assert [m.step for m in c.get_metric_history(r.info.run_id, k)] == [1, 2], k
    payload = torch.load(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="vqvae/model.pt"), weights_only=True)
    assert payload["config"]["vect"] == 5 and payload["config"]["codebook_size"] == 32 and "log_pt" in payload["scaler"]["mean"]


def test_train_with_vqvae_tokenizer(mlflow_env, tiny_raw):
    from .test_train import TINY

    args = ["train", "--tokenizer", "vqvae", "--pooling", "mean", "--epochs", "1", "--data", str(tiny_raw), "--codebook-size", "32",
            "--vqvae-epochs", "1", "--vqvae-max-events", "800", *TINY]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    runs = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    vq = [r for r in runs if r.data.tags["step"] == "vqvae"]
    tr = [r for r in runs if r.data.tags["step"] == "train"]
    assert len(vq) == 1 and len(tr) == 1
    p = tr[0].data.params
    assert p["tokenizer"] == "vqvae" and p["vqvae_run_id"] == vq[0].info.run_id and p["codebook_size"] == "32" and p["vect"] == "4"
    assert tr[0].info.status == "FINISHED" and "test_auc" in tr[0].data.metrics
    # a second cell reuses the same vqvae run
    assert CliRunner().invoke(main, [*args, "--pooling", "max"]).exit_code == 0
    assert len([r for r in mlflow.search_runs(experiment_names=["test-exp"], output_format="list") if r.data.tags["step"] == "vqvae"]) == 1
    # a 5-vector cell pointed at this 4-vector codebook: refused by name, before a run is made
    res = CliRunner().invoke(main, [*args, "--vect", "5", "--vqvae-run-id", vq[0].info.run_id])
    assert res.exit_code == 1 and f"vqvae run {vq[0].info.run_id} was trained with vect=4, but vect=5 was requested" in res.output
    assert len(mlflow.search_runs(experiment_names=["test-exp"], output_format="list")) == 3
