"""Lesion box -> host organ, scored by the organ masks themselves, plus where in the organ the lesion lies.

The authors' code scored each organ by the IoU between the lesion box and the organ mask's *bounding box*, which
prefers small structures whose box happens to match the lesion (a rib over the lung that holds 86% of the lesion).
Here an organ's score is its **containment**: the fraction of the lesion box's pixels that the mask covers.

Rules (all deterministic):
  1. Pixels of a box: a float pixel box `(x1, y1, x2, y2)` covers columns `floor(x1) .. ceil(x2) - 1` and rows
     `floor(y1) .. ceil(y2) - 1` (clipped to the image; at least one pixel).
  2. The best organ has the highest containment; ties (within 1e-6) go to the most specific structure along the
     part-of hierarchy (a tied structure yields to a tied part of it: a zone/lobe over its lung, the lung over
     "lungs"), then the higher IoU(box, mask), then the name. Depth (`names.specificity`) is not compared across
     branches: it reflects how finely a vocabulary divides a region, not which structure hosts the lesion.
  3. Radiographs (projection): every lesion projects over ribs, clavicles, scapulae, breast shadows and the body
     outline (`names.is_overlay`). When an organ that is not such an overlay reaches `min_score` and comes within
     `overlay_tolerance` of the best containment, only such organs compete: a nodule wholly inside both the
     right upper zone and the 4th rib's shadow is in the zone. Axial images have no overlays.
  4. Prefer specific (`prefer_specific`): while a part of the chosen structure (a zone or lobe of the chosen lung,
     ...) also reaches `min_score` and its containment is within `specific_tolerance` of the containment chosen
     by rules 2-3, the part is chosen instead. A nodule 95% inside the right upper zone and 100% inside the right
     lung is reported in the zone; a mass straddling two zones (60% / 40%) stays in the lung, with its zone taken
     from geometry.
  5. Below `min_score`: the nearest organ whose mask lies within `max_distance_mm` of the box (pixel-centre to
     box distance, anisotropic spacing respected), or, when the spacing is unknown, within `max_distance_px`,
     by default `MAX_DISTANCE_FRACTION` (5%) of the image's long side, so the radius covers the same share of the
     anatomy at any image size; method "nearest", score 0, distance recorded; equal distances go to the deeper
     structure (`names.specificity`), then the name. Otherwise "unknown" (method "none").
  Organs that are lesions themselves (TotalSegmentator's kidney cysts) never host a lesion.
  The thresholds are the `link` config section, read into `LinkSettings` (whose fields hold the defaults).

Location:
  * laterality: the host's own side when its name has one ("left kidney"); else the box centre against the
    midline: halfway between the two lungs' medial borders when both lungs are segmented, else the centre of the
    body (or lungs) mask, else the image centre. `image.col_direction` says which patient side the columns run
    to: 'L' (the display convention for frontal radiographs and axial CT) means image-left is patient-right; 'R'
    flips it. A box that straddles the midline with its centre within a quarter of its width of it is "midline".
    On a lateral radiograph (`image.view` LL/RL/LATERAL) the columns run anterior-posterior: laterality is the
    host's named side or None.
  * zone: upper/middle/lower third of the host's vertical extent, by box centre, on projection radiographs only
    (on an axial slice rows run anterior -> posterior, so thirds would not be zones); a zone host names its own.
  * size_mm: box width and height in mm when the pixel spacing is known.
  * location text: "right upper zone", "right lung base", "right lower lobe", "right upper zone" for a lesion in
    the right lung on a radiograph, "left lobe of liver" (liver lobes approximated: see `_liver_lobe`),
    "lower pole of left kidney", else the host's name; "near ..." for the nearest-organ fallback.

Grid: masks arrive on the linking grid (`OrganMasks.cell` image pixels per cell, `data_gen.segment.grid`); boxes
stay in image pixels and every count is in image pixels: each cell's coverage times the box pixels it holds
(`grid_box_counts`); extents, distances and the liver's split column are read off the cells a mask touches.
With cell 1 (images up to `masks.grid_max_side`) everything is exactly per pixel.

Speed: the only work over the masks is counting mask cells inside the boxes (crops of all K masks at once, or
summed-area tables when the boxes cover much of the image: `data_gen.segment.grid`). Mask areas and extents are
computed only for the organs that need them (IoU ties, hosts, midline).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from data_gen.errors import ConfigError
from data_gen.segment import names as organ_names
from data_gen.segment.grid import SAT_CHUNK, full_value, grid_box_counts, grid_shape, pixel_ranges
from data_gen.segment.grid import box_mask_counts  # noqa: F401  (part of this module's interface)
from data_gen.types import LinkResult, LoadedImage, OrganMasks
from medclm_jax.config_file import settings_from

TIE_EPS = 1e-6
MAX_DISTANCE_FRACTION = 0.05  # nearest-organ radius without pixel spacing, as a share of the image's long side
AXIAL_MODALITIES = ("ct", "mri", "mr", "pet", "pt", "nm", "spect")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "XTABLE LATERAL")  # DICOM ViewPosition of lateral radiographs
# Share of the liver's area (from the patient's right) taken as the right lobe on one slice: an approximation of
# Cantlie's line (the right lobe is about 60% of the liver), used only for the location text.
LIVER_RIGHT_LOBE_FRACTION = 0.6
_ZONE_FROM_NAME = (("apical", "upper"), ("upper", "upper"), ("mid", "middle"), ("middle", "middle"),
                   ("lower", "lower"), ("base", "lower"))


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    """The `link` config section (rules 3-5 above), read once by `from_config`; the fields hold its defaults.

    Attributes:
      min_score: containment a host needs: the fraction of the lesion box's pixels its mask covers.
      max_distance_mm: nearest-organ radius in mm when the pixel spacing is known (rule 5).
      max_distance_px: nearest-organ radius in pixels when it is not; None: `MAX_DISTANCE_FRACTION` of the
        image's long side (`max_distance`).
      prefer_specific: rule 4 (a lobe/zone over the whole lung when both contain the lesion).
      specific_tolerance: rule 4's containment margin.
      overlay_tolerance: rule 3's containment margin (radiographs only).
    """

    min_score: float = 0.1
    max_distance_mm: float = 30.0
    max_distance_px: Optional[float] = None
    prefer_specific: bool = True
    specific_tolerance: float = 0.1
    overlay_tolerance: float = 0.2

    @classmethod
    def from_config(cls, cfg: Any) -> "LinkSettings":
        """Reads the `link` ConfigDict, a dict, a LinkSettings or None (the defaults).

        Raises:
          ConfigFileError: a key that is not a field (the message names the nearest) or a value of the wrong type.
          ConfigError: a negative threshold, or a containment share above 1.
        """
        s = settings_from(cls, cfg, "link")
        for name in ("min_score", "max_distance_mm", "max_distance_px", "specific_tolerance", "overlay_tolerance"):
            value = getattr(s, name)
            if value is not None and value < 0:
                raise ConfigError(f"link.{name} must be >= 0, got {value}")
        for name in ("min_score", "specific_tolerance", "overlay_tolerance"):  # shares of the box's pixels
            if getattr(s, name) > 1:
                raise ConfigError(f"link.{name} is a share of the box's pixels, in [0, 1]; got {getattr(s, name)}")
        return s

    def max_distance(self, height: int, width: int, spacing: Optional[tuple[float, float]]) -> float:
        """The nearest-organ radius for an image: mm with a pixel spacing, else pixels (rule 5)."""
        if spacing:
            return self.max_distance_mm
        if self.max_distance_px is not None:
            return self.max_distance_px
        return MAX_DISTANCE_FRACTION * max(height, width)


# ---- per-organ facts, computed on demand -------------------------------------------------------------------------

class _OrganFacts:
    """Areas and extents of organ masks in image pixels, each computed once and only when asked for.

    Masks on a grid of `cell`-pixel cells (coverage, `data_gen.segment.grid`): an area is the cells' coverage x
    cell^2, an extent runs over the cells the mask touches, its end cells read as `_extent` says.
    """

    def __init__(self, masks: np.ndarray, cell: int = 1, image_shape: Optional[tuple[int, int]] = None,
                 bounds: Optional[np.ndarray] = None):
        self.masks = masks
        self.bounds = bounds  # `OrganMasks.bounds`: extents read only inside them
        self.cell = cell
        self.image_shape = image_shape or (masks.shape[1] * cell, masks.shape[2] * cell)
        self._area: dict[int, float] = {}
        self._rows: dict[int, tuple[int, int]] = {}
        self._cols: dict[int, tuple[int, int]] = {}

    def area(self, k: int) -> float:
        if k not in self._area:
            cells = np.count_nonzero(self.masks[k]) if self.masks.dtype == bool else \
                self.masks[k].sum(dtype=np.int64) / full_value(self.masks)
            self._area[k] = float(cells) * self.cell ** 2
        return self._area[k]

    def _crop(self, k: int) -> tuple[np.ndarray, int, int]:
        """Mask k inside its bounding box when known, with the box's first row and column."""
        if self.bounds is None:
            return self.masks[k], 0, 0
        r0, r1, c0, c1 = (int(v) for v in self.bounds[k])
        return self.masks[k, r0:r1, c0:c1], r0, c0

    def _extent(self, lines: np.ndarray, size: int, offset: int) -> tuple[int, int]:
        """First and last pixel line of a mask whose cell lines (rows, or columns transposed) are `lines`. In an
        end line of cells, the mask reaches as many pixel lines into it as the coverage of its densest cell needs
        at least (a line holds `cell` of its pixels; a tenth of a line is left for JPEG noise): a flat border half
        way through a row of 2-pixel cells starts at the cell's second pixel row, a pointed apex at its first."""
        touched = np.flatnonzero(lines.any(axis=1))
        if not len(touched):
            return 0, -1
        full = full_value(self.masks)
        depth = [max(1, math.ceil(int(lines[i].max()) / full * self.cell - 0.1)) for i in (touched[0], touched[-1])]
        first, last = int(touched[0]) + offset, int(touched[-1]) + offset
        return (first + 1) * self.cell - depth[0], min(size, last * self.cell + depth[1]) - 1

    def rows(self, k: int) -> tuple[int, int]:
        """First and last pixel row holding the mask (inclusive)."""
        if k not in self._rows:
            plane, r0, _ = self._crop(k)
            self._rows[k] = self._extent(plane, self.image_shape[0], r0)
        return self._rows[k]

    def cols(self, k: int) -> tuple[int, int]:
        """First and last pixel column holding the mask (inclusive)."""
        if k not in self._cols:
            plane, _, c0 = self._crop(k)
            self._cols[k] = self._extent(plane.T, self.image_shape[1], c0)
        return self._cols[k]


