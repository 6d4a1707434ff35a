"""Linking behaviour that mutation testing (`make mutation`, benchmarks/results/mutation.md) found unpinned.

Written against `link.link_lesions` / `LinkSettings` as a caller sees them (boxes, masks, image in; LinkResult out),
so a rewrite of link.py's internals keeps these tests meaningful. Each test says which rule of link.py's module
docstring it pins.
"""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import link
from data_gen.errors import ConfigError
from data_gen.types import LoadedImage, OrganMasks


def _image(h=100, w=100, modality="xray", spacing=None, col_direction="L", view=None):
    return LoadedImage(pixels=np.zeros((h, w), np.uint8), modality=modality, spacing_mm=spacing,
                       col_direction=col_direction, view=view)


def _masks(shape, organs):
    """OrganMasks from `[(name, (r0, r1, c0, c1) or bool array), ...]` (end-exclusive rectangles)."""
    planes = []
    for _, rect in organs:
        if isinstance(rect, np.ndarray):
            planes.append(rect)
            continue
        m = np.zeros(shape, bool)
        r0, r1, c0, c1 = rect
        m[r0:r1, c0:c1] = True
        planes.append(m)
    return OrganMasks(names=[n for n, _ in organs], masks=np.stack(planes), source="test")


def _one(box, organs, shape=(100, 100), cfg=None, **image):
    return link.link_lesions(np.asarray([box], np.float64), _masks(shape, organs), _image(*shape, **image), cfg)[0]


# ---- settings (the `link` config section) --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["min_score", "max_distance_mm", "max_distance_px", "specific_tolerance",
                                  "overlay_tolerance"])
def test_every_negative_threshold_is_refused_by_name(name):
    with pytest.raises(ConfigError, match=rf"link\.{name} must be >= 0, got -0\.5"):
        link.LinkSettings.from_config({name: -0.5})
    assert getattr(link.LinkSettings.from_config({name: 0.0}), name) == 0.0  # 0 itself is allowed


@pytest.mark.parametrize("name", ["min_score", "specific_tolerance", "overlay_tolerance"])
def test_containment_shares_above_one_are_refused_and_one_is_allowed(name):
    with pytest.raises(ConfigError, match=rf"link\.{name} is a share of the box's pixels, in \[0, 1\]; got 1\.5"):
        link.LinkSettings.from_config({name: 1.5})
    assert getattr(link.LinkSettings.from_config({name: 1.0}), name) == 1.0


def test_settings_errors_name_the_link_section():
    with pytest.raises(ValueError, match=r"'link\.min_scor'; did you mean 'link\.min_score'"):
        link.LinkSettings.from_config({"min_scor": 0.1})
    with pytest.raises(ValueError, match=r"section 'link' must be a mapping"):
        link.LinkSettings.from_config(5)


def test_an_unknown_counting_method_is_named():
    with pytest.raises(ValueError, match="unknown counting method 'fast'"):
        link.box_mask_counts(np.ones((1, 4, 4), bool), np.array([[0, 2, 0, 2]]), method="fast")


def test_summed_area_counts_cover_more_masks_than_one_chunk():
    """The summed-area path works in chunks of masks: with more than two chunks' worth (TotalSegmentator has
    117 structures) every mask is still counted, in its own column."""
    rng = np.random.default_rng(0)
    k = 2 * link.SAT_CHUNK + 8
    masks = rng.random((k, 20, 24)) < 0.4
    ranges = np.array([[0, 20, 0, 24], [3, 11, 5, 17], [19, 20, 23, 24]])
    want = np.array([[m[r0:r1, c0:c1].sum() for m in masks] for r0, r1, c0, c1 in ranges])
    np.testing.assert_array_equal(link.box_mask_counts(masks, ranges, method="sat"), want)


