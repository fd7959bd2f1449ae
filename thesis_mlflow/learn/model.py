"""The classifier: tokenizer -> sinusoidal positions -> NormFormer blocks -> masked pooling -> head.

One readable file in the spirit of nanoGPT; the block follows NormFormer (Shleifer et al.
2021) as ParT's ``Block`` does: pre-norm, an extra norm after attention, per-head scaling of
the attention output, a norm inside the feed-forward and a learned residual weight.

Mask convention (fixed at the data boundary, ``thesis_mlflow.learn.data``): ``valid`` is True
for real tokens and False for padding. It is the only mask passed around here.

Randomness: the model draws from generators its run owns, never from torch's process-wide
ones (``thesis_mlflow.spec.RunStream``): ``init_weights(model, g)`` sets every parameter from the
run's ``init`` generator, and ``set_noise(g)`` hands every dropout site the run's dropout
generator. Training with dropout and no generator set is refused rather than silently drawing
from a generator that other runs in the process share.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from thesis_mlflow.spec import ModelConfig  # noqa: F401 - declared with the cell's settings; imported from here too

N_OBJ = 18
MAX_LEN = 64  # positional table size; sequences are 18-20 tokens, extra room for appended padding


# --------------------------------------------------------------------------- embeddings


def sinusoidal(T: int, d: int) -> torch.Tensor:
    """Fixed sinusoidal positions (Vaswani et al.), (T, d); odd d handled."""
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


class TokenEmbedding(nn.Module):
    """binned / binned_ambre / vqvae: integer tokens -> vectors; token 0 is padding."""

    def __init__(self, n_tokens: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(n_tokens, d, padding_idx=0)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.emb(batch["tokens"])  # (B, T, D)


class DirectEmbedding(nn.Module):
    """direct: a linear projection of the scaled continuous features plus an ID embedding.

    MET (when used) is one extra token: its own projection of (MET, cos, sin of MET-phi)
    plus a learned type vector, so the model can tell it from the objects. It goes first,
    so padding appended after the objects moves no real token's position.
    """

    def __init__(self, n_cont: int, d: int, met: bool):
        super().__init__()
        self.proj = nn.Linear(n_cont, d)
        self.id_emb = nn.Embedding(8, d, padding_idx=0)
        self.met = met
        if met:
            self.met_proj = nn.Linear(3, d)
            self.met_type = nn.Parameter(torch.zeros(d))

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.proj(batch["cont"]) + self.id_emb(batch["ids"])  # (B, 18, D)
        x = x * batch["valid"][..., None]  # padding objects carry exactly zero
        if self.met:
            m = self.met_proj(batch["met"]) + self.met_type  # (B, D)
            x = torch.cat([m[:, None], x], dim=1)  # (B, 1+18, D)
        return x


class CodeEmbedding(nn.Module):
    """vqvae: object code indices (0 = padding, code c -> c+1) plus a direct-style MET token."""

    def __init__(self, codebook_size: int, d: int, met: bool):
        super().__init__()
        self.emb = nn.Embedding(codebook_size + 1, d, padding_idx=0)
        self.met = met
        if met:
            self.met_proj = nn.Linear(3, d)
            self.met_type = nn.Parameter(torch.zeros(d))

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.emb(batch["tokens"])  # (B, 18, D)
        if self.met:
            m = self.met_proj(batch["met"]) + self.met_type
            x = torch.cat([m[:, None], x], dim=1)  # MET first, as in DirectEmbedding
        return x


# --------------------------------------------------------------------------- block


def keep_mask(shape: tuple[int, ...], p: float, generator: torch.Generator, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A dropout keep mask (1 = kept) of ``shape`` with keep probability ``1 - p``, drawn from
    ``generator`` alone: the one draw every dropout site makes, alone (``Dropout``) or for a
    stacked seed (``learn.stacked``), so both give the same masks from the same generator.

    On the CPU, ``bernoulli_`` costs one Mersenne-Twister draw per element (~15% of a small
    model's training step). Here one 64-bit draw gives four 16-bit uniforms, each kept when
    below ``round((1-p) 2^16)``: ``p`` is quantized to 1/65536 (0.1 -> 0.100006), and the step
    trains ~1.2x faster. CUDA's Philox ``bernoulli_`` is cheap and graph-safe: kept there.
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator)
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(2**63), None, generator=generator)  # all 64 bits uniform
    below = round((1 - p) * 65536) - 32768  # P(int16 < below) = round((1-p) 2^16) / 2^16
    return (words.view(torch.int16)[:n] < below).view(shape).to(dtype)


class Dropout(nn.Module):
    """Inverted dropout drawing from the run's own generator (``Classifier.set_noise``).

    ``nn.Dropout`` and SDPA's ``dropout_p`` draw from torch's process-wide generator, which
    every run in a process (cells side by side in threads, captured graphs on several streams)
    would share. Here each run's masks come from its generator alone; the training loop
    reseeds it at each epoch's start, so a resumed run draws the masks it would have drawn.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None  # not a buffer: not saved, set per run
        # the stacked seeds (learn.stacked): masks drawn outside the vmapped step, per seed from its
        # own generator, handed in here in call order; ``recorder`` notes each draw's shape once
        self.supplied = None
        self.recorder = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.supplied is not None:
            return x * next(self.supplied) / (1 - self.p)
        if self.recorder is not None:
            self.recorder(x)
            return x
        if self.generator is None:
            raise RuntimeError("training with dropout needs the run's own generator: call model.set_noise(generator) first")
        return x * keep_mask(x.shape, self.p, self.generator, x.dtype, x.device) / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention with NormFormer head scaling (before the output projection)."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.hd = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.head_scale = nn.Parameter(torch.ones(n_heads))
        self.attn_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        if self.training and self.attn_drop.p > 0:  # SDPA's own dropout would use the shared generator
            att = (q @ k.transpose(-2, -1)) * self.hd**-0.5  # (B, H, T, T)
            att = att.masked_fill(~attn_mask, float("-inf")).softmax(-1)
            y = self.attn_drop(att) @ v  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        # Head scaling folded into the output projection: W (s * y) == (W diag(s)) y, one small
        # weight product instead of a pass over (B, H, T, hd).
        w = self.out.weight * self.head_scale.repeat_interleave(self.hd)[None, :]
        return F.linear(y.transpose(1, 2).reshape(B, T, D), w, self.out.bias)


