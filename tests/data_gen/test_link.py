"""Linking: golden cases by hand, and the vectorized linker against a slow per-box reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from data_gen import link
from data_gen.segment import names as organ_names
from data_gen.types import LoadedImage, OrganMasks


def _image(h=200, w=200, modality="xray", spacing=None, col_direction="L"):
    return LoadedImage(pixels=np.zeros((h, w), np.uint8), modality=modality, spacing_mm=spacing,
                       col_direction=col_direction)


def _masks(shape, **rects):
    """Organ masks from `name=(r0, r1, c0, c1)` rectangles (end-exclusive); `_` in names becomes a space."""
    names, planes = [], []
    for name, rect in rects.items():
        m = np.zeros(shape, bool)
        if isinstance(rect, np.ndarray):
            m = rect
        else:
            r0, r1, c0, c1 = rect
            m[r0:r1, c0:c1] = True
        names.append(name.replace("_", " "))
        planes.append(m)
    return OrganMasks(names=names, masks=np.stack(planes), source="test")


def _authors_rule(box, masks: OrganMasks) -> str:
    """The released code's rule: IoU of the lesion box with each mask's bounding box, argmax, first wins."""
    best, best_iou = "unknown", 0.0
    x1, y1, x2, y2 = box
    for name, m in zip(masks.names, masks.masks):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        bx1, by1, bx2, by2 = xs.min(), ys.min(), xs.max(), ys.max()
        iw, ih = max(0, min(x2, bx2) - max(x1, bx1)), max(0, min(y2, by2) - max(y1, by1))
        inter = iw * ih
        union = (x2 - x1) * (y2 - y1) + (bx2 - bx1) * (by2 - by1) - inter
        if union > 0 and inter / union > best_iou:
            best, best_iou = name, inter / union
    return best


# ---- golden cases ------------------------------------------------------------------------------------------------

def test_rib_whose_box_matches_vs_lung_covering_86_percent():
    shape = (200, 200)
    box = (50.0, 50.0, 100.0, 100.0)  # 50 x 50 px
    rib = np.zeros(shape, bool)
    for t in range(50):  # a thin diagonal band whose bounding box is exactly the lesion box
        rib[50 + t, 50 + t] = True
        rib[50 + t, min(50 + t + 1, 99)] = True
    lung = np.zeros(shape, bool)
    lung[20:180, 10:93] = True  # covers columns 50..92 of the box: 43/50 = 86%
    masks = OrganMasks(names=["right posterior 5th rib", "right lung"], masks=np.stack([rib, lung]))
    assert _authors_rule(box, masks) == "right posterior 5th rib"  # the case discriminates the two rules
    (res,) = link.link_lesions(np.array([box]), masks, _image(), {"min_score": 0.1})
    assert res.organ == "right lung"
    assert res.method == "containment"
    assert res.score == pytest.approx(0.86)


def test_zone_is_preferred_over_its_lung():
    shape = (200, 200)
    masks = _masks(shape, right_lung=(20, 180, 10, 90), right_upper_zone_of_lung=(20, 73, 10, 90),
                   lungs=(20, 180, 10, 190))
    box = np.array([[30.0, 30.0, 50.0, 50.0]])  # fully inside the zone: tie at 1.0 -> most specific
    (res,) = link.link_lesions(box, masks, _image(), None)
    assert res.organ == "right upper zone of lung"
    assert res.location == "right upper zone"
    assert res.zone == "upper" and res.laterality == "right"


def test_prefer_specific_within_tolerance_and_not_beyond():
    shape = (200, 200)
    masks = _masks(shape, right_lung=(20, 180, 10, 90), right_upper_zone_of_lung=(20, 73, 10, 90),
                   right_mid_zone_of_lung=(73, 126, 10, 90))
    # 95% in the upper zone (rows 54..73 of 54..74), 100% in the lung: the zone, within the 0.1 tolerance.
    near_edge = np.array([[30.0, 54.0, 50.0, 74.0]])
    (res,) = link.link_lesions(near_edge, masks, _image(), {"specific_tolerance": 0.1})
    assert res.organ == "right upper zone of lung"
    assert res.score == pytest.approx(0.95)
    # With a tighter tolerance the lung is kept.
    (res,) = link.link_lesions(near_edge, masks, _image(), {"specific_tolerance": 0.01})
    assert res.organ == "right lung"
    # Straddling two zones 60/40: the lung, with the zone from geometry (centre row 70 of 20..179: upper third).
    straddle = np.array([[30.0, 61.0, 50.0, 81.0]])  # rows 61..80: 12 in the upper zone, 8 in the mid zone
    (res,) = link.link_lesions(straddle, masks, _image(), None)
    assert res.organ == "right lung"
    assert res.score == pytest.approx(1.0)
    assert res.zone == "upper"
    assert res.location == "right upper zone"
    # prefer_specific off: the plain ranking (tie at 1.0 for the first box would still pick the zone by
    # specificity, so use the near-edge box: the lung has the higher containment).
    (res,) = link.link_lesions(near_edge, masks, _image(), {"prefer_specific": False})
    assert res.organ == "right lung"


def test_ties_are_broken_by_specificity_then_iou_then_name_regardless_of_order():
    shape = (100, 100)
    box = np.array([[40.0, 40.0, 50.0, 50.0]])
    # Same containment (1.0), neither part of the other: the smaller mask has the higher IoU.
    a = _masks(shape, spleen=(30, 60, 30, 60), stomach=(0, 100, 0, 100))
    for perm in itertools.permutations(range(2)):
        om = OrganMasks([a.names[i] for i in perm], a.masks[list(perm)])
        assert link.link_lesions(box, om, _image(100, 100), None)[0].organ == "spleen"
    # Identical masks: the name decides.
    b = _masks(shape, spleen=(30, 60, 30, 60), pancreas=(30, 60, 30, 60))
    for perm in itertools.permutations(range(2)):
        om = OrganMasks([b.names[i] for i in perm], b.masks[list(perm)])
        assert link.link_lesions(box, om, _image(100, 100), None)[0].organ == "pancreas"


def test_overlays_yield_to_organs_on_radiographs_only():
    shape = (200, 200)
    rib = _rect_mask(shape, 40, 60, 0, 120)  # a rib shadow crossing the lung field and beyond
    masks = OrganMasks(names=["right 4th rib", "right lung", "right upper zone of lung"],
                       masks=np.stack([rib, _rect_mask(shape, 20, 180, 10, 90), _rect_mask(shape, 20, 73, 10, 90)]))
    # Wholly inside the rib shadow and the zone: a tie at 1.0 that the rib (deeper in its own branch) must not win.
    (res,) = link.link_lesions(np.array([[30.0, 42.0, 40.0, 52.0]]), masks, _image(), None)
    assert res.organ == "right upper zone of lung"
    # Columns 40..95: 50/56 = 0.89 in the lung field, 1.0 on the rib: the organ wins within overlay_tolerance ...
    lung_89 = np.array([[40.0, 42.0, 96.0, 52.0]])
    (res,) = link.link_lesions(lung_89, masks, _image(), None)
    assert res.organ == "right upper zone of lung" and res.score == pytest.approx(50 / 56)
    # ... and not beyond it.
    (res,) = link.link_lesions(lung_89, masks, _image(), {"overlay_tolerance": 0.05})
    assert res.organ == "right 4th rib"
    # Axial images have no overlays: the rib's higher containment wins.
    (res,) = link.link_lesions(lung_89, masks, _image(modality="ct"), None)
    assert res.organ == "right 4th rib"


def _rect_mask(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_nearest_fallback_records_the_distance():
    shape = (100, 200)
    masks = _masks(shape, liver=(20, 80, 0, 110))  # last column 109: pixel centre 109.5
    box = np.array([[120.0, 40.0, 130.0, 50.0]])
    (res,) = link.link_lesions(box, masks, _image(100, 200, modality="ct"), {"max_distance_px": 20.0})
    assert res.method == "nearest" and res.organ == "liver" and res.score == 0.0
    assert res.distance_px == pytest.approx(10.5)
    assert res.distance_mm is None
    assert res.location.startswith("near ")
    # With spacing (row 0.5 mm, col 0.8 mm) the limit is in mm: 10.5 px * 0.8 = 8.4 mm.
    img = _image(100, 200, modality="ct", spacing=(0.5, 0.8))
    (res,) = link.link_lesions(box, masks, img, {"max_distance_mm": 10.0})
    assert res.method == "nearest" and res.distance_mm == pytest.approx(8.4)
    assert res.size_mm == pytest.approx((8.0, 5.0))
    (res,) = link.link_lesions(box, masks, img, {"max_distance_mm": 8.0})
    assert res.organ == "unknown" and res.method == "none"


def test_nearest_prefers_the_closer_organ_and_diagonal_distance():
    shape = (100, 100)
    masks = _masks(shape, spleen=(0, 10, 0, 10), stomach=(0, 10, 60, 70))
    box = np.array([[20.0, 20.0, 30.0, 30.0]])  # spleen corner pixel centre (9.5, 9.5): dx = dy = 10.5
    (res,) = link.link_lesions(box, masks, _image(100, 100), {"max_distance_px": 50.0})
    assert res.organ == "spleen"
    assert res.distance_px == pytest.approx(np.hypot(10.5, 10.5), abs=1e-3)


def test_unknown_when_nothing_is_near_or_no_masks():
    shape = (100, 100)
    masks = _masks(shape, spleen=(0, 10, 0, 10))
    (res,) = link.link_lesions(np.array([[80.0, 80.0, 90.0, 90.0]]), masks, _image(100, 100),
                               {"max_distance_px": 5.0})
    assert (res.organ, res.method, res.score) == ("unknown", "none", 0.0)
    empty = OrganMasks(names=[], masks=np.zeros((0, 100, 100), bool))
    (res,) = link.link_lesions(np.array([[10.0, 10.0, 20.0, 20.0]]), empty, _image(100, 100), None)
    assert res.organ == "unknown"
    assert res.laterality == "right"  # image-left of the image centre, col_direction 'L'


@pytest.mark.parametrize("col_direction,image_left_side", [("L", "right"), ("R", "left")])
def test_laterality_follows_col_direction(col_direction, image_left_side):
    shape = (100, 200)
    masks = _masks(shape, lungs=(10, 90, 10, 190), left_kidney=(60, 90, 120, 180))
    img = _image(100, 200, col_direction=col_direction)
    on_image_left = np.array([[30.0, 20.0, 40.0, 30.0]])
    on_image_right = np.array([[150.0, 20.0, 160.0, 30.0]])
    across = np.array([[90.0, 20.0, 111.0, 30.0]])  # straddles the midline (column 100)
    assert link.link_lesions(on_image_left, masks, img, None)[0].laterality == image_left_side
    other = "left" if image_left_side == "right" else "right"
    assert link.link_lesions(on_image_right, masks, img, None)[0].laterality == other
    assert link.link_lesions(across, masks, img, None)[0].laterality == "midline"
    # A host whose name states its side keeps it, whatever the geometry.
    (kid,) = link.link_lesions(np.array([[130.0, 80.0, 140.0, 88.0]]), masks, img, None)
    assert kid.organ == "left kidney" and kid.laterality == "left"
    assert kid.location == "lower pole of left kidney"


def test_lateral_radiograph_has_no_geometric_side():
    shape = (100, 200)
    masks = _masks(shape, lungs=(10, 90, 10, 190), left_kidney=(60, 90, 120, 180))
    img = _image(100, 200)
    img.view = "LL"
    (res,) = link.link_lesions(np.array([[30.0, 20.0, 40.0, 30.0]]), masks, img, None)
    assert res.organ == "lungs" and res.laterality is None
    (kid,) = link.link_lesions(np.array([[130.0, 80.0, 140.0, 88.0]]), masks, img, None)
    assert kid.laterality == "left"


def test_midline_between_the_lungs():
    shape = (100, 200)
    # Lungs asymmetric in the image: the midline is halfway between their medial borders (cols 59 and 90 -> 75).
    masks = _masks(shape, right_lung=(10, 90, 10, 60), left_lung=(10, 90, 90, 190))
    img = _image(100, 200)
    assert link._midline(masks.names, link._OrganFacts(masks.masks), 200) == pytest.approx(75.0)
    (res,) = link.link_lesions(np.array([[65.0, 40.0, 72.0, 50.0]]), masks, img, {"max_distance_px": 20})
    assert res.laterality == "right"  # centre 68.5 < 75, image-left = patient right


def test_location_text_on_radiograph_and_ct():
    shape = (120, 120)
    masks = _masks(shape, right_lung=(0, 120, 0, 50))
    box = np.array([[10.0, 100.0, 20.0, 110.0]])
    (xr,) = link.link_lesions(box, masks, _image(120, 120, modality="xray"), None)
    assert (xr.zone, xr.location) == ("lower", "right lower zone")
    (ct,) = link.link_lesions(box, masks, _image(120, 120, modality="ct"), None)
    assert (ct.zone, ct.location) == (None, "right lung")
    lobe = _masks(shape, right_lower_lobe_of_lung=(0, 120, 0, 50))
    assert link.link_lesions(box, lobe, _image(120, 120, modality="ct"), None)[0].location == "right lower lobe"
    base = _masks(shape, right_lung_base=(80, 120, 0, 50))
    (b,) = link.link_lesions(box, base, _image(120, 120), None)
    assert (b.location, b.zone) == ("right lung base", "lower")


@pytest.mark.parametrize("col_direction", ["L", "R"])
def test_liver_lobes(col_direction):
    shape = (100, 100)
    masks = _masks(shape, liver=(20, 80, 0, 100))  # uniform liver: the right lobe is the patient-right 60 columns
    img = _image(100, 100, modality="ct", col_direction=col_direction)
    pr = np.array([[20.0, 40.0, 30.0, 50.0]])  # image columns 20..29
    pl = np.array([[75.0, 40.0, 85.0, 50.0]])
    first, second = ("right", "left") if col_direction == "L" else ("left", "right")
    assert link.link_lesions(pr, masks, img, None)[0].location == f"{first} lobe of liver"
    assert link.link_lesions(pl, masks, img, None)[0].location == f"{second} lobe of liver"


def test_lesion_structures_never_host():
    shape = (100, 100)
    masks = _masks(shape, left_kidney=(10, 90, 10, 90), left_kidney_cyst=(40, 60, 40, 60))
    (res,) = link.link_lesions(np.array([[42.0, 42.0, 58.0, 58.0]]), masks, _image(100, 100, "ct"), None)
    assert res.organ == "left kidney"


# ---- vectorized vs a slow reference ------------------------------------------------------------------------------

def _reference(boxes, masks: OrganMasks, min_score, prefer_specific, tol, overlay_tol=0.2):
    """Per box, per organ, pixel by pixel: the documented rules (radiograph) written the slow, obvious way."""
    h, w = masks.masks.shape[1:]
    out = []
    for x1, y1, x2, y2 in boxes:
        c0, r0 = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
        c1, r1 = max(min(int(np.ceil(x2)), w), c0 + 1), max(min(int(np.ceil(y2)), h), r0 + 1)
        pixels = [(r, c) for r in range(r0, r1) for c in range(c0, c1)]
        scored = []
        for name, m in zip(masks.names, masks.masks):
            inter = sum(1 for r, c in pixels if m[r, c])
            area = int(m.sum())
            cont = inter / len(pixels)
            iou = inter / (len(pixels) + area - inter)
            scored.append((name, cont, organ_names.is_overlay(name), iou))

        def best(cands):
            top = max(c for _, c, _, _ in cands)
            tied = [s for s in cands if s[1] >= top - 1e-6]
            leaves = [s for s in tied if not any(organ_names.is_part_of(t[0], s[0]) for t in tied)]
            top_iou = max(s[3] for s in leaves)
            leaves = [s for s in leaves if s[3] >= top_iou - 1e-12]
            return sorted(leaves, key=lambda s: s[0])[0]

        top = max(c for _, c, _, _ in scored)
        if top < min_score:
            out.append(None)
            continue
        pool = [s for s in scored if not s[2] and s[1] >= max(min_score, top - overlay_tol)] or scored
        chosen = best(pool)
        top = chosen[1]
        while prefer_specific:
            parts = [s for s in pool if s[1] >= min_score and s[1] >= top - tol
                     and organ_names.is_part_of(s[0], chosen[0])]
            if not parts:
                break
            chosen = best(parts)
        out.append((chosen[0], chosen[1]))
    return out


@pytest.mark.parametrize("prefer_specific", [True, False])
def test_vectorized_equals_reference(prefer_specific):
    rng = np.random.default_rng(7)
    h, w = 48, 64
    names = ["right lung", "right upper zone of lung", "right mid zone of lung", "left lung", "heart", "liver",
             "T12 vertebra", "right posterior 5th rib", "lungs", "spleen"]
    planes = []
    for _ in names:
        m = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            r0, c0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
            m[r0:r0 + rng.integers(3, 30), c0:c0 + rng.integers(3, 40)] = True
        planes.append(m)
    planes[1] &= planes[0]  # zones inside their lung, so the hierarchy matters
    planes[2] &= planes[0]
    masks = OrganMasks(names=names, masks=np.stack(planes))
    xy = rng.uniform(-5, 70, size=(40, 2))
    wh = rng.uniform(0.5, 25, size=(40, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    boxes[:5] = np.round(boxes[:5])  # integer boxes too
    cfg = {"min_score": 0.1, "prefer_specific": prefer_specific, "specific_tolerance": 0.1,
           "max_distance_px": 0.0}
    got = link.link_lesions(boxes, masks, _image(h, w), cfg)
    want = _reference(boxes, masks, 0.1, prefer_specific, 0.1)
    for g, r in zip(got, want):
        if r is None:
            assert g.method in ("none", "nearest")
        else:
            assert (g.organ, g.method) == (r[0], "containment")
            assert g.score == pytest.approx(r[1])


def test_crop_and_sat_counts_agree_with_brute_force():
    rng = np.random.default_rng(3)
    masks = rng.random((7, 33, 70)) < 0.3
    boxes = np.concatenate([rng.uniform(-3, 60, (25, 2)), rng.uniform(-3, 60, (25, 2)) + 12], axis=1)
    ranges = link.pixel_ranges(boxes, 33, 70)
    brute = np.array([[m[r0:r1, c0:c1].sum() for m in masks] for r0, r1, c0, c1 in ranges])
    np.testing.assert_array_equal(link.box_mask_counts(masks, ranges, "crop"), brute)
    np.testing.assert_array_equal(link.box_mask_counts(masks, ranges, "sat"), brute)
    np.testing.assert_array_equal(link.box_mask_counts(masks, ranges, "auto"), brute)


def test_pixel_ranges_rule():
    r = link.pixel_ranges(np.array([[10.2, 5.0, 20.0, 9.5], [-4, -4, -1, -1], [199.5, 0, 250, 3]]), 100, 200)
    np.testing.assert_array_equal(r, [[5, 10, 10, 20], [0, 1, 0, 1], [0, 3, 199, 200]])


# ---- the linking benchmark's baselines ----------------------------------------------------------------------------

def _benchmark():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "data_gen.py")
    spec = importlib.util.spec_from_file_location("bench_data_gen", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_baselines_are_one_rule_and_the_table_runs(tmp_path):
    """The authors' code path (per lesion x mask) and the same rule with boxes computed once must name the same
    organ for every lesion, edge cases included: an empty mask, a one-pixel mask at (0, 0) (their box sums to 0:
    skipped), a box touching a mask's box only along a line, a lesion overlapping nothing."""
    bench = _benchmark()
    masks, names, boxes = bench.make_link_inputs(256, 40, 8, seed=3)
    masks[5] = False
    masks[6] = False
    masks[6, 0, 0] = True
    masks[7] = False
    masks[7, 100:120, 100:120] = True
    boxes = np.vstack([boxes, [[119, 100, 140, 110], [0, 250, 3, 255]]])
    u8 = masks.view(np.uint8) * np.uint8(255)
    authors = bench.authors_link(boxes, u8, names)
    assert bench.authors_rule_once(boxes, masks, names) == authors
    assert authors[-1] == "unknown"
    # The rule's known flaw, by hand: a rib band whose box matches the lesion beats the lung holding it.
    m = np.zeros((2, 200, 200), bool)
    m[0, 20:180, 20:100] = True  # right lung
    m[1, 60:70, 30:90] = True  # a rib shadow across it
    lesion = np.array([[30.0, 55.0, 90.0, 75.0]])
    assert bench.authors_link(lesion, m.view(np.uint8) * np.uint8(255), ["lung right", "rib 4 right"]) \
        == ["rib 4 right"]
    reading, linking = bench.bench_masks(str(tmp_path), size=128, n_masks=20, n_lesions=3, images=1, repeats=1,
                                         warmup=0)
    assert reading[0]["name"].startswith("authors'") and all(r["ms_per_image"] > 0 for r in reading)
    assert linking[0]["name"].startswith("authors'") and all(r["ms_per_image"] > 0 for r in linking)
    rss = bench.bench_rss(str(tmp_path), 128)
    assert [r["mode"] for r in rss] == list(bench.RSS_MODES) and all(r["peak_mb"] > 10 for r in rss)
    bench.print_masks(reading, linking, rss, "test")