def test_mask_grid_mismatch_names_both_shapes():
    masks = _masks((50, 60), [("liver", (0, 10, 0, 10))])
    with pytest.raises(ValueError, match=r"masks are \(50, 60\).* the image is \(100, 100\).*load_masks resamples"):
        link.link_lesions(np.array([[1, 1, 5, 5]], np.float64), masks, _image(), None)


# ---- rule 2: ties go to the higher IoU, then the name -----------------------------------------------------------

def test_a_tie_in_containment_goes_to_the_higher_iou_not_the_name():
    """Two unrelated structures both hold the whole box: the one whose mask is closer to the box (higher IoU)
    wins, although the other sorts first by name."""
    organs = [("aorta", (20, 80, 20, 80)), ("heart", (25, 45, 25, 45))]
    r = _one((30, 30, 40, 40), organs, modality="ct")
    assert (r.organ, r.score, r.method) == ("heart", 1.0, "containment")


def test_a_one_pixel_box_tied_between_two_masks_goes_to_the_one_pixel_mask():
    organs = [("aorta", (40, 60, 40, 60)), ("heart", (50, 51, 50, 51))]
    assert _one((50, 50, 51, 51), organs, modality="ct").organ == "heart"


def test_parts_tied_under_prefer_specific_are_split_by_iou():
    """Rule 4 with two parts of the chosen lung, both within the tolerance and tied: IoU picks the zone (the
    tighter mask), although the lobe sorts first by name."""
    organs = [("right lung", (10, 90, 10, 50)), ("right upper lobe of lung", (18, 80, 18, 38)),
              ("right upper zone of lung", (18, 40, 18, 38))]
    r = _one((18, 18, 40, 38), organs, modality="ct")  # 22 x 20 = 440 pixels: the lung holds all, each part 400
    assert r.organ == "right upper zone of lung" and r.score == pytest.approx(400 / 440)


# ---- rules 3-4 at their exact thresholds ------------------------------------------------------------------------

def test_containment_exactly_min_score_hosts():
    r = _one((0, 0, 10, 10), [("liver", (0, 5, 0, 10))], cfg={"min_score": 0.5}, modality="ct")
    assert (r.organ, r.score, r.method) == ("liver", 0.5, "containment")


def test_overlay_rule_counts_an_organ_exactly_at_the_tolerance():
    """Radiograph: the rib shadow holds the whole box, the heart exactly `overlay_tolerance` less: the heart."""
    organs = [("ribs", (0, 100, 0, 100)), ("heart", (40, 55, 40, 50))]  # 150 of the box's 200 pixels
    r = _one((40, 40, 50, 60), organs, cfg={"overlay_tolerance": 0.25})
    assert (r.organ, r.score) == ("heart", 0.75)


def test_prefer_specific_takes_a_part_exactly_at_min_score_and_at_the_tolerance():
    """The lung holds 0.75 of the box, its zone 0.5 = min_score = 0.75 - specific_tolerance: the zone."""
    organs = [("right lung", (0, 15, 0, 10)), ("right upper zone of lung", (0, 10, 0, 10))]  # box: 200 pixels
    r = _one((0, 0, 10, 20), organs, cfg={"min_score": 0.5, "specific_tolerance": 0.25}, modality="ct")
    assert (r.organ, r.score) == ("right upper zone of lung", 0.5)


# ---- no host: laterality, location and size from the box alone ----------------------------------------------------

def _unknown(boxes, organs=(), shape=(100, 100), **image):
    masks = _masks(shape, organs) if organs else OrganMasks(names=[], masks=np.zeros((0, *shape), bool))
    results = link.link_lesions(np.asarray(boxes, np.float64), masks, _image(*shape, **image), None)
    assert len(results) == len(boxes) and {(r.organ, r.method, r.score, r.zone) for r in results} == {
        ("unknown", "none", 0.0, None)}
    return results


