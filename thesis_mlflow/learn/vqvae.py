"""Per-object VQ-VAE: (scaled features, ID) -> latent -> nearest code -> reconstruction.

The quantiser uses the usual tricks against codebook collapse (as in OmniJet-alpha and
lucidrains' vector-quantize-pytorch): k-means initialisation on the first batch, EMA
codebook updates, restarts of dead codes from current encoder outputs, optional cosine
similarity, and a commitment loss. Options are checked up front in :class:`VQConfig`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thesis_mlflow.errors import BadSetting
from thesis_mlflow.learn.model import init_weights
from thesis_mlflow.spec import CODEBOOK_SIZE, VECTS, VQVAE_EPOCHS, RunStream

log = logging.getLogger(__name__)

N_IDS = 7


@dataclass
class VQConfig:
    vect: int = 4
    codebook_size: int = CODEBOOK_SIZE
    latent_dim: int = 8  # low-dimensional: the object has only 3-4 features and an ID
    hidden: int = 128
    commitment: float = 0.25  # beta of the VQ-VAE paper
    ema: bool = True  # EMA codebook updates (no codebook gradient), more stable than the codebook loss
    decay: float = 0.95  # EMA decay; lower than the common 0.99 because epochs are few
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_threshold: float = 0.5  # a code whose EMA usage per batch drops below this is restarted; 0 disables
    cosine: bool = False  # compare directions on the unit sphere instead of Euclidean distance

    def __post_init__(self):
        if self.vect not in VECTS:
            raise BadSetting(f"vect must be 4 or 5; got {self.vect!r}")
        if not 2 <= self.codebook_size <= 65536:
            raise BadSetting(f"codebook_size must be in [2, 65536]; got {self.codebook_size}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise BadSetting("latent_dim and hidden must be >= 1")
        if self.commitment < 0:
            raise BadSetting(f"commitment must be >= 0; got {self.commitment}")
        if not 0 < self.decay < 1:
            raise BadSetting(f"decay must be in (0, 1); got {self.decay}")
        if self.kmeans_iters < 1:
            raise BadSetting(f"kmeans_iters must be >= 1; got {self.kmeans_iters}")
        if self.dead_threshold < 0:
            raise BadSetting(f"dead_threshold must be >= 0; got {self.dead_threshold}")

    @property
    def n_cont(self) -> int:
        return self.vect - 1


def kmeans(x: torch.Tensor, k: int, iters: int, cosine: bool, generator: torch.Generator) -> torch.Tensor:
    """Plain Lloyd iterations from k random samples (with replacement when x has fewer rows)."""
    idx = torch.randint(len(x), (k,), generator=generator) if len(x) < k else torch.randperm(len(x), generator=generator)[:k]
    c = x[idx].clone()
    for _ in range(iters):
        a = _nearest(x, c, cosine)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        n = torch.bincount(a, minlength=k).to(x.dtype)
        upd = n > 0
        c[upd] = sums[upd] / n[upd, None]
        if cosine:
            c = F.normalize(c, dim=-1)
    return c


def _nearest(z: torch.Tensor, c: torch.Tensor, cosine: bool) -> torch.Tensor:
    if cosine:
        return (F.normalize(z, dim=-1) @ F.normalize(c, dim=-1).T).argmax(-1)
    d = (z * z).sum(-1, keepdim=True) - 2 * z @ c.T + (c * c).sum(-1)[None]  # (N, K)
    return d.argmin(-1)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig, stream: RunStream | None = None):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.codebook_size, cfg.latent_dim
        stream = stream or RunStream("vqvae:unnamed", 0)  # a loaded model's draws are overwritten by its state
        init = torch.randn(K, D, generator=stream.torch_generator("init", 1))
        if cfg.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(K))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initted", torch.tensor(not cfg.kmeans_init))
        self.gen = stream.torch_generator("kmeans")  # k-means start and dead-code restarts

    def codes(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=-1) if self.cfg.cosine else self.codebook

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (N, D) -> (quantised z with straight-through gradient, indices (N,), loss)."""
        cfg = self.cfg
        if cfg.cosine:
            z = F.normalize(z, dim=-1)
        if self.training and not bool(self.initted):
            with torch.no_grad():
                c = kmeans(z.detach(), cfg.codebook_size, cfg.kmeans_iters, cfg.cosine, self.gen)
                self.codebook.data.copy_(c)
                if cfg.ema:
                    self.ema_sum.copy_(c)
                    self.ema_count.fill_(1.0)
                self.initted.fill_(True)
        idx = _nearest(z.detach(), self.codes().detach() if cfg.ema else self.codes(), cfg.cosine)
        zq = self.codes()[idx]  # (N, D)
        loss = cfg.commitment * F.mse_loss(z, zq.detach())
        if not cfg.ema:
            loss = loss + F.mse_loss(zq, z.detach())  # codebook loss moves codes toward encodings
        if self.training and cfg.ema:
            self._ema_update(z.detach(), idx)
            zq = self.codes()[idx]
        return z + (zq - z).detach(), idx, loss

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        K = self.cfg.codebook_size
        d = self.cfg.decay
        counts = torch.bincount(idx, minlength=K).to(z.dtype)
        sums = torch.zeros(K, z.shape[1], dtype=z.dtype).index_add_(0, idx, z)
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing: no division by 0
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.restart_dead(z)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor) -> int:
        """Move codes whose EMA usage fell below the threshold onto random current encodings."""
        if self.cfg.dead_threshold <= 0 or not self.cfg.ema:
            return 0
        dead = self.ema_count < self.cfg.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(len(z), (n_dead,), generator=self.gen)
            self.codebook[dead] = z[pick]
            self.ema_sum[dead] = z[pick]
            self.ema_count[dead] = 1.0
        return n_dead


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_out))


