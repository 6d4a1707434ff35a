"""The linking grid: organ masks held at a bounded resolution, and mask pixels counted inside lesion boxes on it.

Why: CXAS writes 159 masks per chest radiograph. At 2048 x 2048 a bool stack of them is 667 MB in every worker,
and decoding them at full size is most of an image's time, yet linking needs only each organ's share of a lesion
box (`data_gen.link`). A grid of `cell` x `cell` pixel cells that holds each cell's *coverage* (the share of its
pixels in the mask) keeps that share to within 0.01 for lesion boxes of clinical sizes, a small nodule's included,
even where a box straddles an organ's border (tests/data_gen/test_mask_scale.py), in a quarter of the memory at
cell 2; JPEG masks decode straight onto it (libjpeg's DCT scaling, `sources.read_mask_image`). A grid of bool
cells would not: a straight zone border halfway through a row of cells moves by a pixel, 5% of a 21-pixel box.

Rules:
  * cell: 1 (the image grid) when the image's long side is at most `masks.grid_max_side` or that is 0; else the
    smallest power of two with ceil(long side / cell) <= grid_max_side (a power of two, so a JPEG decodes at 1/2,
    1/4 or 1/8 scale). The grid is ceil(H / cell) x ceil(W / cell); cell (i, j) covers image rows
    i * cell .. (i + 1) * cell - 1 and columns j * cell .. (j + 1) * cell - 1, clipped to the image.
  * Cells: with cell 1, bool (the mask's pixels); with a larger cell, uint8 coverage, 0 (outside) .. 255 (every
    pixel inside), `COVERAGE_FULL`.
  * A mask on a finer grid comes onto the grid by area (OpenCV's INTER_AREA mean of 0/255: the coverage; on the
    image grid itself, `> 127`: at least half); a mask on a coarser grid by nearest neighbour (`resample_nearest`,
    pixel centres).
  * Counts are in image pixels: a box's pixels (`pixel_ranges`, link rule 1) weigh each cell by how many of them
    it holds, times the cell's coverage, so neither a box edge nor a mask border inside a cell is rounded to the
    cell; only where both cross the same cell does the grid approximate.

Counting on the image grid: for the usual few boxes per image the counts come from the box crops of all K masks at
once (8 pixels per popcount); a summed-area table of 159 masks at 2048 x 2048 would read all 667 MB of masks and
write 2.7 GB of int32, while ten lesion crops read a few percent of it. When the boxes' total area exceeds
`SAT_AREA_FACTOR` image areas, from summed-area tables of the K masks (built in chunks of `SAT_CHUNK` masks), read
for all N boxes x K organs with one fancy-indexing gather.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from data_gen.segment.mask_files import opencv

SAT_AREA_FACTOR = 2.0
SAT_CHUNK = 16
COVERAGE_FULL = 255  # a uint8 cell wholly inside the mask


def cell_for(height: int, width: int, max_side: int) -> int:
    """Image pixels per grid cell along each axis for an image of `height` x `width` (see the module docstring)."""
    cell = 1
    if max_side:
        while -(-max(height, width) // cell) > max_side:
            cell *= 2
    return cell


def grid_shape(height: int, width: int, cell: int) -> tuple[int, int]:
    """The grid of an image of `height` x `width` at `cell` pixels per cell."""
    return -(-height // cell), -(-width // cell)


def resample_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of `[..., h, w]` to `[..., H, W]` (pixel centres mapped, no shift)."""
    h, w = mask.shape[-2:]
    H, W = shape
    rows = np.minimum(((np.arange(H) + 0.5) * (h / H)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * (w / W)).astype(np.int64), w - 1)
    return mask.take(rows, axis=-2).take(cols, axis=-1)