def test_unknown_hosts_get_their_side_from_the_image_centre_in_one_call():
    """No masks: the midline is the image centre (column 50). Every box of the call gets its own result, and a
    box straddling the midline is "midline" only while its centre is within a quarter of its width of it."""
    boxes = [(30, 40, 40, 50),  # centre 35: image-left = patient-right
             (65, 40, 75, 50),  # centre 70
             (44, 40, 56, 50),  # centre on the midline
             (46, 40, 62, 50),  # straddles, centre 4 = a quarter of the width from the midline
             (48, 40, 60, 50)]  # straddles, centre 4 > a quarter (3) of the width away
    got = [(r.laterality, r.location) for r in _unknown(boxes)]
    assert got == [("right", "right side"), ("left", "left side"), ("midline", "midline"), ("midline", "midline"),
                   ("left", "left side")]
    flipped = [(r.laterality, r.location) for r in _unknown(boxes[:2], col_direction="R")]
    assert flipped == [("left", "left side"), ("right", "right side")]
    assert [(r.laterality, r.location) for r in _unknown(boxes[:2], view="LL")] == [(None, "")] * 2


def test_size_in_mm_is_rounded_to_a_tenth_and_absent_without_spacing():
    box = (30, 40, 40.3, 50.26)  # 10.3 x 10.26 pixels
    assert _unknown([box], spacing=(0.5, 0.7))[0].size_mm == (7.2, 5.1)  # (width * col, height * row) spacing
    assert _unknown([box])[0].size_mm is None
    r = _one(box, [("liver", (0, 100, 0, 100))], modality="ct")
    assert r.size_mm is None and r.distance_px == 0.0 and r.distance_mm is None


# ---- the midline (laterality of hosts without a named side) --------------------------------------------------------

FAR = (80, 90)  # box rows far below the organs (rows 0..9), beyond the nearest-organ radius: no host


def _sides(organs, xs):
    return [r.laterality for r in _unknown([(x1, FAR[0], x2, FAR[1]) for x1, x2 in xs], organs)]


@pytest.mark.parametrize("name", ["body", "lungs"])
def test_midline_from_the_body_or_lungs_mask(name):
    """Body columns 20..89: midline 55. Both boxes straddle it with centres exactly a quarter width away."""
    assert _sides([(name, (0, 10, 20, 90))], [(51, 67), (43, 59)]) == ["midline", "midline"]


def test_midline_between_the_lungs_counts_their_parts():
    """The right lung given only as a zone (cols 10..29), the left lung cols 60..89: midline 45, not 50."""
    organs = [("right upper zone of lung", (0, 10, 10, 30)), ("left lung", (0, 10, 60, 90))]
    assert _sides(organs, [(46, 48)]) == ["left"]


def test_midline_from_a_one_column_lung():
    organs = [("right lung", (0, 10, 30, 31)), ("left lung", (0, 10, 60, 90))]  # midline (30 + 60 + 1) / 2
    assert _sides(organs, [(46, 49)]) == ["left"]


def test_an_empty_lung_mask_is_ignored_for_the_midline():
    organs = [("right lung", np.zeros((100, 100), bool)), ("left lung", (0, 10, 60, 90))]
    assert _sides(organs, [(38, 42)]) == ["right"]  # the image centre (50): the box is on the patient's right


@pytest.mark.parametrize("name", ["body", "lungs"])
def test_an_empty_body_or_lungs_mask_is_ignored_for_the_midline(name):
    """An empty mask has no columns: it used to put the midline at column 0, every box on the patient's left."""
    organs = [(name, np.zeros((100, 100), bool))]
    assert _sides(organs, [(20, 30), (70, 80)]) == ["right", "left"]  # the image centre (50), as without masks


@pytest.mark.parametrize("right_cols,left_cols", [((10, 51), (50, 90)), ((50, 90), (10, 51))])
def test_overlapping_lungs_give_no_midline_between_them(right_cols, left_cols):
    """Lungs sharing a column are not side by side: the body's centre (column 30) is the midline."""
    organs = [("right lung", (0, 10, *right_cols)), ("left lung", (0, 10, *left_cols)), ("body", (0, 10, 0, 60))]
    assert _sides(organs, [(38, 42)]) == ["left"]


