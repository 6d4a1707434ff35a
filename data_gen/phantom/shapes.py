"""Raster primitives for the phantom: ellipses, lobulated blobs, smooth noise, boxes. Pure numpy.

Coordinates are normalized: `yy, xx` in [0, 1] (pixel centres), so anatomy is drawn independently of the size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized pixel-centre coordinates `(yy, xx)`, float32 `[H, W]` each, in (0, 1)."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height
    x = (np.arange(width, dtype=np.float32) + 0.5) / width
    return np.meshgrid(y, x, indexing="ij")


def _window(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, extent: float) -> tuple[slice, slice]:
    """Rows/cols of the pixels within `extent` (normalized) of (cy, cx): shapes are evaluated only there."""
    h, w = yy.shape
    rows = slice(max(int((cy - extent) * h) - 1, 0), min(int((cy + extent) * h) + 2, h))
    cols = slice(max(int((cx - extent) * w) - 1, 0), min(int((cx + extent) * w) + 2, w))
    return rows, cols


def ellipse_radius(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
                   angle: float = 0.0, power: float = 2.0, reach: float = 1.5) -> np.ndarray:
    """Normalized (super)elliptic radius: < 1 inside, 1 on the outline. `angle` in radians (counter-clockwise
    on the displayed image); `power` > 2 gives a squarer outline (a thorax), 2 a plain ellipse.

    Evaluated within `reach` times the outline's extent; farther pixels get radius 2 (only "outside" matters
    there).
    """
    out = np.full(yy.shape, 2.0, np.float32)
    rows, cols = _window(yy, xx, cy, cx, reach * max(rx, ry))
    dy, dx = yy[rows, cols] - np.float32(cy), xx[rows, cols] - np.float32(cx)
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dx, dy = c * dx - s * dy, s * dx + c * dy
    if power == 2.0:
        r = np.sqrt((dx / np.float32(rx)) ** 2 + (dy / np.float32(ry)) ** 2)
    else:
        p = np.float32(power)
        r = (np.abs(dx / np.float32(rx)) ** p + np.abs(dy / np.float32(ry)) ** p) ** (1.0 / p)
    out[rows, cols] = np.minimum(r, 2.0)
    return out


def ellipse(yy, xx, cy, cx, ry, rx, angle=0.0, power=2.0) -> np.ndarray:
    """Bool mask of a (super)ellipse."""
    return ellipse_radius(yy, xx, cy, cx, ry, rx, angle, power, reach=1.0) <= 1.0


def blob_radius(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                harmonics: Sequence[tuple[float, int, float]] = ()) -> np.ndarray:
    """Radius relative to a lobulated outline `r * (1 + sum a sin(k theta + phi))`: < 1 inside.

    Irregular masses are blobs with a few harmonics; round nodules and cysts have none. Evaluated near the blob
    only (farther pixels get 2).
    """
    out = np.full(yy.shape, 2.0, np.float32)
    rows, cols = _window(yy, xx, cy, cx, 1.5 * r * (1.0 + sum(abs(a) for a, _, _ in harmonics)))
    dy, dx = yy[rows, cols] - np.float32(cy), xx[rows, cols] - np.float32(cx)
    dist = np.sqrt(dy * dy + dx * dx)
    outline = np.float32(r)
    if harmonics:
        theta = np.arctan2(dy, dx)
        outline = r * (1.0 + sum(a * np.sin(k * theta + phi) for a, k, phi in harmonics))
    out[rows, cols] = np.minimum(dist / np.maximum(outline, 1e-6), 2.0)
    return out


def segment_distance(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                     reach: float) -> np.ndarray:
    """Distance (normalized) from each pixel to the segment p0-p1 (points as (y, x)); pixels farther than
    `reach` from both ends' bounding box get `reach`."""
    out = np.full(yy.shape, np.float32(reach), np.float32)
    (y0, x0), (y1, x1) = p0, p1
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    rows, cols = _window(yy, xx, cy, cx, max(abs(y1 - y0), abs(x1 - x0)) / 2 + reach)
    sy, sx = yy[rows, cols], xx[rows, cols]
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((sy - y0) * vy + (sx - x0) * vx) / max(vy * vy + vx * vx, 1e-9), 0.0, 1.0)
    out[rows, cols] = np.minimum(np.hypot(sy - (y0 + t * vy), sx - (x0 + t * vx)), reach)
    return out


def soft_edge(radius: np.ndarray, width: float) -> np.ndarray:
    """1 inside (radius << 1), 0 outside, a smooth ramp of relative `width` around the outline."""
    return np.clip((1.0 - radius) / max(width, 1e-6) + 0.5, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-std noise smooth on the scale of `cell` pixels (float32 `[H, W]`).

    Coarse white noise, nearest-upsampled by `cell` and box-filtered over `cell` (= bilinear interpolation).
    """
    h, w = shape
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
    fine = ndimage.uniform_filter(fine, size=cell)[:h, :w]
    fine -= fine.mean()
    return fine / (fine.std() + 1e-6)


def box_of(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Pixel-edge box `(x1, y1, x2, y2)` of a mask: columns x1..x2-1 and rows y1..y2-1 hold it. None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def sample_point(rng: np.random.Generator, mask: np.ndarray, margin: float = 0.0) -> tuple[float, float]:
    """A uniformly random pixel of `mask` at least `margin` pixels inside it (or its deepest pixels when the
    mask is thinner than that), as normalized `(y, x)`."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, c0 = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    crop = mask[r0:rows[-1] + 2, c0:cols[-1] + 2]
    depth = ndimage.distance_transform_edt(crop)
    ok = depth > min(margin, float(depth.max()) - 1e-3)
    idx = np.flatnonzero(ok)
    k = int(idx[rng.integers(idx.size)])
    cw = crop.shape[1]
    return (r0 + k // cw + 0.5) / h, (c0 + k % cw + 0.5) / w
