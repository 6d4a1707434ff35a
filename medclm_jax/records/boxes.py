"""Box text: the one canonical form our CoT cites, and PaliGemma location tokens.

Pure Python (no jax import) so data_gen, the input pipeline, the tokenizer and the metrics share it: this module
is the one definition of both formats.

Canonical form: normalized `[x1, y1, x2, y2]` with two decimals, e.g. `[0.25, 0.33, 0.58, 0.67]`; values are
clipped to [0, 1]. PaliGemma form: four `<locYYYY>` tokens in y1 x1 y2 x2 order over 1024 bins
(`bin = min(1023, floor(v * 1024))`; decoded as `bin / 1024`).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

LOC_BINS = 1024
# Four location tokens in a row (any whitespace between them), as a model writes a box.
LOC_BOX_RE = re.compile(r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>")
LOC_TOKEN_RE = re.compile(r"<loc\d{4}>")
# A canonical box: four decimals in [0, 1] inside square brackets, comma-separated.
CANONICAL_BOX_RE = re.compile(
    r"\[\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*\]"
)


def clip01(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def format_box(box_norm: Sequence[float]) -> str:
    """`[x1, y1, x2, y2]` normalized -> `'[0.25, 0.33, 0.58, 0.67]'` (clipped to [0, 1], two decimals)."""
    if len(box_norm) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box_norm)}: {box_norm!r}")
    return "[" + ", ".join(f"{clip01(v):.2f}" for v in box_norm) + "]"


def to_loc_bin(v: float) -> int:
    return min(LOC_BINS - 1, int(math.floor(clip01(v) * LOC_BINS)))


def loc_token(index: int) -> str:
    """The location token for bin `index` in [0, 1024): `<loc0042>`."""
    if not 0 <= index < LOC_BINS:
        raise ValueError(f"location bin {index} is outside [0, {LOC_BINS})")
    return f"<loc{index:04d}>"


def to_loc_tokens(box_norm: Sequence[float]) -> str:
    """Normalized xyxy -> `'<locY1><locX1><locY2><locX2>'` (PaliGemma's order and binning)."""
    x1, y1, x2, y2 = box_norm
    return "".join(loc_token(to_loc_bin(v)) for v in (y1, x1, y2, x2))


def from_loc_bins(bins: Sequence[int]) -> list[float]:
    """PaliGemma's `(y1, x1, y2, x2)` bins -> normalized `[x1, y1, x2, y2]` (`bin / 1024`, the bin's low edge)."""
    if len(bins) != 4:
        raise ValueError(f"a box has 4 location tokens, got {len(bins)}: {list(bins)!r}")
    if max(bins) >= LOC_BINS or min(bins) < 0:
        raise ValueError(f"location bin outside [0, {LOC_BINS}): {list(bins)}")
    y1, x1, y2, x2 = (b / LOC_BINS for b in bins)
    return [x1, y1, x2, y2]


def canonical_to_loc_tokens(text: str) -> str:
    """Re-render every canonical box in `text` as PaliGemma location tokens (the input pipeline's option)."""
    return CANONICAL_BOX_RE.sub(lambda m: to_loc_tokens([float(g) for g in m.groups()]), text)