# ---- rule 5: the nearest organ -------------------------------------------------------------------------------------

def test_default_radius_is_a_share_of_the_long_side():
    """100 x 200 image, no spacing: radius 5% of 200 = 10 pixels; the liver 8.5 pixels away is found."""
    r = _one((80, 40, 90, 50), [("liver", (0, 100, 98, 110))], shape=(100, 200), modality="ct")
    assert (r.organ, r.method, r.score, r.distance_px, r.distance_mm) == ("liver", "nearest", 0.0, 8.5, None)
    assert r.location == "near right lobe of liver"


@pytest.mark.parametrize("rect", [(58, 61, 40, 50), (40, 50, 58, 61)], ids=["below", "right"])
def test_pixel_radius_reaches_as_far_down_as_across(rect):
    r = _one((40, 40, 50, 50), [("liver", rect)], cfg={"max_distance_px": 10}, modality="ct")
    assert (r.organ, r.method, r.distance_px) == ("liver", "nearest", 8.5)


def test_radius_in_mm_with_anisotropic_spacing():
    """Rows 0.5 mm, columns 2 mm: 15.5 pixels below is 7.75 mm, inside a 10 mm radius."""
    r = _one((40, 40, 50, 50), [("liver", (65, 68, 40, 50))], cfg={"max_distance_mm": 10}, spacing=(0.5, 2.0),
             modality="ct")
    assert (r.organ, r.method, r.distance_px, r.distance_mm) == ("liver", "nearest", 15.5, 7.75)
    assert r.size_mm == (20.0, 5.0)


@pytest.mark.parametrize("rect", [(0, 1, 0, 10), (0, 10, 0, 1)], ids=["row 0", "column 0"])
def test_an_organ_on_the_image_border_is_reached(rect):
    r = _one((3, 3, 6, 6), [("liver", rect)], modality="ct")
    assert (r.organ, r.method, r.distance_px) == ("liver", "nearest", 2.5)


def test_an_organ_exactly_at_the_radius_is_reached():
    r = _one((5, 5, 10.5, 10), [("liver", (5, 10, 15, 20))], cfg={"max_distance_px": 5}, modality="ct")
    assert (r.organ, r.method, r.distance_px) == ("liver", "nearest", 5.0)


def test_equal_distances_go_to_the_deeper_structure():
    organs = [("right lung", (20, 30, 0, 10)), ("right upper zone of lung", (20, 30, 0, 10))]
    r = _one((0, 0, 10, 15), organs, cfg={"max_distance_px": 10})
    assert (r.organ, r.method, r.distance_px) == ("right upper zone of lung", "nearest", 5.5)


def test_distances_are_rounded_to_three_decimals():
    r = _one((40, 40, 50, 50), [("liver", (53, 54, 53, 54))], spacing=(1.0, 1.0), modality="ct")
    assert (r.method, r.distance_px, r.distance_mm) == ("nearest", 4.95, 4.95)  # 3.5 * sqrt(2) = 4.9497...


# ---- location text -------------------------------------------------------------------------------------------------

def test_left_lung_on_a_radiograph_is_reported_by_zone():
    r = _one((65, 70, 75, 80), [("left lung", (10, 90, 60, 90))])
    assert (r.organ, r.zone, r.location) == ("left lung", "lower", "left lower zone")


def test_both_lungs_mask_takes_the_side_from_geometry():
    lungs = [("lungs", (10, 90, 10, 90))]  # midline 50
    xray = [(_one(b, lungs).location) for b in [(20, 15, 30, 25), (44, 15, 56, 25)]]
    assert xray == ["right upper zone", "upper zone"]
    ct = [(_one(b, lungs, modality="ct").location) for b in [(20, 15, 30, 25), (70, 15, 80, 25), (44, 15, 56, 25)]]
    assert ct == ["right lung", "left lung", "lungs"]


