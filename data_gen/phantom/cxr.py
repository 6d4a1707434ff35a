"""Synthetic frontal chest radiographs: thorax, lungs, heart, diaphragm, spine, ribs, and visible lesions.

Display convention (as on a PA film): image-left is the patient's right, so the heart bulges to the image right
and the right hemidiaphragm (image left) sits higher. Brightness is attenuation in [0, 1] (1 = dense/white).

Lesion classes and how they look:
  * Nodule: small round bright opacity (6-13 px radius at 512), soft edge, inside a lung.
  * Mass: large lobulated opacity (26-42 px), inside a lung.
  * Pleural effusion: basal fluid with a meniscus climbing laterally; it fills the costophrenic angle and
    hides the hemidiaphragm contour.
  * Consolidation: patchy opacity confined to the lung with dark branching air bronchograms.
Each lesion's box is the true extent of its drawn region (the half-intensity outline for soft edges).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from data_gen.phantom.shapes import (blob_radius, box_of, ellipse, ellipse_radius, grid, sample_point,
                                     segment_distance, smooth_noise, soft_edge)

CXR_CLASSES = ("Nodule", "Mass", "Pleural effusion", "Consolidation")
CXR_ORGANS = ("right lung", "left lung", "heart", "right upper zone lung", "right mid zone lung",
              "right lower zone lung", "left upper zone lung", "left mid zone lung", "left lower zone lung")


@dataclasses.dataclass
class Lesion:
    """A drawn lesion: class, pixel-edge box `(x1, y1, x2, y2)` and the organ it was placed in."""

    label: str
    box: tuple[int, int, int, int]
    host: str


@dataclasses.dataclass
class Radiograph:
    """image: float32 `[H, W]` attenuation in [0, 1]; organs: CXAS name -> bool `[H, W]`."""

    image: np.ndarray
    organs: dict[str, np.ndarray]
    lesions: list[Lesion]


def plan_findings(rng: np.random.Generator, no_finding_rate: float = 0.15) -> list[str]:
    """Classes for one image: none ("No finding") with `no_finding_rate`, else 1-3 distinct classes."""
    if rng.random() < no_finding_rate:
        return []
    k = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    return [CXR_CLASSES[i] for i in sorted(rng.choice(len(CXR_CLASSES), size=k, replace=False))]


def _anatomy(rng, yy, xx):
    """Normal chest: returns (image, lungs {side: mask}, heart, body, dome(x) per side, hila)."""
    s = rng.uniform(0.93, 1.04)
    cx0 = 0.5 + rng.uniform(-0.015, 0.015)
    dy = rng.uniform(-0.015, 0.015)
    body = ellipse(yy, xx, 0.60 + dy, cx0, 0.56, 0.45 * s, power=2.6) | ((np.abs(xx - cx0) < 0.09) & (yy < 0.2))
    dome_r = 0.70 + dy + rng.uniform(-0.025, 0.025)
    domes = {"right": dome_r, "left": dome_r + rng.uniform(0.01, 0.035)}
    hf = rng.uniform(0.9, 1.15)
    heart_r = ellipse_radius(yy, xx, dome_r - 0.095, cx0 + 0.06, 0.11 * hf, 0.135 * hf, angle=-0.35)
    heart = (heart_r <= 1.0) & (yy < domes["left"])
    knob = ellipse(yy, xx, 0.33 + dy, cx0 + 0.045, 0.028, 0.028)
    excluded = ndimage.binary_dilation(heart | knob, iterations=2)

    lungs, dome_curves = {}, {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cx, rx = cx0 + sign * 0.175 * s, 0.145 * s
        t = (xx - cx) / rx
        dome_curves[side] = domes[side] + 0.075 * t ** 2
        m = ellipse(yy, xx, 0.47 + dy, cx, 0.36 * s, rx, power=2.3)
        m &= yy <= dome_curves[side]
        m &= (xx <= cx0 - 0.04) if sign < 0 else (xx >= cx0 + 0.04)
        lungs[side] = m & ~excluded & body

    img = np.full(yy.shape, 0.04, np.float32)
    img[body] = 0.50
    below = body & (yy > np.where(xx < cx0, dome_curves["right"], dome_curves["left"]))
    img[below] = 0.58
    img += 0.03 * smooth_noise(rng, yy.shape, 24) * body
    spine = body & (np.abs(xx - cx0) < 0.028)
    img[spine] += 0.15 + 0.03 * np.sin(yy[spine] * 2 * np.pi / 0.045)
    hila = {"right": (0.46 + dy, cx0 - 0.085), "left": (0.45 + dy, cx0 + 0.085)}
    vessels = 0.02 * smooth_noise(rng, yy.shape, 5)
    for side, m in lungs.items():  # dark lung fields, denser toward the hila
        hy, hx = hila[side]
        hilar = 0.10 * np.exp(-np.hypot(yy[m] - hy, xx[m] - hx) / 0.07)
        img[m] = 0.16 + hilar + vessels[m]
    shadow = (heart_r <= 1.0) & body
    img[shadow] = np.maximum(img, 0.46 + 0.18 * soft_edge(heart_r, 0.1))[shadow]
    img[knob & body] = np.maximum(img[knob & body], 0.55)
    u = np.abs(xx - cx0) / 0.42
    spacing = 0.058 * s  # ten posterior ribs: faint curved bands
    t = (yy - (0.14 + dy - 0.03 * u + 0.10 * u ** 2)) / spacing
    k = np.rint(t)
    band = (np.abs(t - k) * spacing < 0.009) & (k >= 0) & (k < 10) & (u > 0.08) & (u < 1.05) & body
    img[band] += 0.045
    for sign in (-1.0, 1.0):  # clavicles
        d = segment_distance(yy, xx, (0.20 + dy, cx0 + sign * 0.04), (0.14 + dy, cx0 + sign * 0.30), 0.02)
        img[(d < 0.012) & body] += 0.12
    return img, lungs, heart, body, dome_curves, hila


def _zones(lung: np.ndarray, side: str) -> dict[str, np.ndarray]:
    rows = np.flatnonzero(lung.any(axis=1))
    top, bottom = rows[0], rows[-1] + 1
    cuts = [top, top + (bottom - top) / 3.0, top + 2 * (bottom - top) / 3.0, bottom]
    r = np.arange(lung.shape[0])[:, None]
    out = {}
    for name, a, b in zip(("upper", "mid", "lower"), cuts[:-1], cuts[1:]):
        out[f"{side} {name} zone lung"] = lung & (r >= a) & (r < b)
    return out


def _draw_lesion(rng, label, side, yy, xx, lungs, free, heart, body, dome_curves, hila):
    """One candidate lesion: (region it occupies, function that draws it on the image). `free` is where its
    centre may go (the lung minus earlier lesions)."""
    size = yy.shape[0]
    px, scale = 1.0 / size, size / 512.0
    lung = lungs[side]
    if label == "Nodule":
        r = max(rng.uniform(6, 13) * scale, 3.0) * px
        cy, cx = sample_point(rng, free, margin=r * size + 2)
        rad = blob_radius(yy, xx, cy, cx, r)
        return rad <= 1.0, lambda img: img + 0.30 * soft_edge(rad, 0.3)
    if label == "Mass":
        r = rng.uniform(26, 42) * scale * px
        cy, cx = sample_point(rng, free, margin=0.9 * r * size)
        harm = [(0.16, 3, rng.uniform(0, 6.3)), (0.09, 5, rng.uniform(0, 6.3)), (0.05, 7, rng.uniform(0, 6.3))]
        rad = blob_radius(yy, xx, cy, cx, r, harm)
        texture = 1.0 + 0.08 * smooth_noise(rng, yy.shape, max(int(6 * scale), 2))
        return rad <= 1.0, lambda img: img + 0.30 * soft_edge(rad, 0.1) * texture
    if label == "Pleural effusion":
        rows = np.flatnonzero(lung.any(axis=1))
        cols = np.flatnonzero(lung.any(axis=0))
        top, bottom = (rows[0] + 0.5) * px, (rows[-1] + 0.5) * px
        c0, c1 = cols[0] * px, (cols[-1] + 1) * px
        frac = rng.uniform(0.15, 0.28)
        level = bottom - frac * (bottom - top)
        lat = np.clip((c1 - xx) / (c1 - c0) if side == "right" else (xx - c0) / (c1 - c0), 0.0, 1.0)
        surface = level - 0.35 * frac * (bottom - top) * lat ** 2  # meniscus: climbs along the lateral wall
        column = (xx >= c0 - 2 * px) & (xx <= c1 + 2 * px)
        region = (yy > surface) & (yy <= dome_curves[side] + 0.03) & column & body & ~heart
        fluid = np.where(region, np.clip((yy - surface) / (8 * px), 0.0, 1.0), 0.0)
        return region & (fluid >= 0.5), lambda img: img * (1.0 - fluid) + 0.56 * fluid
    if label == "Consolidation":
        r = rng.uniform(30, 50) * scale * px
        cy, cx = sample_point(rng, free, margin=10 * scale)
        harm = [(0.2, 2, rng.uniform(0, 6.3)), (0.1, 3, rng.uniform(0, 6.3))]
        rad = blob_radius(yy, xx, cy, cx, r, harm)
        patch = np.clip(0.65 + 0.45 * smooth_noise(rng, yy.shape, max(int(10 * scale), 2)), 0.0, 1.0)
        opacity = 0.24 * patch * soft_edge(rad, 0.3) * lung
        hy, hx = hila[side]
        reach = r / max(float(np.hypot(hy - cy, hx - cx)), r)
        tip = (cy + 0.6 * (hy - cy) * reach, cx + 0.6 * (hx - cx) * reach)
        bronchi = np.zeros_like(yy)
        for j in range(3):  # a trunk toward the hilum and two branches: dark air bronchograms
            ang = rng.uniform(0, 2 * np.pi)
            end = (cy + 0.7 * r * np.sin(ang), cx + 0.7 * r * np.cos(ang))
            dist = segment_distance(yy, xx, tip if j == 0 else (cy, cx), end, 2 * px)
            bronchi = np.maximum(bronchi, np.clip(1.0 - dist / (1.6 * px), 0, 1))
        opacity *= 1.0 - 0.85 * bronchi
        return (opacity > 0.08) & lung, lambda img: img + opacity
    raise ValueError(f"unknown CXR lesion class {label!r}; expected one of {CXR_CLASSES}")


def chest_radiograph(rng: np.random.Generator, size: int, labels: list[str]) -> Radiograph:
    """Draw one radiograph with the given lesion classes (empty = "No finding").

    Lesions of one image never share pixels or boxes (a box always frames one finding). A lesion that finds no
    free place in 20 tries is left out (it is then absent from `lesions` too).

    Args:
      rng: the image's own generator (all randomness comes from it).
      size: height = width in pixels.
      labels: lesion classes from `CXR_CLASSES`.
    """
    yy, xx = grid(size, size)
    img, lungs, heart, body, dome_curves, hila = _anatomy(rng, yy, xx)
    gap = max(int(round(4 * size / 512)), 1)
    occupied = np.zeros(yy.shape, bool)  # boxes of the lesions drawn so far, widened by `gap`
    lesions: list[Lesion] = []
    for label in sorted(labels, key=lambda c: c != "Pleural effusion"):  # the effusion claims the base first
        first = str(rng.choice(["right", "left"]))
        placed = None
        for attempt in range(20):  # ten tries in one lung, then ten in the other
            side = first if attempt < 10 else ("left" if first == "right" else "right")
            free = lungs[side] & ~occupied
            if not free.any():
                continue
            region, draw = _draw_lesion(rng, label, side, yy, xx, lungs, free, heart, body, dome_curves, hila)
            box = box_of(region)
            if box is not None and not occupied[box[1]:box[3], box[0]:box[2]].any():
                placed = box, draw, side
                break
        if placed is None:
            continue
        box, draw, side = placed
        img = draw(img)
        occupied[max(box[1] - gap, 0):box[3] + gap, max(box[0] - gap, 0):box[2] + gap] = True
        lesions.append(Lesion(label, box, f"{side} lung"))

    img = ndimage.gaussian_filter(img, 0.8 * size / 512)
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    organs = {"right lung": lungs["right"], "left lung": lungs["left"], "heart": heart}
    for side in ("right", "left"):
        organs.update(_zones(lungs[side], side))
    organs = {name: organs[name] for name in CXR_ORGANS}
    return Radiograph(np.clip(img, 0.0, 1.0).astype(np.float32), organs, lesions)
