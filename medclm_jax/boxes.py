"""Box text: the one canonical form our CoT cites, and PaliGemma location tokens.

Pure Python (no jax import) so data_gen, the input pipeline and the metrics share it.

Canonical form: normalized `[x1, y1, x2, y2]` with two decimals, e.g. `[0.25, 0.33, 0.58, 0.67]`; values are
clipped to [0, 1]. PaliGemma form: four `<locYYYY>` tokens in y1 x1 y2 x2 order over 1024 bins
(`bin = min(1023, floor(v * 1024))`; decoded as `bin / 1024`).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

LOC_BINS = 1024
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


def to_loc_tokens(box_norm: Sequence[float]) -> str:
    """Normalized xyxy -> `'<locY1><locX1><locY2><locX2>'` (PaliGemma's order and binning)."""
    x1, y1, x2, y2 = box_norm
    return "".join(f"<loc{to_loc_bin(v):04d}>" for v in (y1, x1, y2, x2))


def canonical_to_loc_tokens(text: str) -> str:
    """Re-render every canonical box in `text` as PaliGemma location tokens (the input pipeline's option)."""
    return CANONICAL_BOX_RE.sub(lambda m: to_loc_tokens([float(g) for g in m.groups()]), text)