def test_kidney_poles_on_a_radiograph():
    kidney = [("right kidney", (40, 70, 20, 40))]
    assert _one((25, 62, 35, 66), kidney).location == "lower pole of right kidney"
    assert _one((25, 50, 35, 56), kidney).location == "interpolar region of right kidney"


def test_bilateral_structures_name_the_side():
    body = [("body", (0, 100, 0, 100))]
    got = [_one(b, body, modality="ct").location for b in [(20, 40, 30, 50), (70, 40, 80, 50), (44, 40, 56, 50)]]
    assert got == ["body (right side)", "body (left side)", "body"]


def _liver():
    """Rows 40..59 of every column plus the whole last column: 2080 pixels; 60% of them, counted from the
    image-left (patient-right), are reached at column 62, counted from the image-right at column 100 - 58."""
    m = np.zeros((100, 100), bool)
    m[40:60] = True
    m[:, 99] = True
    return [("liver", m)]


def test_liver_lobe_split_column_counts_every_column():
    got = [_one(b, _liver(), modality="ct").location for b in [(58, 45, 63, 55), (61, 45, 63, 55)]]
    assert got == ["right lobe of liver", "left lobe of liver"]  # centres 60.5 and 62.0 (the split itself)


def test_liver_lobe_with_columns_running_to_the_patients_right():
    got = [_one(b, _liver(), modality="ct", col_direction="R").location for b in [(38, 45, 42, 55), (58, 45, 62, 55)]]
    assert got == ["left lobe of liver", "right lobe of liver"]  # 60 and 40 columns from the patient's right


# ---- zone: thirds of the host's rows ---------------------------------------------------------------------------

@pytest.mark.parametrize("cy,zone", [(29.75, "upper"), (30.0, "middle"), (45.0, "middle"), (60.0, "lower")])
def test_zone_thirds_of_the_hosts_rows(cy, zone):
    """The heart's rows 0..89 (90 rows): a third is 30 rows; the boundaries belong to the lower zone."""
    r = _one((40, cy - 2, 50, cy + 2), [("heart", (0, 90, 20, 80))])
    assert (r.organ, r.zone) == ("heart", zone)


def test_zone_of_a_one_row_host():
    assert _one((40, 50, 50, 51), [("heart", (50, 51, 20, 80))]).zone == "middle"


# mutation-testing gaps (data_gen/link.py on the coverage grid) -------------------------------------------------------
# Masks on a grid of 2-pixel cells holding each cell's coverage (0..255), as `load_masks` hands them over for large
# images; every expectation below is worked out in image pixels by hand or by expanding the cells to pixels.

FULL = 255  # data_gen.segment.grid.COVERAGE_FULL: a cell wholly inside the mask


def _grid_one(box, organs, shape, cell=2, bounds=False, cfg=None, **image):
    """`link_lesions` for one box with coverage planes `[(name, uint8 [ceil(H / cell), ceil(W / cell)])]`;
    `bounds`: pass each plane's bounding box on the grid (end-exclusive), as `load_masks` does."""
    planes = np.stack([p for _, p in organs])
    known = None
    if bounds:
        known = []
        for p in planes:
            rows, cols = np.flatnonzero(p.any(axis=1)), np.flatnonzero(p.any(axis=0))
            known.append([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1])
        known = np.asarray(known, np.int64)
    masks = OrganMasks(names=[n for n, _ in organs], masks=planes, source="test", cell=cell, bounds=known)
    return link.link_lesions(np.asarray([box], np.float64), masks, _image(*shape, **image), cfg)[0]