class ObjectVQVAE(nn.Module):
    """Encoder over (scaled features, one-hot ID) -> codebook -> decoder of features and ID."""

    def __init__(self, cfg: VQConfig, stream: RunStream | None = None):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.n_cont + N_IDS
        self.encoder = _mlp(n_in, cfg.hidden, cfg.latent_dim)
        self.vq = VectorQuantizer(cfg, stream)
        self.decoder = _mlp(cfg.latent_dim, cfg.hidden, cfg.n_cont + N_IDS)
        if stream is not None:  # the MLPs' weights from the run's own stream, not torch's global generator
            g = stream.torch_generator("init", 0)
            for mlp in (self.encoder, self.decoder):
                init_weights(mlp, g)

    def encode_latent(self, cont: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cont, F.one_hot(ids - 1, N_IDS).to(cont.dtype)], dim=-1)  # (N, n_cont + 7)
        return self.encoder(x)

    def forward(self, cont: torch.Tensor, ids: torch.Tensor) -> dict:
        """cont (N, n_cont) scaled features, ids (N,) in 1..7 -> losses and codes."""
        zq, idx, commit = self.vq(self.encode_latent(cont, ids))
        out = self.decoder(zq)
        rec_feat = (out[:, : self.cfg.n_cont] - cont) ** 2  # (N, n_cont)
        rec_id = F.cross_entropy(out[:, self.cfg.n_cont :], ids - 1)
        recon = rec_feat.mean() + rec_id
        return {"loss": recon + commit, "recon": recon, "recon_features": rec_feat.mean(0), "recon_id": rec_id,
                "commit": commit, "codes": idx}

    @torch.no_grad()
    def codes_of(self, cont: torch.Tensor, ids: torch.Tensor, batch: int = 65536) -> np.ndarray:
        """Flat objects (M, n_cont), (M,) -> code indices (M,), in eval mode, in chunks."""
        self.eval()
        out = [self.vq(self.encode_latent(cont[s : s + batch], ids[s : s + batch]))[1] for s in range(0, len(cont), batch)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.int64)

    def encode(self, cont: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Events (N, 18, n_cont), (N, 18), (N, 18) -> codes (N, 18); padding objects get -1."""
        codes = np.full(valid.shape, -1, np.int64)
        codes[valid] = self.codes_of(torch.from_numpy(np.ascontiguousarray(cont[valid], np.float32)),
                                     torch.from_numpy(np.ascontiguousarray(ids[valid], np.int64)))
        return codes


def usage_stats(codes: np.ndarray, K: int) -> dict[str, float]:
    """Fraction of codes used, perplexity exp(H) of the code distribution, dead codes."""
    counts = np.bincount(codes[codes >= 0], minlength=K).astype(np.float64)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    return {"codebook_usage": float((counts > 0).mean()), "perplexity": float(math.exp(-(nz * np.log(nz)).sum())),
            "dead_codes": float((counts == 0).sum())}


@dataclass
class VQTrainConfig:
    epochs: int = VQVAE_EPOCHS
    batch_size: int = 4096  # objects per step
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise BadSetting("vqvae training needs epochs >= 1, batch_size >= 2 and lr > 0")


def train_vqvae(model: ObjectVQVAE, cont: np.ndarray, ids: np.ndarray, tcfg: VQTrainConfig, feature_names: list[str],
                on_epoch=None, stream: RunStream | None = None) -> list[dict]:
    """Train on flat valid objects: cont (M, n_cont), ids (M,). Returns per-epoch metrics.

    ``stream``: the run's random stream (its object order per epoch); by default the one of
    ``tcfg.seed`` under an ad-hoc key."""
    stream = stream or RunStream("vqvae:adhoc", tcfg.seed)
    c_all = torch.from_numpy(np.ascontiguousarray(cont, np.float32))
    i_all = torch.from_numpy(np.ascontiguousarray(ids, np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    history = []
    K = model.cfg.codebook_size
    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        perm = stream.epoch_order(len(c_all), epoch)
        tot = {"recon": 0.0, "commit": 0.0, "recon_id": 0.0}
        feat = torch.zeros(model.cfg.n_cont)
        n = 0
        for s in range(0, len(perm), tcfg.batch_size):
            b = perm[s : s + tcfg.batch_size]
            if len(b) < 2:
                continue
            out = model(c_all[b], i_all[b])
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            for k in tot:
                tot[k] += out[k].item() * len(b)
            feat += out["recon_features"].detach() * len(b)
            n += len(b)
        codes = model.codes_of(c_all, i_all)
        m = {"recon_loss": tot["recon"] / n, "commit_loss": tot["commit"] / n, "recon_loss_id": tot["recon_id"] / n,
             **{f"recon_loss_{f}": float(v / n) for f, v in zip(feature_names, feat, strict=True)}, **usage_stats(codes, K)}
        history.append(m)
        log.info("vqvae epoch %d/%d recon %.4f commit %.4f usage %.3f perplexity %.1f", epoch, tcfg.epochs, m["recon_loss"],
                 m["commit_loss"], m["codebook_usage"], m["perplexity"])
        if on_epoch:
            on_epoch(epoch, m)
    return history


def save_payload(model: ObjectVQVAE, scaler: dict, seed: int) -> dict:
    return {"state_dict": model.state_dict(), "config": asdict(model.cfg), "scaler": scaler, "seed": seed}


def load_payload(payload: dict) -> ObjectVQVAE:
    model = ObjectVQVAE(VQConfig(**payload["config"]))  # every weight and buffer comes from the state dict
    model.load_state_dict(payload["state_dict"])
    return model.eval()