class Block(nn.Module):
    """NormFormer block: x + norm(attn(norm(x))); then x*w + fc2(norm(gelu(fc1(norm(x)))))."""

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.pre_attn_norm = nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, dropout)
        self.post_attn_norm = nn.LayerNorm(d)  # NormFormer: tames attention-output growth
        self.pre_fc_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d_ff)
        self.fc_norm = nn.LayerNorm(d_ff)  # NormFormer: norm after the activation
        self.fc2 = nn.Linear(d_ff, d)
        self.resid_weight = nn.Parameter(torch.ones(d))  # ParT's w_resid
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.post_attn_norm(self.attn(self.pre_attn_norm(x), attn_mask)))
        h = self.fc_norm(F.gelu(self.fc1(self.pre_fc_norm(x))))
        return x * self.resid_weight + self.drop(self.fc2(self.drop(h)))


# --------------------------------------------------------------------------- classifier


class Classifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.tokenizer == "direct":
            self.embed = DirectEmbedding(cfg.n_cont, d, cfg.met)
        elif cfg.tokenizer == "vqvae":
            self.embed = CodeEmbedding(cfg.codebook_size, d, cfg.met)
        else:
            self.embed = TokenEmbedding(cfg.vocab_size, d)
        self.register_buffer("pos", sinusoidal(MAX_LEN, d), persistent=False)
        if cfg.pooling == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.d_ff, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_classes)

    def sequence_mask(self, batch: dict) -> torch.Tensor:
        """valid for the whole token sequence (objects, then MET tokens when used)."""
        valid = batch["valid"]  # (B, 18) or (B, 20) for binned tokens
        if self.cfg.tokenizer in ("direct", "vqvae") and self.cfg.met:
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        return valid

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.embed(batch)  # (B, T, D)
        valid = self.sequence_mask(batch)  # (B, T)
        B, T, _ = x.shape
        x = x + self.pos[:T]
        if self.cfg.pooling == "cls":
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # (B, 1+T, D)
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        # An event with no token at all would make softmax over nothing NaN: let such rows
        # attend to position 0 (their pooled output is masked to zero below anyway).
        keys = valid.clone()
        keys[:, 0] |= ~valid.any(1)
        attn_mask = keys[:, None, None, :]  # (B, 1, 1, T): True = may attend
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = self.norm(x)
        return self.head(self.pool(x, valid))  # (B, n_classes)

    def pool(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked pooling: padded positions never enter the mean or win the max."""
        if self.cfg.pooling == "cls":
            return x[:, 0]
        m = valid[..., None]  # (B, T, 1)
        if self.cfg.pooling == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1)
        neg = torch.finfo(x.dtype).min
        out = x.masked_fill(~m, neg).amax(1)
        return torch.where(valid.any(1, keepdim=True), out, torch.zeros_like(out))

    # ------------------------------------------------------------------ randomness
    def set_noise(self, generator: torch.Generator | None) -> None:
        """Every dropout site draws from ``generator`` (the run's own; None: none set)."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.generator = generator

    # ------------------------------------------------------------------ introspection
    def n_params(self) -> tuple[int, int]:
        """(parameters outside embedding tables, parameters in embedding tables)."""
        emb = sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
        total = sum(p.numel() for p in self.parameters())
        return total - emb, emb

    def describe(self) -> dict:
        """The factors as the built model has them, read from its modules, not from the request.

        This is what a run logs, so a configuration key the model ignores cannot be logged
        as if it had been used.
        """
        e = self.embed
        if isinstance(e, DirectEmbedding):
            out = {"tokenizer": "direct", "vect": e.proj.in_features + 1, "met": e.met}
        elif isinstance(e, CodeEmbedding):
            out = {"tokenizer": "vqvae", "met": e.met}
        else:  # which token file (and so vect, met) is fed is read from the data, not here
            out = {"tokenizer": self.cfg.tokenizer, "vocab_size": e.emb.num_embeddings}
        pooling = "cls" if hasattr(self, "cls") else self.cfg.pooling
        n, n_emb = self.n_params()
        blk = self.blocks[0]
        return {
            **out, "pooling": pooling,
            "d_model": blk.fc1.in_features, "n_layers": len(self.blocks), "n_heads": blk.attn.n_heads,
            "d_ff": blk.fc1.out_features, "n_params": n, "n_params_embedding": n_emb,
        }

    def config_dict(self) -> dict:
        return asdict(self.cfg)


# --------------------------------------------------------------------------- initial weights

# Parameters that are not of a standard layer, and how they start (as the modules set them).
_ONES = ("head_scale", "resid_weight")
_ZEROS = ("met_type",)


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every parameter of ``model`` drawn from ``generator`` (the run's own), with PyTorch's
    default distributions: Linear weights Kaiming-uniform(a=sqrt(5)) and biases U(+-1/sqrt(fan_in)),
    embeddings N(0, 1) with the padding row zero, LayerNorm ones / zeros, the CLS token
    N(0, 0.02) truncated. A parameter no rule covers is an error, so a new layer cannot
    silently keep weights from the process-wide generator. Returns ``model``."""
    done: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1 / math.sqrt(m.in_features) if m.in_features > 0 else 0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, generator=generator)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
        else:
            for name, p in m.named_parameters(recurse=False):
                if name in _ONES:
                    p.fill_(1.0)
                elif name in _ZEROS:
                    p.zero_()
                elif name == "cls":
                    nn.init.trunc_normal_(p, std=0.02, generator=generator)
                else:
                    continue
                done.add(id(p))
            continue
        done.update(id(p) for p in m.parameters(recurse=False))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"init_weights has no rule for {missed}: say how they start")
    return model