@pytest.mark.parametrize("bounds", [False, True], ids=["no bounds", "bounds"])
@pytest.mark.parametrize("cy,zone", [(33.75, "upper"), (34.0, "middle"), (56.75, "middle"), (57.0, "lower")])
def test_zone_thirds_of_a_host_on_the_coverage_grid(cy, zone, bounds):
    """Heart cells: row 5 half covered (a flat top border half way through the cell: pixel row 11 only), rows
    6..39 full (pixel rows 12..79); so the heart's pixel rows are 11..79, 69 rows, thirds at rows 34 and 57.
    Reading a full end cell as one pixel row (rows 11..78), or the bounding box's offset with the wrong sign,
    moves the thirds."""
    heart = np.zeros((50, 50), np.uint8)
    heart[5, 10:40] = 128
    heart[6:40, 10:40] = FULL
    r = _grid_one((40, cy - 2, 50, cy + 2), [("heart", heart)], (100, 100), bounds=bounds)
    assert (r.organ, r.score, r.zone) == ("heart", 1.0, zone)


@pytest.mark.parametrize("cy,zone", [(60.25, "upper"), (60.5, "middle"), (80.5, "middle"), (81.0, "lower")])
def test_a_host_reaching_the_ragged_last_row_of_cells_ends_at_the_images_last_row(cy, zone):
    """101 x 120 image, cells of 2: the last row of cells holds only pixel row 100. The heart's cells are rows
    20..50 (full): pixel rows 40..100, 61 rows, thirds at 40 + 61/3 = 60.33 and 40 + 122/3 = 80.67. Clipping its
    end to the grid (row 101) or to the image width instead of the height moves them."""
    heart = np.zeros((51, 60), np.uint8)
    heart[20:51, 10:50] = FULL
    r = _grid_one((50, cy - 2, 60, cy + 2), [("heart", heart)], (101, 120), bounds=True)
    assert (r.organ, r.score, r.zone) == ("heart", 1.0, zone)


@pytest.mark.parametrize("cells", [(slice(30, 35), slice(20, 25)), (slice(20, 25), slice(30, 35))],
                         ids=["below", "right"])
def test_nearest_organ_distance_on_the_coverage_grid_is_in_image_pixels(cells):
    """The liver's cells 30..34 (pixels 60..69) below or right of the box (pixels 40..50): the nearest cell
    centre is pixel 61, 11 pixels from the box edge (from cell centres, as rule 5 says for a grid)."""
    liver = np.zeros((50, 50), np.uint8)
    liver[cells] = FULL
    r = _grid_one((40, 40, 50, 50), [("liver", liver)], (100, 100), cfg={"max_distance_px": 15}, modality="ct")
    assert (r.organ, r.method, r.score, r.distance_px, r.distance_mm) == ("liver", "nearest", 0.0, 11.0, None)


@pytest.mark.parametrize("col_direction,cxs", [("L", (40, 56)), ("R", (40, 24))])
def test_liver_lobes_on_the_coverage_grid(col_direction, cxs):
    """The liver fills image columns 0..79 (cells 0..39) evenly: 60% of it, from the patient's right, is its 48
    columns 0..47 ('L': the patient's right is image-left) or 32..79 ('R'). Box centres 8 pixels either side of
    that border lie in the right lobe (first) and the left lobe (second)."""
    liver = np.zeros((50, 50), np.uint8)
    liver[20:30, 0:40] = FULL
    got = [_grid_one((cx - 2, 45, cx + 2, 55), [("liver", liver)], (100, 100), modality="ct",
                     col_direction=col_direction).location for cx in cxs]
    assert got == ["right lobe of liver", "left lobe of liver"]


