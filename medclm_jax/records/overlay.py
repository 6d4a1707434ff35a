"""Drawing a lesion box on an image: the Easy stage's input and `predict`'s output picture.

The paper's Easy view shows the lesion with its box drawn on the image; the Medium and Hard views show the clean
image. The outline's thickness is a fraction of the image's long side, so it stays visible after the input
pipeline resizes the image to the model's resolution (1% of the long side is >= 2 pixels at 224 px).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BOX_COLOR = (255, 0, 0)  # red: absent from windowed grey-scale radiographs and CT, so the box is unambiguous
THICKNESS_FRACTION = 0.01


def box_to_pixels(box_norm: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Normalized xyxy -> integer pixel xyxy (inclusive) inside a `width` x `height` image."""
    if len(box_norm) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box_norm)}: {list(box_norm)!r}")
    x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in box_norm)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box {list(box_norm)!r} is empty: expected x1 < x2 and y1 < y2")
    px1, py1 = int(np.floor(x1 * width)), int(np.floor(y1 * height))
    px2, py2 = int(np.ceil(x2 * width)) - 1, int(np.ceil(y2 * height)) - 1
    return px1, py1, max(px1, min(width - 1, px2)), max(py1, min(height - 1, py2))


def draw_box(pixels: np.ndarray, box_norm: Sequence[float], color: Sequence[int] = BOX_COLOR,
             thickness: int | None = None) -> np.ndarray:
    """Returns an RGB copy of `pixels` with the box outlined (the outline lies inside the box).

    Args:
      pixels: uint8[H, W] or uint8[H, W, 3] (or [H, W, 1]); not modified.
      box_norm: normalized `[x1, y1, x2, y2]` in [0, 1] (values outside are clipped).
      color: RGB of the outline.
      thickness: outline width in pixels; default `THICKNESS_FRACTION` of the long side, at least 1.

    Returns:
      uint8[H, W, 3].
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8[H, W] or uint8[H, W, C], got {pixels.dtype}{list(pixels.shape)}")
    rgb = pixels if pixels.ndim == 3 else pixels[..., None]
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif rgb.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {rgb.shape[-1]}")
    out = np.array(rgb, copy=True)
    height, width = out.shape[:2]
    x1, y1, x2, y2 = box_to_pixels(box_norm, width, height)
    t = thickness if thickness is not None else max(1, round(THICKNESS_FRACTION * max(height, width)))
    c = np.asarray(color, np.uint8)
    out[y1:min(y1 + t, y2 + 1), x1:x2 + 1] = c
    out[max(y1, y2 + 1 - t):y2 + 1, x1:x2 + 1] = c
    out[y1:y2 + 1, x1:min(x1 + t, x2 + 1)] = c
    out[y1:y2 + 1, max(x1, x2 + 1 - t):x2 + 1] = c
    return out