# ---- choosing the host ---------------------------------------------------------------------------------------------

def _iou(inter: float, box_area: int, mask_area: float) -> float:
    union = box_area + mask_area - inter
    return inter / union if union > 0 else 0.0


def _best(cands: list[int], score: np.ndarray, names: list[str], inter: np.ndarray, box_area: int,
          facts: _OrganFacts) -> int:
    """Highest score; ties (TIE_EPS) -> the most specific along part-of -> highest IoU -> name (rule 2)."""
    top = max(score[k] for k in cands)
    tied = [k for k in cands if score[k] >= top - TIE_EPS]
    if len(tied) > 1:  # drop every tied structure that has a tied part: "right lung" yields to its zone
        tied = [k for k in tied if not any(organ_names.is_part_of(names[j], names[k]) for j in tied if j != k)]
    if len(tied) > 1:
        ious = {k: _iou(float(inter[k]), box_area, facts.area(k)) for k in tied}
        best_iou = max(ious.values())
        tied = [k for k in tied if ious[k] >= best_iou - 1e-12]
    return min(tied, key=lambda k: names[k])


def _choose(containment: np.ndarray, inter: np.ndarray, box_area: int, names: list[str], eligible: np.ndarray,
            overlay: np.ndarray, facts: _OrganFacts, min_score: float, prefer_specific: bool, tolerance: float,
            overlay_tolerance: Optional[float]) -> Optional[int]:
    """The host organ index (rules 2-3), or None below `min_score`. `overlay_tolerance` None: no overlay rule."""
    cands = [k for k in range(len(names)) if eligible[k]]
    if not cands:
        return None
    top = max(containment[k] for k in cands)
    if top < min_score:
        return None
    if overlay_tolerance is not None:
        floor = max(min_score, top - overlay_tolerance)
        organs = [k for k in cands if not overlay[k] and containment[k] >= floor]
        if organs:
            cands = organs
    chosen = _best(cands, containment, names, inter, box_area, facts)
    top = containment[chosen]
    while prefer_specific:
        parts = [k for k in cands if containment[k] >= min_score and containment[k] >= top - tolerance
                 and organ_names.is_part_of(names[k], names[chosen])]
        if not parts:
            break
        chosen = _best(parts, containment, names, inter, box_area, facts)
    return chosen