# mutation-testing gaps (mutmut survivors, see benchmarks/results/mutation.md) ---------------------------------

def test_pixel_ranges_clip_to_the_image_and_keep_one_pixel():
    h, w = 10, 20
    got = link.pixel_ranges(np.array([[w - 0.5, h - 0.5, w + 3, h + 3],      # past the far corner
                                      [-5, -5, -1, -1],                      # before the near corner
                                      [1.2, 2.7, 4.1, 2.9]]), h, w)          # under one pixel tall
    assert got.dtype == np.int64
    assert got.tolist() == [[h - 1, h, w - 1, w], [0, 1, 0, 1], [2, 3, 1, 5]]


@pytest.mark.parametrize("layout", ["bool", "uint8", "strided_bool"])
def test_box_mask_counts_every_method_and_layout_equals_brute_force(layout):
    rng = np.random.default_rng(7)
    k, h, w = 3, 13, 41
    base = rng.random((k, h, 2 * w)) < 0.4
    masks = {"bool": np.ascontiguousarray(base[:, :, :w]), "uint8": base[:, :, :w].astype(np.uint8),
             "strided_bool": base[:, :, ::2]}[layout]
    assert masks.shape == (k, h, w)
    # widths around the 8-aligned popcount middle: none, exactly 8, more, unaligned both ends, the full row
    ranges = np.array([[0, h, 0, w], [2, 9, 8, 16], [1, 5, 3, 11], [0, 13, 7, 33], [4, 5, 1, 4], [3, 12, 5, 40],
                       [0, 1, 16, 24]], np.int64)
    want = np.array([[masks[j, r0:r1, c0:c1].astype(np.int64).sum() for j in range(k)]
                     for r0, r1, c0, c1 in ranges.tolist()], np.int64)
    for method in ("crop", "sat", "auto"):
        got = link.box_mask_counts(masks, ranges, method)
        assert got.dtype == np.int64 and got.tolist() == want.tolist(), method
    empty = link.box_mask_counts(masks, np.zeros((0, 4), np.int64))
    assert empty.shape == (0, k) and empty.dtype == np.int64
