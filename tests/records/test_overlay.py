"""medclm_jax.records.overlay: the Easy view's drawn box."""

import numpy as np
import pytest
from PIL import Image

from medclm_jax.records import overlay


def test_outline_is_drawn_inside_the_box_and_nothing_else_changes():
    img = np.full((100, 200), 50, np.uint8)
    out = overlay.draw_box(img, [0.25, 0.2, 0.75, 0.8], thickness=2)
    assert out.shape == (100, 200, 3) and out.dtype == np.uint8
    red = np.all(out == [255, 0, 0], axis=-1)
    # pixel box: x 50..149, y 20..79 inclusive
    assert red[20, 50] and red[79, 149] and red[21, 51] and red[50, 50] and red[50, 149] and red[20, 100]
    assert not red[22, 52] and not red[50, 100]  # interior
    assert not red[19, 50] and not red[20, 49] and not red[80, 149] and not red[79, 150]  # outside
    assert red.sum() == 2 * 2 * 100 + 2 * 2 * (60 - 4)
    assert np.all(out[~red] == 50)
    assert np.all(img == 50)  # input untouched


def test_rgb_input_keeps_its_colours_outside_the_outline():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = overlay.draw_box(img, [0, 0, 1, 1], thickness=1)
    assert np.all(out[1:-1, 1:-1] == img[1:-1, 1:-1])
    assert np.all(out[0] == [255, 0, 0]) and np.all(out[:, -1] == [255, 0, 0])


def test_default_outline_stays_visible_at_the_models_resolution():
    img = np.full((896, 896), 128, np.uint8)
    out = overlay.draw_box(img, [0.3, 0.3, 0.6, 0.6])
    small = np.asarray(Image.fromarray(out).resize((224, 224), Image.Resampling.BILINEAR)).astype(int)
    redness = small[..., 0] - small[..., 1]
    assert redness[int(0.45 * 224), int(0.3 * 224) + 1] > 60  # the left edge survives the 4x downscale
    assert redness[112, 112] == 0


@pytest.mark.parametrize("box", [[0.5, 0.5, 0.5, 0.9], [0.1, 0.2, 0.3]])
def test_empty_or_malformed_boxes_raise(box):
    with pytest.raises(ValueError):
        overlay.draw_box(np.zeros((8, 8), np.uint8), box)


def test_tiny_box_is_still_drawn():
    out = overlay.draw_box(np.zeros((50, 50), np.uint8), [0.5, 0.5, 0.501, 0.501])
    assert np.all(out == [255, 0, 0], axis=-1).sum() >= 1
