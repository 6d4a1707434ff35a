"""CXAS-scale masks: OpenCV reading equals the Pillow reader it replaced, and the linking grid (cells of 2 or 4
pixels holding their coverage) keeps containment within 0.01 of full resolution and every linking decision."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_gen import link
from data_gen.phantom.cxr import chest_radiograph
from data_gen.segment import grid, sources
from data_gen.segment.load import load_masks, to_organ_masks
from data_gen.types import ImageItem, LoadedImage

SIZE = 2048
PX_MM = 0.143  # a chest detector's pixel: a 3 mm nodule is 21 pixels


def _pillow_reader(path) -> np.ndarray:
    """The reader `read_mask_image` replaced: Pillow, grey/palette/colour as "L", then `binarize_png`."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode in ("1", "P", "RGB", "RGBA", "LA") else im)
    return sources.binarize_png(arr)


def _shapes(h: int, w: int, seed: int) -> np.ndarray:
    """An organ-like blob (a tilted ellipse with a wavy edge) as bool `[h, w]`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx, ry, rx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7), h * 0.3, w * 0.25
    ang = np.arctan2(yy - cy, xx - cx)
    r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    return r <= 1.0 + 0.08 * np.sin(5 * ang + seed)


def _write(path, plane: np.ndarray, mode: str = "L", quality: int = 90) -> None:
    im = Image.fromarray(plane)
    (im.convert(mode) if mode != im.mode else im).save(path, **({"quality": quality} if str(path).endswith(
        ".jpg") else {}))


@pytest.mark.parametrize("kind", ["png_0_255", "png_1bit", "png_0_1", "png_16bit", "jpg_0_255", "jpg_0_200"])
def test_opencv_reader_equals_the_pillow_reader(tmp_path, kind):
    m = _shapes(301, 263, 3)
    plane = {"png_0_255": m.astype(np.uint8) * 255, "png_1bit": m.astype(np.uint8) * 255,
             "png_0_1": m.astype(np.uint8), "png_16bit": m.astype(np.uint16) * 65535,
             "jpg_0_255": m.astype(np.uint8) * 255, "jpg_0_200": m.astype(np.uint8) * 200}[kind]
    path = tmp_path / ("m.jpg" if kind.startswith("jpg") else "m.png")
    if kind == "png_16bit":
        Image.fromarray(plane).save(path)
    else:
        _write(path, plane, "1" if kind == "png_1bit" else "L")
    got = sources.read_mask_image(str(path))
    assert got.dtype == bool and got.shape == m.shape
    np.testing.assert_array_equal(got, _pillow_reader(path))


@pytest.mark.parametrize("kind", ["jpg_0_255", "jpg_0_200", "png_0_255", "png_0_1"])
def test_masks_read_onto_the_grid_hold_the_coverage_of_the_full_resolution_mask(tmp_path, kind):
    h, w, cell = 1203, 1001, 2
    m = _shapes(h, w, 5)
    plane = m.astype(np.uint8) * {"jpg_0_255": 255, "jpg_0_200": 200, "png_0_255": 255, "png_0_1": 1}[kind]
    path = tmp_path / ("m.jpg" if kind.startswith("jpg") else "m.png")
    _write(path, plane)
    got = sources.read_mask_image(str(path), (h, w), cell)
    want = grid.fit_plane(_pillow_reader(path), grid.grid_shape(h, w, cell), coverage=True)
    assert got.dtype == np.uint8 and got.shape == (602, 501)
    diff = np.abs(got.astype(int) - want)
    # PNG: the same coverage; JPEG (decoded at half size by libjpeg): within 2% of a cell, and only at the border.
    assert diff.max() <= (0 if kind.startswith("png") else 5)
    assert (got[want == 255] >= 250).all() and (got[want == 0] <= 5).all()


def test_grid_counts_equal_pixel_counts_when_each_cell_is_whole():
    """A mask made of whole cells has no sub-cell detail to lose: the weighted cell counts must equal the pixel
    counts exactly, for boxes with edges anywhere in a cell, at the image's ragged last row/column too."""
    rng = np.random.default_rng(0)
    h, w = 203, 157  # not multiples of the cells
    for cell in (2, 4):
        gh, gw = grid.grid_shape(h, w, cell)
        cells = rng.random((3, gh, gw)) < 0.5
        full = np.repeat(np.repeat(cells, cell, axis=1), cell, axis=2)[:, :h, :w]
        coverage = np.where(cells, np.uint8(grid.COVERAGE_FULL), np.uint8(0))
        x1, y1 = rng.uniform(-5, w, 60), rng.uniform(-5, h, 60)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 60, 60), y1 + rng.uniform(0.5, 60, 60)], axis=1)
        boxes = np.concatenate([boxes, [[w - 3.5, h - 2.2, w + 4, h + 4], [0, 0, 1, 1]]])
        ranges = grid.pixel_ranges(boxes, h, w)
        want = grid.box_mask_counts(full, ranges)
        bounds = np.stack([grid.mask_bounds(p) for p in coverage])
        for method, known in (("crop", None), ("crop", bounds), ("sat", None)):
            got = grid.grid_box_counts(coverage, ranges, cell, method, bounds=known)
            np.testing.assert_allclose(got, want, atol=1e-9)