def area_resize(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 `[h, w]` -> `[H, W]` by area averaging (OpenCV INTER_AREA); for H <= h and W <= w.

    When `[H, W]` is the grid of `[h, w]` at some cell size f (ceil(h / f) = H, ceil(w / f) = W; a power of two, as
    `cell_for` makes them and as a JPEG decoded at 1/2-1/8 scale keeps them), the last row and column are first
    padded to whole cells with copies of the image's edge, so cell i averages pixels i*f .. i*f + f - 1 as the grid
    defines it (a plain resize would spread the ragged edge over every cell). f is not ceil(h / H): a 2049-pixel
    side on a grid of 64-pixel cells has 33 cells, and ceil(2049 / 33) = 63.
    """
    cv2 = opencv()
    h, w = grey.shape
    f = cell_for(h, 1, shape[0])  # the power-of-two cell that fits h rows in shape[0] cells
    if (-(-h // f), -(-w // f)) == tuple(shape) and (h % f or w % f):
        grey = cv2.copyMakeBorder(np.ascontiguousarray(grey), 0, shape[0] * f - h, 0, shape[1] * f - w,
                                  cv2.BORDER_REPLICATE)
    return cv2.resize(np.ascontiguousarray(grey), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def full_value(masks: np.ndarray) -> int:
    """The value of a cell wholly inside the mask: 1 for bool masks, `COVERAGE_FULL` for coverage."""
    return 1 if masks.dtype == bool else COVERAGE_FULL


def fit_plane(plane: np.ndarray, shape: tuple[int, int], coverage: bool) -> np.ndarray:
    """A bool mask plane onto a grid of `shape`, as coverage (uint8) or bool: by area when the plane is finer,
    else nearest (see the module docstring)."""
    shape = tuple(shape)
    if plane.shape[0] >= shape[0] and plane.shape[1] >= shape[1] and plane.shape != shape:
        grey = area_resize(np.where(plane, np.uint8(COVERAGE_FULL), np.uint8(0)), shape)
        return grey if coverage else grey > 127
    if plane.shape != shape:
        plane = resample_nearest(plane, shape)
    return np.where(plane, np.uint8(COVERAGE_FULL), np.uint8(0)) if coverage else plane


def mask_bounds(plane: np.ndarray) -> np.ndarray:
    """A mask's bounding box on its grid: int64 `(r0, r1, c0, c1)`, end-exclusive; `(0, 0, 0, 0)` when empty."""
    rows = np.flatnonzero(plane.any(axis=1))
    if not len(rows):
        return np.zeros(4, np.int64)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(plane[r0:r1].any(axis=0))
    return np.array([r0, r1, int(cols[0]), int(cols[-1]) + 1], np.int64)


# ---- counting ------------------------------------------------------------------------------------------------------

def pixel_ranges(boxes_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float xyxy boxes `[N, 4]` -> int `[N, 4]` pixel ranges `(r0, r1, c0, c1)`, end-exclusive (link rule 1)."""
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    c0 = np.clip(np.floor(b[:, 0]), 0, width - 1).astype(np.int64)
    r0 = np.clip(np.floor(b[:, 1]), 0, height - 1).astype(np.int64)
    c1 = np.clip(np.ceil(b[:, 2]), 0, width).astype(np.int64)
    r1 = np.clip(np.ceil(b[:, 3]), 0, height).astype(np.int64)
    c1 = np.maximum(c1, c0 + 1)
    r1 = np.maximum(r1, r0 + 1)
    return np.stack([r0, r1, c0, c1], axis=1)


def _bounded_counts(masks: np.ndarray, ranges: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Crop counts that read each mask only where its bounding box meets the box (most masks miss most boxes)."""
    out = np.zeros((len(ranges), masks.shape[0]), np.int64)
    for i, (r0, r1, c0, c1) in enumerate(ranges.tolist()):
        a0, a1 = np.maximum(bounds[:, 0], r0), np.minimum(bounds[:, 1], r1)
        b0, b1 = np.maximum(bounds[:, 2], c0), np.minimum(bounds[:, 3], c1)
        for k in np.flatnonzero((a1 > a0) & (b1 > b0)).tolist():
            crop = masks[k, a0[k]:a1[k], b0[k]:b1[k]]
            out[i, k] = np.count_nonzero(crop) if crop.dtype == bool else int(crop.sum(dtype=np.int64))
    return out


def _crop_counts(masks: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    k = masks.shape[0]
    out = np.zeros((len(ranges), k), np.int64)
    fast = hasattr(np, "bitwise_count") and masks.dtype == bool and masks.strides[-1] == 1
    for i, (r0, r1, c0, c1) in enumerate(ranges.tolist()):
        if not fast:
            out[i] = masks[:, r0:r1, c0:c1].sum(axis=(1, 2), dtype=np.int64)
            continue
        a, b = (c0 + 7) // 8 * 8, c1 // 8 * 8  # 8-aligned middle: one uint64 = 8 bool bytes = popcount
        if b - a >= 8:
            mid = masks[:, r0:r1, a:b].view(np.uint64)
            out[i] = np.bitwise_count(mid).sum(axis=(1, 2), dtype=np.int64)
            out[i] += masks[:, r0:r1, c0:a].sum(axis=(1, 2), dtype=np.int64)
            out[i] += masks[:, r0:r1, b:c1].sum(axis=(1, 2), dtype=np.int64)
        else:
            out[i] = masks[:, r0:r1, c0:c1].sum(axis=(1, 2), dtype=np.int64)
    return out


def _sat_counts(masks: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    k, h, w = masks.shape
    r0, r1, c0, c1 = (ranges[:, j] for j in range(4))
    out = np.zeros((len(ranges), k), np.int64)
    dtype = np.int32 if h * w * full_value(masks) < 2**31 else np.int64
    for s in range(0, k, SAT_CHUNK):
        chunk = masks[s:s + SAT_CHUNK]
        sat = np.zeros((chunk.shape[0], h + 1, w + 1), dtype)
        np.cumsum(chunk, axis=1, dtype=dtype, out=sat[:, 1:, 1:])
        np.cumsum(sat[:, 1:, 1:], axis=2, out=sat[:, 1:, 1:])
        # [chunk, N] for all boxes at once: the four corners of every box, gathered by fancy indexing.
        counts = sat[:, r1, c1] - sat[:, r0, c1] - sat[:, r1, c0] + sat[:, r0, c0]
        out[:, s:s + chunk.shape[0]] = counts.T
    return out


def box_mask_counts(masks: np.ndarray, ranges: np.ndarray, method: str = "auto",
                    bounds: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask cells inside each box: int64 `[N, K]` for masks `[K, H, W]` (bool, or coverage: then the sum of the
    cells' coverage) and cell ranges `[N, 4]`.

    Args:
      method: 'crop' (box crops of all K masks, or with `bounds` of the masks that can meet the box, each only
        where it can), 'sat' (summed-area tables) or 'auto' (by total box area).
      bounds: the masks' bounding boxes (`mask_bounds`), when known.
    """
    k, h, w = masks.shape
    if len(ranges) == 0 or k == 0:
        return np.zeros((len(ranges), k), np.int64)
    if method == "auto":
        area = int(((ranges[:, 1] - ranges[:, 0]) * (ranges[:, 3] - ranges[:, 2])).sum())
        method = "sat" if area > SAT_AREA_FACTOR * h * w else "crop"
    if method == "sat":
        return _sat_counts(masks, ranges)
    if method == "crop":
        return _crop_counts(masks, ranges) if bounds is None else _bounded_counts(masks, ranges, bounds)
    raise ValueError(f"unknown counting method {method!r}")


def cell_ranges(ranges: np.ndarray, cell: int) -> np.ndarray:
    """Pixel ranges `[N, 4]` -> the ranges of the cells holding them (end-exclusive)."""
    r = np.asarray(ranges, np.int64).reshape(-1, 4)
    return np.stack([r[:, 0] // cell, (r[:, 1] - 1) // cell + 1, r[:, 2] // cell, (r[:, 3] - 1) // cell + 1], axis=1)


def _deficits(p0: int, p1: int, g0: int, g1: int, cell: int) -> list[tuple[int, int]]:
    """(cell index, `cell` minus the pixels of [p0, p1) in it) for the end cells of [g0, g1) where that is not 0;
    every cell in between holds `cell` of them."""
    if g1 - g0 == 1:
        ends = [(g0, cell - (p1 - p0))]
    else:
        ends = [(g0, p0 - g0 * cell), (g1 - 1, g1 * cell - p1)]
    return [(g, d) for g, d in ends if d]


def grid_box_counts(masks: np.ndarray, ranges: np.ndarray, cell: int, method: str = "auto",
                    bounds: Optional[np.ndarray] = None) -> np.ndarray:
    """Mask pixels inside each box, in image pixels: `[N, K]` for masks `[K, h, w]` on a grid of `cell` pixel cells
    (bool with cell 1: exact int64 counts; coverage otherwise: float64) and pixel ranges `[N, 4]` on the image.

    A cell counts for its coverage times the pixels it shares with the box: with row weights `wr` and column
    weights `wc` that are `cell` except on the first and last row and column of cells, sum wr[r] wc[c] m[r, c] =
    cell^2 x (the plain sum over the cells) - cell x (deficit-weighted sums of the end rows and columns) + (the
    corner terms), divided by the value of a full cell.
    """
    if cell == 1:
        return box_mask_counts(masks, ranges, method, bounds)
    cells = cell_ranges(ranges, cell)
    out = box_mask_counts(masks, cells, method, bounds) * (cell * cell)
    for i, ((r0, r1, c0, c1), (g0, g1, h0, h1)) in enumerate(zip(ranges.tolist(), cells.tolist())):
        rows, cols = _deficits(r0, r1, g0, g1, cell), _deficits(c0, c1, h0, h1, cell)
        for g, d in rows:
            out[i] -= cell * d * masks[:, g, h0:h1].sum(axis=1, dtype=np.int64)
        for h, e in cols:
            out[i] -= cell * e * masks[:, g0:g1, h].sum(axis=1, dtype=np.int64)
        for g, d in rows:
            for h, e in cols:
                out[i] += d * e * masks[:, g, h].astype(np.int64)
    full = full_value(masks)
    return out if full == 1 else out / full