def test_a_containment_tie_on_the_coverage_grid_goes_to_the_higher_iou_by_coverage_area():
    """Both masks hold the whole box (8 x 8 pixels). The heart's core is 6 x 6 full cells inside a ring of 64
    cells a quarter covered: 144 + 64.25 = 208.25 pixels, less than the aorta's 8 x 8 full cells (256 pixels),
    though it touches more cells (100). The IoU, with areas in pixels of coverage, picks the heart, although the
    aorta sorts first by name; counting touched cells (400 pixels) would pick the aorta."""
    aorta = np.zeros((50, 50), np.uint8)
    aorta[10:18, 10:18] = FULL
    heart = np.zeros((50, 50), np.uint8)
    heart[9:19, 9:19] = 64
    heart[11:17, 11:17] = FULL
    box = (24, 24, 32, 32)
    pixels = {n: np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) / FULL for n, p in (("aorta", aorta), ("heart", heart))}
    inter = {n: p[24:32, 24:32].sum() for n, p in pixels.items()}
    assert inter == {"aorta": 64.0, "heart": 64.0}
    iou = {n: inter[n] / (64 + p.sum() - inter[n]) for n, p in pixels.items()}
    assert iou["heart"] > iou["aorta"]  # 64 / 208.25 vs 64 / 256
    r = _grid_one(box, [("aorta", aorta), ("heart", heart)], (100, 100), modality="ct")
    assert (r.organ, r.score, r.method) == ("heart", 1.0, "containment")


def test_float32_boxes_give_sizes_rounded_in_float64():
    """Detector boxes often arrive as float32. The size in mm is rounded to a tenth as a float64: 7.2, not the
    float32 7.2 that reads back as 7.199999809... (what a float32 computation hands to the rationale)."""
    boxes = np.asarray([(30, 40, 40.3, 50.26)], np.float32)
    r = link.link_lesions(boxes, OrganMasks(names=[], masks=np.zeros((0, 100, 100), bool)),
                          _image(spacing=(0.5, 0.7)), None)[0]
    assert [float(v) for v in r.size_mm] == [7.2, 5.1]


@pytest.mark.parametrize("rows,winner_covers_more", [(62, True), (59, False)])
def test_a_near_tie_in_containment_is_decided_by_iou_in_image_pixels(rows, winner_covers_more):
    """Rule 2 ties containments within 1e-6, then takes the higher IoU, all in image pixels. Cells of 4 pixels:
    two masks fill the same `rows` x 64 cells, except the cell at the box's top-left corner (which holds one
    pixel of the 64 x 64 box): 255 in one, 254 in the other. The fuller mask wins 1/255 pixel of intersection
    (containments 1/1044480 apart: tied) for 16/255 pixel of area; whether that raises its IoU depends on the
    areas (62 rows: 63488 pixels, it does; 59 rows: 60416 pixels, it does not), so areas in any other unit (per
    cell, x 255 instead of / 255, x cell^3) pick the other mask."""
    fuller = np.zeros((80, 80), np.uint8)
    fuller[:rows, :64] = FULL
    thinner = fuller.copy()
    thinner[15, 15] = FULL - 1
    box = (63, 63, 127, 127)  # pixels 63..126: the corner cell (15, 15) holds pixel (63, 63) only
    planes = {"fuller": fuller, "thinner": thinner}
    pixels = {n: np.repeat(np.repeat(p, 4, axis=0), 4, axis=1) / FULL for n, p in planes.items()}
    inter = {n: p[63:127, 63:127].sum() for n, p in pixels.items()}
    assert 0 < (inter["fuller"] - inter["thinner"]) / 4096 < 1e-6
    iou = {n: inter[n] / (4096 + p.sum() - inter[n]) for n, p in pixels.items()}
    assert (iou["fuller"] > iou["thinner"]) == winner_covers_more
    # the IoU winner is named "heart", the other "aorta" (first by name)
    names = {n: "heart" if (n == "fuller") == winner_covers_more else "aorta" for n in planes}
    organs = sorted((names[n], p) for n, p in planes.items())
    r = _grid_one(box, organs, (320, 320), cell=4, modality="ct")
    assert r.organ == "heart"
    assert r.score == pytest.approx(inter["fuller" if winner_covers_more else "thinner"] / 4096, abs=1e-12)
