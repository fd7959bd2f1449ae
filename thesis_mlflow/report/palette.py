"""One colour per tokenizer, from one place.

Every figure of the page (plotly) and every thesis PDF (matplotlib) draws a tokenizer in its
colour here, as puma gives each tagger one colour across every ROC plot. Whatever else a figure
colours (background processes, poolings, upstream runs) comes from palettes that never reuse a
tokenizer's colour. The colours are Petroff's colour-blind-safe ten (arXiv:2107.02270).
"""

from __future__ import annotations

TOKENIZER_COLORS = {"direct": "#3f90da", "binned": "#ffa90e", "binned_ambre": "#bd1f01", "vqvae": "#94a4a2"}
NEUTRAL = "#333333"  # a tokenizer this map does not know, and marks that stand for no tokenizer (an effect's estimate)
PROCESS_COLORS = {"4t": "#000000", "ttH": "#832db6", "ttW": "#a96b59", "ttWW": "#b9ac70", "ttZ": "#92dadd"}
POOLING_COLORS = {"cls": "#717581", "mean": "#b9ac70", "max": "#832db6"}
OTHER_COLORS = ("#717581", "#832db6", "#a96b59", "#b9ac70", "#92dadd", "#e76300")  # series that are none of the above, in turn


def tokenizer_color(tokenizer: str) -> str:
    """The tokenizer's colour; an unknown one is drawn neutral, never in another tokenizer's colour."""
    return TOKENIZER_COLORS.get(tokenizer, NEUTRAL)


def other_color(i: int) -> str:
    return OTHER_COLORS[i % len(OTHER_COLORS)]
