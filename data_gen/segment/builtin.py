"""A classical organ segmenter (numpy + scipy.ndimage) so images without masks still get anatomy.

It is deliberately simple and predictable; it finds the structures that intensity alone separates reliably.

Radiographs (`LoadedImage.pixels`, windowed, MONOCHROME2: air dark, bone bright), frontal chest only
(`radiograph_organs` has the steps):
  1. body and the air outside it; aerated lung = dark regions inside the body, away from that air;
  2. a chest check: two aerated regions side by side, each wide and compact enough, enclosed by chest wall, with
     a brighter mediastinum between them. Otherwise nothing is returned, with `note='not_chest'` (a limb, a
     lateral view, an abdomen), which `load_masks` reports as the source `builtin+not_chest`: no thoracic organ
     is invented and the lesions link to `unknown`;
  3. lung fields grown from the aerated lung into denser lung (bases, consolidation), holes filled, so a dense
     nodule or mass inside the outline belongs to the lung; the costophrenic recesses joined below-laterally;
  4. right/left from `col_direction` ('L': image-left is patient-right); upper/mid/lower zones = thirds of each
     field's height (named like CXAS zones: "right upper zone lung", ..., "right lower zone lung");
  5. heart: the non-lung pixels between the two fields' medial borders, in the lower half of the lungs' height,
     down to the medial bases (an estimate: on a radiograph the heart overlaps the spine), never under a lung.

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

import dataclasses
from typing import Optional

import numpy as np
from scipy import ndimage

from data_gen.types import LoadedImage

WORK_SIDE = 256  # radiographs: long side of the working grid (lung fields are large; 256 px resolves them)
CT_WORK_SIDE = 512  # CT: DeepLesion slices are 512 px; work at full resolution up to this size
RADIOGRAPH_MODALITIES = ("xray", "cr", "dx", "rg", "xr")
_STRUCT8 = np.ones((3, 3), bool)

# Radiographs (`radiograph_organs`): what a pair of lung fields looks like, and how far a field grows.
MIN_LUNG_WIDTH = 0.08  # each aerated lung at least this share of the image width
MIN_LUNG_FILL = 0.3  # ... and this share of its bounding box (a thin strip along a limb is not a lung)
WALL_FRACTION = 0.02  # "next to the air outside": within this share of the image's long side
MAX_OUTLINE_NEAR_AIR = 0.15  # at most this share of a lung's outline next to the air outside
MIN_ROW_OVERLAP = 0.5  # the two lungs side by side: rows overlapping by this share of the shorter
MIN_GAP = 0.03  # mediastinum between them: on average this share of the image width
GROW_FRACTION = 0.75  # field threshold: aerated-lung median + this share of the way to the tissue median
DENSE_FRACTION = 0.95  # costophrenic recess: pixels up to this share count, brighter is diaphragm / chest wall
GROW_REACH = 0.1  # a field grows at most this share of the image's long side from its aerated part
RIM_PEEL = 2  # work-grid pixels of bright rim peeled off a grown field (the blur and threshold put it outside)


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
    return mask.take(rows, axis=0).take(cols, axis=1)  # two 1-D gathers: ~5x faster than one 2-D fancy index


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

NOT_CHEST = "not_chest"  # `Segmentation.note` of a radiograph without a plausible pair of lung fields


@dataclasses.dataclass
class Segmentation:
    """What the built-in segmenter found: raw names and bool masks on its input grid, and, when it found nothing
    on purpose, why (`note`, e.g. `NOT_CHEST`), so the pipeline can count it."""

    names: list[str]
    masks: list[np.ndarray]
    note: str = ""


def _background_and_body(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background, body) on the work grid: background = dark pixels connected to the border after an opening
    (a lung reaching the dark corner through a thin band at the armpit stays inside the body)."""
    air = ndimage.binary_opening(small < otsu_threshold(small), structure=disk(2))
    background = border_connected(air)
    body = largest_component(ndimage.binary_fill_holes(~background))
    return background, body


