"""The plain-PyTorch reference model both throughput benchmarks measure against."""

from __future__ import annotations

from torch import nn


class Reference(nn.Module):
    """nn.TransformerEncoder of the thesis size (pre-norm, GELU, dropout 0.1), mean pooling."""

    def __init__(self, vocab, d=72, layers=8, heads=8, d_ff=144):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.1, batch_first=True, norm_first=True, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)

    def forward(self, tokens):
        pad = tokens == 0
        x = self.enc(self.emb(tokens), src_key_padding_mask=pad)
        m = (~pad)[..., None]
        return self.head((x * m).sum(1) / m.sum(1).clamp(min=1))