def _nearest(rng: np.ndarray, box: np.ndarray, masks: np.ndarray, eligible: np.ndarray,
             spacing: Optional[tuple[float, float]], max_dist: float, names: list[str],
             spec: np.ndarray, cell: int = 1) -> Optional[tuple[int, float, Optional[float]]]:
    """Nearest eligible organ within `max_dist` (mm with spacing, else px): (k, distance px, distance mm), from
    the centres of the mask's cells (its pixels when `cell` is 1)."""
    _, h, w = masks.shape
    sr, sc = (spacing if spacing else (1.0, 1.0))
    reach_r, reach_c = int(math.ceil(max_dist / sr)) + 1, int(math.ceil(max_dist / sc)) + 1
    r0, r1, c0, c1 = rng.tolist()
    wr0, wr1 = max(0, r0 - reach_r) // cell, min(h, -(-(r1 + reach_r) // cell))
    wc0, wc1 = max(0, c0 - reach_c) // cell, min(w, -(-(c1 + reach_c) // cell))
    x1, y1, x2, y2 = box.tolist()
    yc = (np.arange(wr0, wr1) + 0.5) * cell
    xc = (np.arange(wc0, wc1) + 0.5) * cell
    dy = np.maximum(np.maximum(y1 - yc, yc - y2), 0.0)[:, None]
    dx = np.maximum(np.maximum(x1 - xc, xc - x2), 0.0)[None, :]
    d_px = np.sqrt(dy ** 2 + dx ** 2).astype(np.float32)
    d_metric = np.sqrt((dy * sr) ** 2 + (dx * sc) ** 2).astype(np.float32) if spacing else d_px
    best: list[tuple[float, int, str, int, float]] = []
    ks = np.flatnonzero(eligible)
    for s in range(0, len(ks), SAT_CHUNK):
        idx = ks[s:s + SAT_CHUNK]
        win = masks[idx, wr0:wr1, wc0:wc1]
        dm = np.where(win, d_metric[None], np.inf).reshape(len(idx), -1)
        arg = dm.argmin(axis=1)
        for j, k in enumerate(idx.tolist()):
            dist = float(dm[j, arg[j]])
            if dist <= max_dist:
                dpx = float(np.where(win[j], d_px, np.inf).min())
                best.append((round(dist, 6), -int(spec[k]), names[k], k, dpx))
    if not best:
        return None
    dist, _, _, k, dpx = min(best)
    return k, dpx, (dist if spacing else None)


