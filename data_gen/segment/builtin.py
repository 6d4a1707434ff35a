"""A classical organ segmenter (numpy + scipy.ndimage) so images without masks still get anatomy.

It is deliberately simple and predictable; it finds the structures that intensity alone separates reliably.

Radiographs (`LoadedImage.pixels`, windowed, MONOCHROME2: air dark, bone bright):
  1. body: everything except the dark background connected to the image border (Otsu threshold over the image);
  2. lung fields: the dark regions inside the body (Otsu threshold over the body), opened to cut thin bridges,
     holes filled (vessels, nodules); the two largest components, or one component split at the body's midline;
  3. right/left from `col_direction` ('L': image-left is patient-right); upper/mid/lower zones = thirds of each
     lung's height (named like CXAS zones: "right upper zone lung", ..., "right lower zone lung");
  4. heart: the non-lung pixels between the two lung fields' medial borders, in the lower half of the lungs'
     height (an estimate: on a radiograph the heart overlaps the spine and the left lower lung field).

CT (`LoadedImage.hu`, one axial slice):
  1. body: HU > -500, opened (cuts the table), largest component, holes filled;
  2. lungs: air (HU < -400) inside the body in components of at least 2% of the body area whose mean HU lies in
     (-950, -500) (aerated lung, vessels included; gas in bowel or stomach is near -1000 HU), two largest or one
     split at the body's midline; right/left from `col_direction`;
  3. bone: HU > 300 inside the body (also catches dense arterial contrast and calcification);
  4. mediastinum: non-lung, non-bone body pixels between the lungs' medial borders, on rows holding both lungs.

Work happens on a grid of at most `WORK_SIDE` pixels (block mean), then masks are brought back (nearest).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from data_gen.types import LoadedImage

WORK_SIDE = 256  # radiographs: long side of the working grid (lung fields are large; 256 px resolves them)
CT_WORK_SIDE = 512  # CT: DeepLesion slices are 512 px; work at full resolution up to this size
RADIOGRAPH_MODALITIES = ("xray", "cr", "dx", "rg", "xr")
_STRUCT8 = np.ones((3, 3), bool)


# ---- small tools -------------------------------------------------------------------------------------------------

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a 1-D sample; `values < t` is the dark class."""
    v = np.asarray(values, np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    i = int(np.argmax(between[:-1]))
    return float(edges[i + 1])


def downsample(values: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by `factor` (edges cropped to a multiple of it)."""
    if factor <= 1:
        return values.astype(np.float32, copy=False)
    h, w = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
    v = values[:h, :w].astype(np.float32)
    return v.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour back to `shape` (pixel centres mapped)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * (h / shape[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * (w / shape[1])).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def components_by_size(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Labels and component ids sorted by decreasing area (ties by id: deterministic)."""
    labels, n = ndimage.label(mask, structure=_STRUCT8)
    if n == 0:
        return labels, []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = sorted(range(1, n + 1), key=lambda i: (-int(areas[i - 1]), i))
    return labels, order


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, order = components_by_size(mask)
    return labels == order[0] if order else np.zeros_like(mask, bool)


def border_connected(mask: np.ndarray) -> np.ndarray:
    """The parts of `mask` connected to the image border."""
    labels, n = ndimage.label(mask, structure=_STRUCT8)
    if n == 0:
        return np.zeros_like(mask, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge != 0]
    return np.isin(labels, edge)


def disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _centroid_col(mask: np.ndarray) -> float:
    cols = np.nonzero(mask.any(axis=0))[0]
    weights = mask.sum(axis=0)[cols]
    return float((cols * weights).sum() / max(weights.sum(), 1))


def split_lungs(candidates: np.ndarray, body: np.ndarray, min_area: int,
                keep: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(image-left lung, image-right lung) from lung candidates: two largest components, or one split at the body
    midline when a single component spans it. `keep[i]` may veto component i (True keeps it)."""
    labels, order = components_by_size(candidates)
    areas = np.bincount(labels.ravel())
    chosen = [i for i in order if areas[i] >= min_area and (keep is None or keep[i])][:2]
    empty = np.zeros_like(candidates, bool)
    if not chosen:
        return empty, empty
    mid = _centroid_col(body) if body.any() else candidates.shape[1] / 2
    if len(chosen) == 1:
        comp = labels == chosen[0]
        cols = np.nonzero(comp.any(axis=0))[0]
        if cols[0] < mid < cols[-1] and min(mid - cols[0], cols[-1] - mid) > 0.25 * (cols[-1] - cols[0]):
            left = comp.copy()
            left[:, int(round(mid)):] = False
            return left, comp & ~left
        return (comp, empty) if _centroid_col(comp) < mid else (empty, comp)
    a, b = (labels == chosen[0]), (labels == chosen[1])
    return (a, b) if _centroid_col(a) <= _centroid_col(b) else (b, a)


def _sides(col_direction: str) -> tuple[str, str]:
    """Patient side of (image-left, image-right): 'L' means columns increase towards the patient's left."""
    return ("right", "left") if str(col_direction).upper() != "R" else ("left", "right")


def _between_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per row holding both masks, the pixels strictly between `left`'s last column and `right`'s first column."""
    h, w = left.shape
    cols = np.arange(w)
    has_l, has_r = left.any(axis=1), right.any(axis=1)
    l_edge = np.where(has_l, w - 1 - np.argmax(left[:, ::-1], axis=1), -1)
    r_edge = np.where(has_r, np.argmax(right, axis=1), w)
    rows = has_l & has_r
    return rows[:, None] & (cols[None, :] > l_edge[:, None]) & (cols[None, :] < r_edge[:, None])


# ---- radiographs ---------------------------------------------------------------------------------------------------

def segment_radiograph(gray: np.ndarray, col_direction: str = "L") -> tuple[list[str], list[np.ndarray]]:
    """Lung fields, zones and a heart estimate on a frontal radiograph (uint8 `[H, W]`, MONOCHROME2)."""
    factor = max(1, int(np.ceil(max(gray.shape) / WORK_SIDE)))
    small = ndimage.gaussian_filter(downsample(gray, factor), 1.0)
    t_all = otsu_threshold(small)
    background = border_connected(small < t_all)
    body = ndimage.binary_fill_holes(~background)
    body = largest_component(body)
    if body.sum() < 0.1 * body.size:
        return [], []
    t_lung = otsu_threshold(small[body])
    dark = (small < t_lung) & body
    dark = ndimage.binary_opening(dark, structure=disk(2))
    min_area = int(0.015 * small.size)
    img_left, img_right = split_lungs(dark, body, min_area)
    names: list[str] = []
    masks: list[np.ndarray] = []
    lungs = []
    for side, lung in zip(_sides(col_direction), (img_left, img_right)):
        if not lung.any():
            continue
        lung = ndimage.binary_fill_holes(ndimage.binary_closing(lung, structure=disk(2)))
        lungs.append(lung)
        names.append(f"{side} lung")
        masks.append(lung)
        rows = np.nonzero(lung.any(axis=1))[0]
        top, height = rows[0], rows[-1] - rows[0] + 1
        cuts = [top, top + height / 3, top + 2 * height / 3, rows[-1] + 1]
        r = np.arange(lung.shape[0])[:, None]
        for zone, (a, b) in zip(("upper", "mid", "lower"), zip(cuts[:-1], cuts[1:])):
            names.append(f"{side} {zone} zone lung")
            masks.append(lung & (r >= a) & (r < b))
    if len(lungs) == 2:
        left_l, right_l = lungs  # image-left, image-right (filled)
        both = left_l | right_l
        rows = np.nonzero(both.any(axis=1))[0]
        mid_row = rows[0] + 0.5 * (rows[-1] - rows[0])
        # Medial borders from the lower half, carried to rows where a field is hidden by the heart.
        between = _between_rows(_extend_down(left_l, mid_row), _extend_down(right_l, mid_row))
        r = np.arange(both.shape[0])[:, None]
        heart = between & body & ~both & (r >= mid_row) & (r <= rows[-1]) & (small >= t_lung)
        heart = ndimage.binary_opening(heart, structure=disk(1))
        if heart.any():
            heart = largest_component(heart)
            names.append("heart")
            masks.append(ndimage.binary_fill_holes(heart))
    return names, [upsample(m, gray.shape) if factor > 1 or m.shape != gray.shape else m for m in masks]


def _extend_down(lung: np.ndarray, from_row: float) -> np.ndarray:
    """Rows below `from_row` where the lung has no pixel inherit its medial-most extent from the row above,
    so a heart border that hides the lung field still has a lateral limit."""
    out = lung.copy()
    last = None
    for row in range(int(from_row), lung.shape[0]):
        if out[row].any():
            last = out[row]
        elif last is not None and row <= np.nonzero(lung.any(axis=1))[0][-1]:
            out[row] = last
    return out


# ---- CT ----------------------------------------------------------------------------------------------------------

def segment_ct(hu: np.ndarray, col_direction: str = "L") -> tuple[list[str], list[np.ndarray]]:
    """Body, right/left lung, bone and mediastinum on one axial CT slice (float HU `[H, W]`)."""
    factor = max(1, int(np.ceil(max(hu.shape) / CT_WORK_SIDE)))
    work = downsample(hu, factor)
    body = ndimage.binary_opening(work > -500, structure=disk(3))
    body = ndimage.binary_fill_holes(largest_component(body))
    if body.sum() < 0.02 * body.size:
        return [], []
    air = (work < -400) & body
    labels, n = ndimage.label(air, structure=_STRUCT8)
    keep = np.zeros(n + 1, bool)
    if n:
        idx = np.arange(1, n + 1)
        mean_hu = ndimage.mean(work, labels, idx)
        keep[1:] = (np.asarray(mean_hu) > -950) & (np.asarray(mean_hu) < -500)
    img_left, img_right = split_lungs(air, body, int(0.02 * body.sum()), keep)
    names: list[str] = ["body"]
    masks: list[np.ndarray] = [body]
    for side, lung in zip(_sides(col_direction), (img_left, img_right)):
        if lung.any():
            names.append(f"{side} lung")
            masks.append(ndimage.binary_fill_holes(lung))
    lung_all = img_left | img_right
    bone = (work > 300) & body
    if bone.sum() >= 10:
        names.append("bone")
        masks.append(bone)
    if img_left.any() and img_right.any():
        med = _between_rows(ndimage.binary_fill_holes(img_left), ndimage.binary_fill_holes(img_right))
        med &= body & ~lung_all & ~bone
        if med.sum() >= 10:
            names.append("mediastinum")
            masks.append(med)
    return names, [upsample(m, hu.shape) if factor > 1 or m.shape != hu.shape else m for m in masks]


# ---- entry point -------------------------------------------------------------------------------------------------

def segment(image: LoadedImage) -> tuple[list[str], np.ndarray]:
    """Raw organ names and bool `[K, H, W]` masks on the image grid; K may be 0 (nothing found / unsupported)."""
    shape = (image.height, image.width)
    if image.modality == "ct" and image.hu is not None:
        names, masks = segment_ct(np.asarray(image.hu, np.float32), image.col_direction)
    elif image.modality in RADIOGRAPH_MODALITIES:
        px = image.pixels if image.pixels.ndim == 2 else image.pixels.mean(axis=2)
        names, masks = segment_radiograph(px, image.col_direction)
    else:
        names, masks = [], []
    return names, (np.stack(masks) if masks else np.zeros((0,) + shape, bool))
