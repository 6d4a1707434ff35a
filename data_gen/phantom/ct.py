"""Synthetic axial CT slices in HU: a chest level (lungs with lobes, heart, aorta) and an upper-abdomen level
(liver, spleen, kidneys, stomach, aorta), with lesions of known class and extent.

Display convention as DeepLesion's PNG slices and radiological viewing: row 0 anterior, image-left is the
patient's right (so the liver is on the image left). HU: air -1000, lung -850, fat -100, soft tissue/muscle 40,
liver 60, spleen 45, kidney 30, blood (non-contrast) 45, bone 700 (cortex; 250 cancellous).

Lesions (type = DeepLesion coarse lesion type):
  * lung nodule (5): round soft-tissue opacity (40 HU, 4-11 px radius at 512) in a lung lobe;
  * liver cyst (4): round, sharply marginated, water density (~0 HU: dark in the liver);
  * kidney cyst (6): round, ~0 HU, inside a kidney;
  * liver mass (4): lobulated, heterogeneous, hyperdense (~110 HU) in the liver.
Boxes are the true pixel extents of the drawn lesion (clipped to its host organ).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from data_gen.phantom.shapes import blob_radius, box_of, ellipse, ellipse_radius, grid, sample_point, smooth_noise

CT_CLASSES = ("lung nodule", "liver cyst", "kidney cyst", "liver mass")
CT_TYPES = {"lung nodule": 5, "liver cyst": 4, "kidney cyst": 6, "liver mass": 4}
# TotalSegmentator v2 class names written as masks (every file is written for every slice; absent = empty).
CT_ORGANS = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
             "lung_lower_lobe_right", "heart", "aorta", "liver", "spleen", "kidney_left", "kidney_right", "stomach")
HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "soft": 40.0, "liver": 60.0, "spleen": 45.0, "kidney": 30.0,
      "blood": 45.0, "bone": 700.0, "marrow": 250.0, "water": 5.0, "fluid": 10.0}


@dataclasses.dataclass
class CtLesion:
    """label: one of CT_CLASSES; box: pixel-edge `(x1, y1, x2, y2)`; host: TotalSegmentator organ name;
    diameters: (long, short) in pixels, measured on the drawn region; recist: their endpoints."""

    label: str
    box: tuple[int, int, int, int]
    host: str
    diameters: tuple[float, float]
    recist: tuple[float, ...]  # x1, y1, x2, y2 (long axis), x3, y3, x4, y4 (short axis), pixels


@dataclasses.dataclass
class CtSlice:
    """hu: int16 `[H, W]`; region: 'chest' or 'abdomen'; organs: TotalSegmentator name -> bool `[H, W]`."""

    hu: np.ndarray
    region: str
    organs: dict[str, np.ndarray]
    lesions: list[CtLesion]


def plan_findings(rng: np.random.Generator, region: str) -> list[str]:
    """Lesion classes for one slice (DeepLesion has no negatives: at least one)."""
    if region == "chest":
        return ["lung nodule"] * int(rng.choice([1, 2], p=[0.7, 0.3]))
    k = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    pool = ("liver cyst", "kidney cyst", "liver mass")
    return [pool[i] for i in sorted(rng.choice(3, size=k, replace=False))]


def _trunk(rng, yy, xx, region):
    """Body outline, subcutaneous fat, muscle wall, spine and ribs (common to both levels)."""
    cy, cx = 0.53 + rng.uniform(-0.01, 0.01), 0.5 + rng.uniform(-0.01, 0.01)
    ry, rx = (0.30, 0.41) if region == "chest" else (0.31, 0.38)
    s = rng.uniform(0.94, 1.04)
    ry, rx = ry * s, rx * s
    hu = np.full(yy.shape, HU["air"], np.float32)
    body_r = ellipse_radius(yy, xx, cy, cx, ry, rx, power=2.2)
    body = body_r <= 1.0
    hu[body] = HU["fat"]
    inner = body_r <= 1.0 - rng.uniform(0.05, 0.08)
    hu[inner] = HU["soft"]
    cavity = body_r <= 0.84
    hu[cavity] = HU["fat"] if region == "abdomen" else HU["soft"]
    vert = ellipse_radius(yy, xx, cy + 0.19 * s, cx, 0.045, 0.05)
    hu[vert <= 1.0] = HU["bone"]
    hu[vert <= 0.8] = HU["marrow"]
    hu[ellipse(yy, xx, cy + 0.255 * s, cx, 0.018, 0.016)] = HU["fluid"]  # spinal canal
    hu[ellipse(yy, xx, cy + 0.29 * s, cx, 0.02, 0.008)] = HU["bone"]  # spinous process
    n_ribs = 9 if region == "chest" else 5
    for k in range(n_ribs):  # rib cross-sections along the wall
        a = np.pi * (0.15 + 0.7 * k / (n_ribs - 1)) if region == "chest" else np.pi * (0.55 + 0.1 * k)
        for sign in (-1, 1):
            ry_k, rx_k = 0.9 * ry, 0.9 * rx
            hu[ellipse(yy, xx, cy + ry_k * np.sin(a), cx + sign * rx_k * np.cos(a), 0.012, 0.02,
                       angle=sign * a)] = HU["bone"]
    return hu, body, cavity, (cy, cx, ry, rx)


def _chest(rng, yy, xx, hu, cavity, geo):
    cy, cx, ry, rx = geo
    organs = {}
    j = lambda a: rng.uniform(-a, a)  # noqa: E731 - per-slice anatomical variation
    hf = rng.uniform(0.85, 1.08)
    heart_r = ellipse_radius(yy, xx, cy - 0.05 + j(0.02), cx + 0.06 + j(0.02), 0.105 * hf, 0.125 * hf,
                             angle=0.5 + j(0.2))
    heart = heart_r <= 1.0
    hu[(heart_r <= 1.08) & cavity] = HU["fat"]  # pericardial fat
    hu[heart] = HU["blood"]
    (ay, ax), (dy_, dx_) = (cy - 0.13 + j(0.01), cx - 0.035 + j(0.01)), (cy + 0.12 + j(0.01), cx + 0.055 + j(0.01))
    ra, rd = rng.uniform(0.03, 0.038), rng.uniform(0.024, 0.03)
    asc, desc = ellipse(yy, xx, ay, ax, ra, ra), ellipse(yy, xx, dy_, dx_, rd, rd)
    hu[ellipse(yy, xx, ay, ax, ra + 0.01, ra + 0.01) | ellipse(yy, xx, dy_, dx_, rd + 0.008, rd + 0.008)] = HU["fat"]
    hu[asc | desc] = HU["blood"]
    hu[ellipse(yy, xx, cy - 0.27, cx, 0.02, 0.04)] = HU["bone"]  # sternum
    organs["heart"], organs["aorta"] = heart, asc | desc
    mediastinum = ndimage.binary_dilation(heart | asc | desc, iterations=6) | (np.abs(xx - cx) < 0.05)
    texture = 25.0 * smooth_noise(rng, yy.shape, 4)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lf = rng.uniform(0.92, 1.06)
        lung = ellipse(yy, xx, cy - 0.005 + j(0.01), cx + sign * 0.19, 0.24 * lf, 0.17 * lf, power=2.3)
        lung &= cavity & ~mediastinum
        hu[lung] = (HU["lung"] + texture)[lung]
        lat = np.clip(sign * (xx - cx) / 0.36, 0.0, 1.0)  # 0 medial .. 1 lateral
        fissure = cy + 0.02 - 0.10 * lat + rng.uniform(-0.02, 0.02)  # oblique fissure: lower lobe posterior
        lower = lung & (yy > fissure)
        if side == "right":
            middle = lung & ~lower & (lat < 0.45 + rng.uniform(-0.05, 0.05))
            organs["lung_lower_lobe_right"] = lower
            organs["lung_middle_lobe_right"] = middle
            organs["lung_upper_lobe_right"] = lung & ~lower & ~middle
        else:
            organs["lung_lower_lobe_left"] = lower
            organs["lung_upper_lobe_left"] = lung & ~lower
    lobes = np.zeros(yy.shape, np.int8)
    for i, name in enumerate(CT_ORGANS[:5], start=1):
        lobes[organs[name]] = i
    edges = (ndimage.maximum_filter(lobes, 3) != ndimage.minimum_filter(lobes, 3)) & (lobes > 0) & (
        ndimage.minimum_filter(lobes, 3) > 0)
    hu[edges] = -650.0  # fissures: thin, faint lines between lobes
    vessels = (smooth_noise(rng, yy.shape, 3) > 2.3) & (lobes > 0)
    hu[vessels] = HU["blood"] - 20.0
    return organs


def _abdomen(rng, yy, xx, hu, cavity, geo):
    cy, cx, ry, rx = geo
    organs = {}
    hu[cavity & (np.abs(xx - cx) > 0.2)] = HU["fat"]
    j = lambda a: rng.uniform(-a, a)  # noqa: E731 - per-slice anatomical variation
    lf = rng.uniform(0.85, 1.05)
    liver = ellipse(yy, xx, cy - 0.04 + j(0.02), cx - 0.15 + j(0.02), 0.19 * lf, 0.18 * lf, angle=0.2 + j(0.2))
    liver |= ellipse(yy, xx, cy - 0.14 + j(0.015), cx + j(0.02), 0.06 * lf, 0.13 * lf)  # left lobe
    liver &= cavity
    ky, kx = cy + 0.13 + j(0.015), 0.13 + j(0.015)
    kid_r = ellipse(yy, xx, ky + j(0.015), cx - kx, 0.065 + j(0.008), 0.045, angle=-0.5 + j(0.2)) & cavity
    kid_l = ellipse(yy, xx, ky + j(0.015), cx + kx, 0.065 + j(0.008), 0.045, angle=0.5 + j(0.2)) & cavity
    spleen = ellipse(yy, xx, cy + 0.05 + j(0.02), cx + 0.22, 0.11 * lf, 0.06, angle=-0.6) & cavity & ~kid_l
    sf = rng.uniform(0.8, 1.15)
    stomach = ellipse(yy, xx, cy - 0.08 + j(0.02), cx + 0.14, 0.08 * sf, 0.09 * sf) & cavity & ~spleen
    aorta = ellipse(yy, xx, cy + 0.1, cx + 0.025, 0.022, 0.022)
    ivc = ellipse(yy, xx, cy + 0.08, cx - 0.05, 0.02, 0.03)
    liver &= ~(kid_r | ivc | aorta | stomach)
    for mask, name in ((liver, "liver"), (spleen, "spleen"), (kid_r, "kidney"), (kid_l, "kidney")):
        hu[mask] = HU[name]
    for kid, sign in ((kid_r, -1), (kid_l, 1)):  # renal sinus fat at the medial hilum
        hu[kid & ellipse(yy, xx, cy + 0.13, cx + sign * 0.11, 0.02, 0.012)] = HU["fat"]
    wall = stomach & ~ndimage.binary_erosion(stomach, iterations=3)
    hu[stomach] = HU["fluid"]
    hu[stomach & (yy < cy - 0.12 + j(0.03))] = HU["air"]  # air-fluid level (patient supine: air anterior)
    hu[wall] = HU["soft"]
    hu[aorta | ivc] = HU["blood"]
    organs.update(liver=liver, spleen=spleen, kidney_right=kid_r, kidney_left=kid_l, stomach=stomach, aorta=aorta)
    return organs


def _recist(region: np.ndarray) -> tuple[tuple[float, float], tuple[float, ...]]:
    """Long and short diameters (pixels) of a region and their endpoints, as DeepLesion's RECIST marks."""
    ys, xs = np.nonzero(region)
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float64)
    edge = region & ~ndimage.binary_erosion(region)
    ey, ex = np.nonzero(edge)
    ep = np.stack([ex + 0.5, ey + 0.5], axis=1)[:: max(1, int(edge.sum()) // 200)]
    d = np.linalg.norm(ep[:, None] - ep[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    a, b = ep[i], ep[j]
    axis = (b - a) / max(np.linalg.norm(b - a), 1e-9)
    normal = np.array([-axis[1], axis[0]])
    mid = (a + b) / 2.0
    proj = (pts - mid) @ normal
    lo, hi = float(proj.min()), float(proj.max())
    c, e = mid + lo * normal, mid + hi * normal
    long_d, short_d = float(np.linalg.norm(b - a)), hi - lo
    return (long_d, short_d), tuple(float(v) for v in (*a, *b, *c, *e))


def ct_slice(rng: np.random.Generator, size: int, region: str, labels: list[str]) -> CtSlice:
    """Draw one CT slice (`region` 'chest' or 'abdomen') with the given lesion classes."""
    yy, xx = grid(size, size)
    hu, body, cavity, geo = _trunk(rng, yy, xx, region)
    organs = (_chest if region == "chest" else _abdomen)(rng, yy, xx, hu, cavity, geo)
    px = 1.0 / size
    scale = size / 512.0
    gap = max(int(round(4 * scale)), 1)
    occupied = np.zeros(yy.shape, bool)  # boxes of the lesions drawn so far (+ gap): one finding per box
    lesions = []
    for label in labels:
        placed = None
        for _ in range(20):
            if label == "lung nodule":
                host = str(rng.choice([n for n in CT_ORGANS[:5] if organs[n].sum() > 400 * scale ** 2]))
                r, value, harm = rng.uniform(4, 11) * scale, HU["soft"], ()
            elif label == "liver cyst":
                host, r, value, harm = "liver", rng.uniform(7, 20) * scale, 0.0, ()
            elif label == "kidney cyst":
                host = str(rng.choice(["kidney_left", "kidney_right"]))
                r, value, harm = rng.uniform(5, 10) * scale, 0.0, ()
            elif label == "liver mass":
                host, r, value = "liver", rng.uniform(14, 30) * scale, 110.0
                harm = [(0.15, 3, rng.uniform(0, 6.3)), (0.08, 5, rng.uniform(0, 6.3))]
            else:
                raise ValueError(f"unknown CT lesion class {label!r}; expected one of {CT_CLASSES}")
            r = max(r, 3.0)
            free = organs[host] & ~occupied
            if not free.any():
                continue
            cy, cx = sample_point(rng, free, margin=r + 2)
            drawn = (blob_radius(yy, xx, cy, cx, r * px, harm) <= 1.0) & organs[host]
            box = box_of(drawn)
            if box is not None and not occupied[box[1]:box[3], box[0]:box[2]].any():
                placed = label, host, value, drawn, box
                break
        if placed is None:
            continue
        label, host, value, drawn, box = placed
        if label == "liver mass":
            hu[drawn] = (value + 15.0 * smooth_noise(rng, yy.shape, max(int(4 * scale), 2)))[drawn]
        else:
            hu[drawn] = value
        occupied[max(box[1] - gap, 0):box[3] + gap, max(box[0] - gap, 0):box[2] + gap] = True
        diam, recist = _recist(drawn)
        lesions.append(CtLesion(label, box, host, diam, recist))

    hu = ndimage.gaussian_filter(hu, 0.7 * scale)
    hu += rng.normal(0.0, 10.0, hu.shape).astype(np.float32)
    hu[~body] = np.clip(hu[~body], -1024.0, -950.0)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return CtSlice(hu, region, {n: organs.get(n, np.zeros(yy.shape, bool)) for n in CT_ORGANS}, lesions)