# ---- location ------------------------------------------------------------------------------------------------------

def _midline(names: list[str], facts: _OrganFacts, width: int) -> float:
    """Column of the patient's midline (see the module docstring)."""
    extents = []
    for lung in ("right lung", "left lung"):
        ks = [k for k, n in enumerate(names) if n == lung or organ_names.is_part_of(n, lung)]
        cols = [facts.cols(k) for k in ks]
        cols = [c for c in cols if c[1] >= c[0]]
        if cols:
            extents.append((min(c[0] for c in cols), max(c[1] for c in cols)))
    if len(extents) == 2:
        (a0, a1), (b0, b1) = extents
        if a1 < b0 or b1 < a0:  # the two lungs side by side: halfway between their medial borders
            return (min(a1, b1) + max(a0, b0) + 1) / 2.0
    index = {n: k for k, n in enumerate(names)}
    for n in ("body", "lungs"):
        if n in index:
            c0, c1 = facts.cols(index[n])
            if c1 >= c0:  # an empty mask says nothing about the midline
                return (c0 + c1 + 1) / 2.0
    return width / 2.0


def _side_of_column(x: float, midline: float, col_direction: str) -> str:
    image_left = x < midline
    if str(col_direction).upper() == "R":  # columns run towards the patient's right: image-left is patient-left
        return "left" if image_left else "right"
    return "right" if image_left else "left"