def _plausible_lungs(a: np.ndarray, b: np.ndarray, small: np.ndarray, background: np.ndarray) -> bool:
    """Two dark regions look like a frontal chest's lung fields (see `radiograph_organs`)."""
    h, w = small.shape
    for m in (a, b):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if not len(rows) or cols[-1] - cols[0] + 1 < MIN_LUNG_WIDTH * w:
            return False
        if m.sum() < MIN_LUNG_FILL * (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1):
            return False
        # Enclosed by chest wall: little of the outline lies next to the air outside the patient.
        outline = m & ~ndimage.binary_erosion(m)
        near_air = ndimage.binary_dilation(background, structure=disk(max(2, int(WALL_FRACTION * max(h, w)))))
        if (outline & near_air).sum() > MAX_OUTLINE_NEAR_AIR * outline.sum():
            return False
    ra, rb = np.nonzero(a.any(axis=1))[0], np.nonzero(b.any(axis=1))[0]
    overlap = min(ra[-1], rb[-1]) - max(ra[0], rb[0]) + 1
    if overlap < MIN_ROW_OVERLAP * min(len(ra), len(rb)):
        return False
    between = _between_rows(a, b)
    if between.sum() < MIN_GAP * w * overlap:  # a mediastinum between them, brighter than either
        return False
    return float(np.median(small[between])) > float(np.median(small[a | b]))


def _lung_pair(small: np.ndarray, body: np.ndarray, background: np.ndarray
               ) -> Optional[tuple[np.ndarray, np.ndarray, float]]:
    """(image-left, image-right) aerated lung, and the Otsu threshold over the body; None when not a chest."""
    t_lung = otsu_threshold(small[body])
    near_air = ndimage.binary_dilation(background, structure=disk(2))
    dark = ndimage.binary_opening((small < t_lung) & body & ~near_air, structure=disk(2))
    left, right = split_lungs(dark, body, int(0.015 * small.size))
    if not left.any() or not right.any() or not _plausible_lungs(left, right, small, background):
        return None
    return left, right, t_lung


def _lateral_limit(lung: np.ndarray, image_left: bool, slope: float = 0.5) -> np.ndarray:
    """Columns medial of the lung's lateral border, per row: the border as far out as any row above reached (a
    lung widens downwards), and below the lung moving outwards by `slope` columns per row (towards the
    costophrenic angle); nothing above the lung's apex."""
    h, w = lung.shape
    has = lung.any(axis=1)
    rows = np.nonzero(has)[0]
    if image_left:
        edge = np.minimum.accumulate(np.where(has, np.argmax(lung, axis=1), w).astype(float))
    else:
        edge = np.maximum.accumulate(np.where(has, w - 1 - np.argmax(lung[:, ::-1], axis=1), -1).astype(float))
    r = np.arange(h)
    below = np.maximum(r - rows[-1], 0) * slope
    edge = np.where(r <= rows[-1], edge, edge[rows[-1]] + (-below if image_left else below))
    cols = np.arange(w)[None, :]
    allowed = cols >= edge[:, None] - 2 if image_left else cols <= edge[:, None] + 2
    allowed[: max(rows[0] - 2, 0)] = False
    return allowed


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask | seed, structure=_STRUCT8)
    ids = np.unique(labels[seed])
    return np.isin(labels, ids[ids != 0])


