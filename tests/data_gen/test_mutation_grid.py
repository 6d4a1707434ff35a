"""The linking grid (`data_gen.segment.grid`) against brute force: what mutation testing (`make mutation`,
benchmarks/results/mutation.md) found unpinned.

Every reference value comes from plain loops over pixels or cells written from the module docstring's rules (pixel
centres for nearest, a cell's pixels for area, full-resolution counting for boxes), never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.segment import grid, resample_nearest


def _nearest(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Output pixel (i, j) is the source pixel holding its centre: row floor((i + 1/2) h / H), in integers."""
    h, w = plane.shape[-2:]
    out = np.empty(plane.shape[:-2] + tuple(shape), plane.dtype)
    for i in range(shape[0]):
        for j in range(shape[1]):
            out[..., i, j] = plane[..., (2 * i + 1) * h // (2 * shape[0]), (2 * j + 1) * w // (2 * shape[1])]
    return out


def _cell_means(grey: np.ndarray, cell: int) -> np.ndarray:
    """Mean of each `cell` x `cell` cell; the last row/column of cells filled with copies of the image's edge."""
    h, w = grey.shape
    gh, gw = -(-h // cell), -(-w // cell)
    out = np.empty((gh, gw))
    for i in range(gh):
        for j in range(gw):
            rows = [min(r, h - 1) for r in range(i * cell, (i + 1) * cell)]
            cols = [min(c, w - 1) for c in range(j * cell, (j + 1) * cell)]
            out[i, j] = np.mean([float(grey[r, c]) for r in rows for c in cols])
    return out


def _footprint_means(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Output pixel i covers source rows [i h / H, (i + 1) h / H) (columns alike); a partly covered source pixel
    weighs by its covered share."""
    def weights(n, m):
        s = n / m
        return np.array([[max(0.0, min((i + 1) * s, r + 1) - max(i * s, r)) / s for r in range(n)]
                         for i in range(m)])
    return weights(grey.shape[0], shape[0]) @ grey.astype(np.float64) @ weights(grey.shape[1], shape[1]).T


def _box_counts(masks: np.ndarray, ranges) -> np.ndarray:
    """Cells of each mask inside each range, one cell at a time."""
    out = np.zeros((len(ranges), masks.shape[0]), np.int64)
    for i, (r0, r1, c0, c1) in enumerate(np.asarray(ranges).tolist()):
        for k in range(masks.shape[0]):
            out[i, k] = sum(int(masks[k, r, c]) for r in range(r0, r1) for c in range(c0, c1))
    return out


# mutation-testing gaps (data_gen/segment/grid.py) ------------------------------------------------------------------

@pytest.mark.parametrize("h, w, max_side, want", [
    (100, 80, 0, 1), (1024, 700, 1024, 1), (1025, 10, 1024, 2), (4096, 100, 1024, 4), (100, 9000, 1024, 16),
    (3000, 2500, 64, 64)])
def test_cell_is_the_smallest_power_of_two_whose_grid_fits(h, w, max_side, want):
    """A cell that stops doubling after 2 (or grows otherwise) leaves grids longer than `max_side` (or never
    returns) for images more than twice the limit."""
    if max_side:
        assert want == min(2 ** e for e in range(20) if -(-max(h, w) // 2 ** e) <= max_side)
    assert grid.cell_for(h, w, max_side) == want


@pytest.mark.parametrize("src, shape", [((5, 7), (8, 11)), ((9, 13), (4, 5)), ((7, 3), (3, 10)), ((5, 5), (5, 5))])
def test_resample_nearest_takes_the_pixel_under_each_centre(src, shape):
    """Up, down and mixed scaling of a plane and of a stack of planes: a shifted centre, a wrong scale, a clip one
    pixel short or an axis mixed up picks other pixels (odd source sides: no centre falls on a pixel border)."""
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 250, (3,) + src).astype(np.uint8)
    got = resample_nearest(stack, shape)
    assert got.shape == (3,) + shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _nearest(stack, shape))
    np.testing.assert_array_equal(resample_nearest(stack[1], shape), _nearest(stack[1], shape))


@pytest.mark.parametrize("size, cell", [((8, 7), 2), ((7, 8), 2), ((11, 13), 4), ((12, 8), 4)])
def test_area_resize_onto_a_grid_averages_each_cells_pixels(size, cell):
    """The grid's last row/column of cells holds the image's ragged edge: padded with copies of the edge (not
    zeros), in either axis alone, so a bright edge is not diluted and no cell mixes in its neighbour's pixels."""
    grey = np.random.default_rng(2).integers(0, 256, size).astype(np.uint8)
    grey[-1, :] = 255
    grey[:, -1] = 255
    shape = grid.grid_shape(size[0], size[1], cell)
    got = grid.area_resize(grey, shape)
    assert got.shape == shape and got.dtype == np.uint8
    assert np.abs(got - _cell_means(grey, cell)).max() <= 1


@pytest.mark.parametrize("side, max_side", [(2049, 64), (8128, 64), (1025, 32), (2050, 1024)])
def test_area_resize_uses_the_grids_own_cell_not_the_side_over_the_cell_count(side, max_side):
    """`cell_for` gives a 2049-pixel side 64-pixel cells (33 of them), but ceil(2049 / 33) is 63: a cell size
    taken from that put cell i over pixels 63 i .. 63 i + 62, and a mask filling exactly cells 0..19 came out with
    coverage 81 in cell 20."""
    cell = grid.cell_for(side, side, max_side)
    shape = grid.grid_shape(side, side, cell)
    plane = np.zeros((side, side), bool)
    plane[: 20 * cell, : 20 * cell] = True
    cov = grid.fit_plane(plane, shape, coverage=True)
    want = np.zeros(shape, np.uint8)
    want[:20, :20] = 255
    np.testing.assert_array_equal(cov, want)


def test_area_resize_to_a_shape_that_is_no_grid_averages_footprints():
    """A shape that is not the image's grid at any cell size (a mask on its own grid, resampled) is a plain area
    resize: padding it as if it were a grid shifts every output pixel."""
    grey = np.random.default_rng(3).integers(0, 256, (10, 10)).astype(np.uint8)
    got = grid.area_resize(grey, (3, 7))
    assert got.shape == (3, 7)
    assert np.abs(got - _footprint_means(grey, (3, 7))).max() <= 1


@pytest.mark.parametrize("src, shape, cell", [
    ((8, 12), (4, 6), 2),  # finer in both axes: the grid of cell 2
    ((9, 2), (3, 1), 4),  # the grid of cell 4: its last row of cells holds 1 row and 3 copies, its column 2 + 2
    ((8, 12), (8, 6), None),  # as many rows, finer columns: no grid, a plain area resize
    ((12, 8), (6, 8), None),  # finer rows, as many columns
    ((2, 9), (1, 3), None),  # fewer rows than the target has columns
])
def test_fit_plane_from_a_finer_plane_holds_each_cells_coverage(src, shape, cell):
    """Finer (or as fine) in both axes: by area, the share of the cell's pixels in the mask as 0..255, and as
    bool at least half of them; nearest instead would give 0/255 cells."""
    plane = np.random.default_rng(sum(src)).random(src) < 0.5
    ref = _footprint_means(plane, shape) if cell is None else _cell_means(plane, cell)
    cov = grid.fit_plane(plane, shape, coverage=True)
    assert cov.shape == shape and cov.dtype == np.uint8
    assert np.abs(cov - 255 * ref).max() <= 1
    cells = grid.fit_plane(plane, shape, coverage=False)
    assert cells.dtype == bool
    np.testing.assert_array_equal(cells, ref >= 0.5)


@pytest.mark.parametrize("src, shape", [((3, 5), (7, 11)), ((8, 3), (4, 7)), ((3, 8), (7, 4)), ((5, 7), (5, 7))])
def test_fit_plane_from_a_coarser_or_equal_plane_is_nearest(src, shape):
    """Coarser in either axis (or the same grid): nearest neighbour by pixel centres, 0/255 as coverage and the
    plane's own values as bool; an area resize would invent partial cells, a 1 outside would count."""
    plane = np.random.default_rng(sum(src)).random(src) < 0.5
    want = _nearest(plane, shape)
    cov = grid.fit_plane(plane, shape, coverage=True)
    assert cov.shape == shape and cov.dtype == np.uint8
    np.testing.assert_array_equal(cov, np.where(want, 255, 0))
    cells = grid.fit_plane(plane, shape, coverage=False)
    assert cells.dtype == bool
    np.testing.assert_array_equal(cells, want)


@pytest.mark.parametrize("inside", [127, 128])
def test_a_bool_cell_holds_the_mask_from_half_of_its_pixels(inside):
    """255 pixels into one cell: 127 inside is under half (coverage 127, out), 128 over (128, in); a threshold
    one step off either way flips one of them."""
    plane = np.zeros((15, 17), bool)
    plane.flat[:inside] = True
    assert grid.fit_plane(plane, (1, 1), coverage=True).tolist() == [[inside]]
    assert grid.fit_plane(plane, (1, 1), coverage=False).tolist() == [[2 * inside >= 15 * 17]]
    two_of_four = np.array([[True, False], [False, True]])
    assert grid.fit_plane(two_of_four, (1, 1), coverage=False).tolist() == [[True]]


def test_full_value_is_one_for_bool_masks_and_255_for_coverage():
    """Counts are divided by it: a bool mask's cell is worth 1 pixel, a coverage cell 255."""
    assert grid.full_value(np.zeros((1, 2, 2), bool)) == 1
    assert grid.full_value(np.zeros((1, 2, 2), np.uint8)) == grid.COVERAGE_FULL == 255


def test_mask_bounds_are_int64_boxes_also_for_an_empty_mask():
    """Bounds of several masks are stacked into one array that counting slices with: one float row (the empty
    mask's) turns them all into floats, and the bounded crop count fails."""
    rng = np.random.default_rng(4)
    planes = np.zeros((3, 9, 14), np.uint8)
    planes[0, 2:5, 3:12] = (rng.random((3, 9)) < 0.7) * 255
    planes[0, 2, 3] = planes[0, 4, 11] = 255
    planes[2, 8, 0] = 17
    bounds = [grid.mask_bounds(p) for p in planes]
    for b, p in zip(bounds, planes):
        assert b.dtype == np.int64
        rows, cols = np.nonzero(p)
        want = [rows.min(), rows.max() + 1, cols.min(), cols.max() + 1] if len(rows) else [0, 0, 0, 0]
        assert b.tolist() == want
    stacked = np.stack(bounds)
    ranges = np.array([[0, 9, 0, 14], [3, 9, 0, 8]])
    got = grid.grid_box_counts(planes, ranges * 2, 2, "crop", bounds=stacked)  # whole cells of 2 x 2 pixels
    np.testing.assert_allclose(got, _box_counts(planes, ranges) * 4 / 255)


def test_counts_with_mask_bounds_are_int64():
    """The bounded crop count (masks with known bounds, the linker's usual path) returns exact int64 counts like
    the other methods, not floats."""
    rng = np.random.default_rng(5)
    masks = rng.random((4, 12, 20)) < 0.3
    masks[2] = False
    bounds = np.stack([grid.mask_bounds(p) for p in masks])
    ranges = np.array([[0, 12, 0, 20], [2, 7, 5, 19], [11, 12, 0, 1]])
    got = grid.box_mask_counts(masks, ranges, "crop", bounds=bounds)
    assert got.dtype == np.int64 and got.tolist() == _box_counts(masks, ranges).tolist()
    on_grid = grid.grid_box_counts(masks, ranges, 1, bounds=bounds)
    assert on_grid.dtype == np.int64 and on_grid.tolist() == got.tolist()


def test_crop_counts_of_a_transposed_mask_stack():
    """A stack whose rows are not contiguous (a transposed view) cannot be viewed as uint64 words: it must take
    the plain sum, not the popcount path that only checks the wrong axis's stride."""
    base = np.random.default_rng(6).random((3, 40, 11)) < 0.4
    masks = base.transpose(0, 2, 1)  # [3, 11, 40]; strides (440, 1, 11)
    ranges = np.array([[0, 11, 0, 40], [2, 9, 3, 37], [1, 4, 8, 32]])
    got = grid.box_mask_counts(masks, ranges, "crop")
    assert got.tolist() == _box_counts(masks, ranges).tolist()


def test_crop_counts_of_a_box_over_512_columns_wide():
    """A wide box's 8-aligned middle is popcounted; its end columns must be whole column indices."""
    masks = np.random.default_rng(7).random((2, 3, 640)) < 0.5
    ranges = np.array([[0, 3, 0, 600], [1, 3, 5, 633]])
    want = np.array([[m[r0:r1, c0:c1].sum() for m in masks] for r0, r1, c0, c1 in ranges.tolist()])
    assert grid.box_mask_counts(masks, ranges, "crop").tolist() == want.tolist()


def test_summed_area_counts_past_the_int32_range():
    """A coverage grid of 3000 x 3000 cells sums to more than 2**31 (255 per full cell): the tables must be int64
    there; int32 tables wrap to negative counts."""
    masks = np.full((1, 3000, 3000), grid.COVERAGE_FULL, np.uint8)
    masks[0, 0, :7] = 3
    ranges = np.array([[0, 3000, 0, 3000], [0, 1, 0, 3000], [1500, 3000, 0, 3000]])
    want = [[255 * 3000 * 3000 - 7 * 252], [255 * 3000 - 7 * 252], [255 * 1500 * 3000]]
    assert want[0][0] > 2 ** 31
    assert grid.box_mask_counts(masks, ranges, "sat").tolist() == want


def test_empty_ranges_count_zero_with_every_method():
    """A range without rows or columns holds no cells: 0 with every method, 'auto' included (its area estimate
    must not divide by a zero width)."""
    masks = np.ones((2, 6, 9), bool)
    ranges = np.array([[1, 5, 4, 4], [3, 3, 0, 9], [0, 6, 0, 9]])
    for method in ("crop", "sat", "auto"):
        assert grid.box_mask_counts(masks, ranges, method).tolist() == [[0, 0], [0, 0], [54, 54]], method