def _laterality(organ: Optional[str], box: np.ndarray, midline: float, col_direction: str,
                lateral_view: bool = False) -> Optional[str]:
    named = organ_names.side(organ) if organ else None
    if named or lateral_view:  # a lateral radiograph's columns run anterior-posterior: no side from geometry
        return named
    x1, _, x2, _ = box.tolist()
    cx = (x1 + x2) / 2.0
    if x1 < midline < x2 and abs(cx - midline) <= 0.25 * (x2 - x1):
        return "midline"
    return _side_of_column(cx, midline, col_direction)


def _zone_from_name(organ: str) -> Optional[str]:
    words = organ.split()
    if "zone" not in words and "base" not in words:
        return None
    for word, zone in _ZONE_FROM_NAME:
        if word in words:
            return zone
    return None


def _zone(k: int, organ: str, box: np.ndarray, facts: _OrganFacts) -> str:
    named = _zone_from_name(organ)
    if named:
        return named
    top, bottom = facts.rows(k)
    cy = (box[1] + box[3]) / 2.0
    t = (cy - top) / max(bottom + 1 - top, 1)
    return "upper" if t < 1 / 3 else ("middle" if t < 2 / 3 else "lower")


def _liver_lobe(k: int, box: np.ndarray, masks: np.ndarray, col_direction: str, cell: int = 1) -> str:
    """'right lobe of liver' / 'left lobe of liver': the box centre against the column where
    LIVER_RIGHT_LOBE_FRACTION of the liver's area, counted from the patient's right, is reached."""
    col_area = masks[k].sum(axis=0).astype(np.float64)
    if str(col_direction).upper() == "R":
        col_area = col_area[::-1]
    cum = np.cumsum(col_area)
    split = float(np.searchsorted(cum, LIVER_RIGHT_LOBE_FRACTION * cum[-1])) * cell
    cx = (box[0] + box[2]) / 2.0
    if str(col_direction).upper() == "R":
        cx = masks.shape[2] * cell - cx
    return "right lobe of liver" if cx < split else "left lobe of liver"


_ZONE_WORD = {"upper": "upper", "middle": "mid", "lower": "lower"}
_BILATERAL = {"body", "bone", "skeleton", "thoracic cage", "ribs", "breasts", "diaphragm", "pelvis"}


def _location(organ: str, k: int, box: np.ndarray, laterality: Optional[str], zone: Optional[str], masks: np.ndarray,
              col_direction: str, cell: int = 1) -> str:
    if organ.endswith(" zone of lung"):
        return organ[: -len(" of lung")]
    if organ.endswith(" lobe of lung"):
        return organ[: -len(" of lung")]
    if organ in ("right lung", "left lung", "lungs"):
        side = organ_names.side(organ) or laterality
        if zone:
            prefix = f"{side} " if side in ("right", "left") else ""
            return f"{prefix}{_ZONE_WORD[zone]} zone"
        return f"{side} lung" if side in ("right", "left") else "lungs"
    if organ == "liver":
        return _liver_lobe(k, box, masks, col_direction, cell)
    if organ in ("right kidney", "left kidney") and zone:
        return f"{zone} pole of {organ}" if zone != "middle" else f"interpolar region of {organ}"
    if organ in _BILATERAL and laterality in ("right", "left"):
        return f"{organ} ({laterality} side)"
    return organ


# ---- entry point ---------------------------------------------------------------------------------------------------