# ---- realistic shapes at CXAS scale --------------------------------------------------------------------------------

def _rib(row: float, c0: float, c1: float, sag: float, thickness: float) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    cols = np.arange(int(c0), int(c1))
    t = (cols - c0) / (c1 - c0)
    centre = row + sag * 4 * t * (1 - t)
    for dr in range(int(thickness)):
        m[np.clip((centre + dr).astype(int), 0, SIZE - 1), cols] = True
    return m


@pytest.fixture(scope="module")
def chest():
    """The phantom's lungs, zones and heart at 2048 px, plus rib shadows (the overlays of link rule 3)."""
    organs = dict(chest_radiograph(np.random.default_rng(7), SIZE, []).organs)
    organs["right posterior 5th rib"] = _rib(0.40 * SIZE, 0.12 * SIZE, 0.47 * SIZE, 0.06 * SIZE, 40)
    organs["left posterior 7th rib"] = _rib(0.55 * SIZE, 0.53 * SIZE, 0.88 * SIZE, 0.05 * SIZE, 36)
    names = list(organs)
    return names, np.stack([organs[n] for n in names])


def _boxes(full: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Lesion boxes of clinical sizes (3-6 mm nodules, 10-60 mm masses) centred on organ borders (where the grid
    can differ most) and anywhere inside the lungs."""
    places = [np.nonzero(m ^ np.roll(m, 1, axis=a)) for m in full for a in (0, 1)]
    places.append(np.nonzero(full[0] | full[1]))
    out = []
    for i in range(n):
        ys, xs = places[rng.integers(len(places) - 1)] if i % 3 else places[-1]
        j = rng.integers(len(ys))
        mm = rng.choice([3.0, 4.0, 6.0, 10.0, 20.0, 40.0, 60.0]) * rng.uniform(0.85, 1.15, 2)
        bw, bh = mm / PX_MM
        cx, cy = xs[j] + rng.uniform(-2, 2), ys[j] + rng.uniform(-2, 2)
        out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return np.asarray(out)


@pytest.mark.parametrize("cell, bound", [(2, 0.01), (4, 0.05)])
def test_containment_on_the_grid_stays_close_to_full_resolution(chest, cell, bound):
    """The default grid (1024: cells of 2 at 2048 px) within 0.01; a 512 grid (cells of 4) within 0.05 (measured:
    0.03 for a 3 mm nodule whose edge runs along a zone border)."""
    names, full = chest
    boxes = _boxes(full, np.random.default_rng(cell), 300)
    assert ((boxes[:, 2] - boxes[:, 0]) < 25).sum() > 10  # small nodules are among them
    ranges = grid.pixel_ranges(boxes, SIZE, SIZE)
    area = ((ranges[:, 1] - ranges[:, 0]) * (ranges[:, 3] - ranges[:, 2]))[:, None]
    om, _ = to_organ_masks(names, full, (SIZE, SIZE), "test", cell)
    assert om.cell == cell and om.masks.shape[1:] == (SIZE // cell, SIZE // cell)
    exact = grid.box_mask_counts(full, ranges) / area
    on_grid = grid.grid_box_counts(om.masks, ranges, cell, bounds=om.bounds) / area
    assert np.abs(on_grid - exact).max() <= bound


def test_linking_on_jpeg_masks_read_onto_the_grid_decides_as_at_full_resolution(chest, tmp_path):
    """The real path: CXAS-style JPEG masks of a 2048 px radiograph read by `load_masks` onto the default grid
    (1024: cells of 2 pixels) and at full resolution; every lesion gets the same organ, method, zone, side."""
    names, full = chest
    folder = tmp_path / "masks"
    folder.mkdir()
    for name, m in zip(names, full):
        _write(folder / f"{name}.jpg", m.astype(np.uint8) * 255)
    item = ImageItem(path="img.dcm", source="test", image_key="img", patient_key="p", mask_ref=str(folder))
    image = LoadedImage(pixels=np.zeros((SIZE, SIZE), np.uint8), modality="xray", spacing_mm=(PX_MM, PX_MM))
    on_grid = load_masks(item, image, {"source": "png_dir"})
    at_full = load_masks(item, image, {"source": "png_dir", "grid_max_side": 0})
    assert on_grid.cell == 2 and on_grid.masks.shape == (len(names), 1024, 1024)
    assert on_grid.masks.nbytes * 4 == at_full.masks.nbytes and at_full.cell == 1
    boxes = _boxes(full, np.random.default_rng(11), 120)
    got, want = (link.link_lesions(boxes, om, image) for om in (on_grid, at_full))
    facts = link._OrganFacts(at_full.masks)
    zone_edge = 0
    for box, g, f in zip(boxes, got, want):
        assert (g.organ, g.method, g.laterality, g.location.split()[0]) == \
            (f.organ, f.method, f.laterality, f.location.split()[0])
        assert abs(g.score - f.score) <= 0.01
        if g.zone != f.zone:  # only for a box centred within a cell of a third of its host's height
            top, bottom = facts.rows(at_full.names.index(f.organ))
            thirds = top + (bottom + 1 - top) * np.array([1 / 3, 2 / 3])
            assert np.abs(thirds - (box[1] + box[3]) / 2).min() <= on_grid.cell
            zone_edge += 1
    assert zone_edge <= 3 and len({r.organ for r in want}) >= 6


@pytest.mark.parametrize("cell", [1, 2])
def test_organ_masks_carry_each_kept_masks_bounds_after_dropping_and_merging(cell):
    """`bounds` (which linking reads instead of whole masks) must be each kept mask's box on the grid, also when
    an empty mask is dropped and two raw names of one organ are merged (compacted in place)."""
    planes = np.zeros((4, 64, 96), bool)
    planes[0, 10:20, 30:40] = True  # heart
    planes[2, 5:9, 60:90] = True  # right lung, first part
    planes[3, 40:60, 2:7] = True  # right lung, second part
    om, stats = to_organ_masks(["heart", "liver", "right lung", "lung_right"], planes, (64, 96), "test", cell,
                               own=True)
    assert om.names == ["heart", "right lung"] and stats["empty_dropped"] == 1 and stats["merged"] == 1
    np.testing.assert_array_equal(om.bounds, np.stack([grid.mask_bounds(p) for p in om.masks]))
    assert om.bounds[1].tolist() == [5 // cell, 60 // cell, 2 // cell, 90 // cell]