def _hull(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a mask's pixel centres, filled (monotone chain, drawn with Pillow)."""
    from PIL import Image, ImageDraw  # local: only radiographs with a costophrenic recess need it

    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) == 0:
        return mask.copy()
    first = np.argmax(mask[rows], axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
    # Each row's two extreme pixels hold the hull's vertices.
    pts = sorted(set(zip(first.tolist(), rows.tolist())) | set(zip(last.tolist(), rows.tolist())))
    if len(pts) < 3:
        return mask.copy()

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    chain = []
    for seq in (pts, pts[::-1]):
        half: list = []
        for p in seq:
            while len(half) >= 2 and turn(half[-2], half[-1], p) <= 0:
                half.pop()
            half.append(p)
        chain += half[:-1]
    im = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(im).polygon(chain, fill=1, outline=1)
    return np.asarray(im, bool) | mask


def _lung_field(small: np.ndarray, body: np.ndarray, aerated: np.ndarray, other: np.ndarray, image_left: bool,
                t_grow: float, t_dense: float, t_edge: float, near_air: np.ndarray) -> np.ndarray:
    """One lung field from its aerated part (see `radiograph_organs`, steps 3-5)."""
    h, w = small.shape
    own = ndimage.distance_transform_edt(~aerated)
    nearer = own < ndimage.distance_transform_edt(~other)
    allowed = _lateral_limit(aerated, image_left) & nearer & body & ~near_air & (own <= GROW_REACH * max(h, w))
    field = _connected_to((small < t_grow) & allowed, aerated)
    field = ndimage.binary_fill_holes(field)
    field |= ndimage.binary_closing(field, structure=disk(3)) & allowed
    field = ndimage.binary_fill_holes(field)

    # The costophrenic recess: darker pieces below-lateral of the field, joined to it by the hull of the lung's
    # lower half, through dense lesions and rib crossings but not into the diaphragm or chest wall (>= t_dense).
    rows = np.nonzero(field.any(axis=1))[0]
    mid, bottom = rows[0] + (rows[-1] - rows[0]) // 2, rows[-1]
    has = field.any(axis=1)
    centre = np.where(has, (np.argmax(field, axis=1) + w - 1 - np.argmax(field[:, ::-1], axis=1)) / 2.0, np.nan)
    centre = np.where(np.arange(h) <= bottom, centre, np.nanmean(centre[max(mid, bottom - 8):bottom + 1]))
    cols = np.arange(w)[None, :]
    lateral_half = cols <= centre[:, None] if image_left else cols >= centre[:, None]
    r = np.arange(h)[:, None]
    zone = (_lateral_limit(field, image_left) & lateral_half & (r >= mid) & (r <= bottom + GROW_REACH * max(h, w))
            & body & ~other & ~near_air & nearer)
    near = ndimage.distance_transform_edt(~field) <= GROW_REACH * max(h, w)
    labels, _ = ndimage.label((small < t_grow) & zone, structure=_STRUCT8)
    ids = np.unique(labels[near & (labels > 0)])
    pieces = np.isin(labels, ids)
    added = _hull((field & (r >= mid)) | pieces) & zone & (small < t_dense)
    field = ndimage.binary_fill_holes(_connected_to(added, field))
    # The grown outline sits on the bright side of the lung's edge (t_grow is above the edge's midpoint, and the
    # work grid is blurred): peel its bright rim back to where the aerated lung's threshold puts the edge.
    for _ in range(RIM_PEEL):
        field &= ~(field & ~ndimage.binary_erosion(field) & (small >= t_edge))
    return field | aerated


def radiograph_organs(gray: np.ndarray, col_direction: str = "L") -> Segmentation:
    """Lung fields, zones and a heart estimate on a frontal chest radiograph (uint8 `[H, W]`, MONOCHROME2).

    Steps (on a grid of at most `WORK_SIDE` pixels):
      1. background (dark, connected to the border after an opening) and body;
      2. aerated lung: dark regions inside the body (Otsu over the body), away from the air outside; the two
         largest, or one split at the midline. They must look like a frontal chest's lung fields, else nothing
         is returned (`note=NOT_CHEST`: a limb, a lateral view, an abdomen): each at least `MIN_LUNG_WIDTH` of
         the image wide and `MIN_LUNG_FILL` of its box, enclosed by chest wall (at most `MAX_OUTLINE_NEAR_AIR`
         of its outline within `WALL_FRACTION` of the air outside), side by side (rows overlapping by
         `MIN_ROW_OVERLAP`), with a brighter mediastinum at least `MIN_GAP` of the width between them;
      3. each field grows from its aerated part into pixels darker than `t_grow` (aerated-lung median +
         `GROW_FRACTION` of the way to the surrounding tissue's median: bases and consolidated lung, not the
         diaphragm), never lateral of its own lateral border, above its apex, or nearer the other lung;
      4. holes filled and a small closing: a dense nodule or mass inside the lung outline belongs to the lung;
      5. the costophrenic recess: below-lateral pieces joined through the hull of the lower half, except pixels
         as bright as the diaphragm or chest wall (`DENSE_FRACTION`);
      6. right/left from `col_direction`; zones = thirds of each field's height;
      7. heart: the non-lung pixels strictly between the two fields' medial borders, on rows holding both fields
         in their lower half, so it never reaches under a lung.
    """
    factor = max(1, int(np.ceil(max(gray.shape) / WORK_SIDE)))
    small = ndimage.gaussian_filter(downsample(gray, factor), 1.0)
    background, body = _background_and_body(small)
    if body.sum() < 0.1 * body.size:
        return Segmentation([], [], NOT_CHEST)
    pair = _lung_pair(small, body, background)
    if pair is None:
        return Segmentation([], [], NOT_CHEST)
    img_left, img_right, t_lung = pair
    aerated = img_left | img_right
    mu_lung = float(np.median(small[aerated]))
    tissue = body & ~background & ~ndimage.binary_dilation(aerated, structure=disk(3))
    mu_tissue = float(np.median(small[tissue])) if tissue.any() else float(small.max())
    t_grow = max(t_lung, mu_lung + GROW_FRACTION * (mu_tissue - mu_lung))
    t_dense = mu_lung + DENSE_FRACTION * (mu_tissue - mu_lung)
    near_air = ndimage.binary_dilation(background, structure=disk(2))
    left_field = _lung_field(small, body, img_left, img_right, True, t_grow, t_dense, t_lung, near_air)
    right_field = _lung_field(small, body, img_right, left_field, False, t_grow, t_dense, t_lung, near_air)
    right_field &= ~left_field

    names: list[str] = []
    masks: list[np.ndarray] = []
    for side, lung in zip(_sides(col_direction), (left_field, right_field)):
        names.append(f"{side} lung")
        masks.append(lung)
        rows = np.nonzero(lung.any(axis=1))[0]
        top, height = rows[0], rows[-1] - rows[0] + 1
        cuts = [top, top + height / 3, top + 2 * height / 3, rows[-1] + 1]
        r = np.arange(lung.shape[0])[:, None]
        for zone, (a, b) in zip(("upper", "mid", "lower"), zip(cuts[:-1], cuts[1:])):
            names.append(f"{side} {zone} zone lung")
            masks.append(lung & (r >= a) & (r < b))
    both = left_field | right_field
    rows = np.nonzero(both.any(axis=1))[0]
    mid_row = rows[0] + 0.5 * (rows[-1] - rows[0])
    # The heart sits on the diaphragm, which the medial bases reach; below them, between the costophrenic
    # recesses, lie liver and stomach.
    base = max(_medial_bottom(left_field, True), _medial_bottom(right_field, False))
    r = np.arange(both.shape[0])[:, None]
    heart = (_between_rows(left_field, right_field) & body & ~both & (r >= mid_row) & (r <= base)
             & (small >= t_lung))
    heart = ndimage.binary_opening(heart, structure=disk(1))
    if heart.any():
        names.append("heart")
        masks.append(ndimage.binary_fill_holes(largest_component(heart)))
    return Segmentation(names, [upsample(m, gray.shape) if m.shape != gray.shape else m for m in masks])


def _medial_bottom(lung: np.ndarray, image_left: bool) -> int:
    """The lowest row holding lung in the medial half of the lung's columns."""
    cols = np.nonzero(lung.any(axis=0))[0]
    middle = (cols[0] + cols[-1]) // 2
    medial = lung[:, middle:] if image_left else lung[:, : middle + 1]
    return int(np.nonzero(medial.any(axis=1))[0][-1])


def segment_radiograph(gray: np.ndarray, col_direction: str = "L") -> tuple[list[str], list[np.ndarray]]:
    """`radiograph_organs` as (names, masks)."""
    s = radiograph_organs(gray, col_direction)
    return s.names, s.masks


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

def organs(image: LoadedImage) -> Segmentation:
    """What the segmenter finds on one image; `note` says why nothing was found on purpose (`NOT_CHEST`)."""
    if image.modality == "ct" and image.hu is not None:
        return Segmentation(*segment_ct(np.asarray(image.hu, np.float32), image.col_direction))
    if image.modality in RADIOGRAPH_MODALITIES:
        px = image.pixels if image.pixels.ndim == 2 else image.pixels.mean(axis=2)
        return radiograph_organs(px, image.col_direction)
    return Segmentation([], [])


def segment(image: LoadedImage) -> tuple[list[str], np.ndarray]:
    """Raw organ names and bool `[K, H, W]` masks on the image grid; K may be 0 (nothing found / unsupported)."""
    s = organs(image)
    return s.names, (np.stack(s.masks) if s.masks else np.zeros((0, image.height, image.width), bool))