def link_lesions(boxes_px: np.ndarray, masks: OrganMasks, image: LoadedImage, cfg: Any = None) -> list[LinkResult]:
    """Host organ and location of every lesion box of one image.

    Args:
      boxes_px: float `[N, 4]` pixel xyxy boxes on `image.pixels`' grid.
      masks: the image's organ masks (bool `[K, h, w]` on the image's linking grid of `masks.cell` pixel cells,
        display names).
      image: the loaded image (size, modality, `spacing_mm` (row, col), `col_direction`).
      cfg: `LinkSettings`, or the `link` ConfigDict / dict it is read from; None: the defaults.

    Returns:
      One LinkResult per box, in order.
    """
    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    h, w = image.height, image.width
    names = list(masks.names)
    k_all = len(names)
    cell = int(masks.cell) if k_all else 1
    m = masks.masks if k_all else np.zeros((0, h, w), bool)
    if k_all and m.shape[1:] != grid_shape(h, w, cell):
        raise ValueError(f"masks are {m.shape[1:]} at {cell} pixel(s) per cell, but the image is {(h, w)} (a "
                         f"{grid_shape(h, w, cell)} grid); load_masks resamples them")
    settings = LinkSettings.from_config(cfg)
    min_score = settings.min_score
    spacing = tuple(float(s) for s in image.spacing_mm) if image.spacing_mm else None
    max_dist = settings.max_distance(h, w, spacing)
    radiograph = str(image.modality).lower() not in AXIAL_MODALITIES
    lateral_view = str(image.view or "").strip().upper() in LATERAL_VIEWS

    ranges = pixel_ranges(boxes, h, w)
    box_area = (ranges[:, 1] - ranges[:, 0]) * (ranges[:, 3] - ranges[:, 2])
    inter = grid_box_counts(m, ranges, cell, bounds=masks.bounds if k_all else None)
    containment = inter / box_area[:, None]
    spec = np.asarray([organ_names.specificity(n) for n in names], np.int64)
    eligible = np.asarray([organ_names.is_host_candidate(n) for n in names], bool)
    overlay = np.asarray([organ_names.is_overlay(n) for n in names], bool)
    facts = _OrganFacts(m, cell, (h, w), masks.bounds if k_all else None)
    midline: Optional[float] = None

    results = []
    for i in range(len(boxes)):
        box = boxes[i]
        k = _choose(containment[i], inter[i], int(box_area[i]), names, eligible, overlay, facts, min_score,
                    settings.prefer_specific, settings.specific_tolerance,
                    settings.overlay_tolerance if radiograph else None) if k_all else None
        method, score, d_px, d_mm = "containment", 0.0, 0.0, None
        if k is not None:
            score = float(containment[i, k])
        elif k_all and eligible.any():
            near = _nearest(ranges[i], box, m, eligible, spacing, max_dist, names, spec, cell)
            if near is not None:
                k, d_px, d_mm = near
                method = "nearest"
        if midline is None:
            midline = _midline(names, facts, w)
        size = None
        if spacing:
            size = (round((box[2] - box[0]) * spacing[1], 1), round((box[3] - box[1]) * spacing[0], 1))
        if k is None:
            lat = _laterality(None, box, midline, image.col_direction, lateral_view)
            loc = f"{lat} side" if lat in ("right", "left") else (lat or "")
            results.append(LinkResult(organ=organ_names.UNKNOWN, score=0.0, method="none", laterality=lat,
                                      zone=None, location=loc, size_mm=size))
            continue
        organ = names[k]
        lat = _laterality(organ, box, midline, image.col_direction, lateral_view)
        zone = _zone(k, organ, box, facts) if radiograph else _zone_from_name(organ)
        loc = _location(organ, k, box, lat, zone, m, image.col_direction, cell)
        if method == "nearest":
            loc = f"near {loc}"
        results.append(LinkResult(organ=organ, score=score, method=method, distance_px=round(d_px, 3),
                                  distance_mm=(round(d_mm, 3) if d_mm is not None else None), laterality=lat,
                                  zone=zone, location=loc, size_mm=size))
    return results
