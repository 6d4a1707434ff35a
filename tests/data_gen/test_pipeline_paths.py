"""`pipeline.convert_image` on the paths a clean phantom build never takes: a crash inside one image becomes a
counted reject, missing or empty organ masks fall back to the built-in segmenter, degenerate and non-finite boxes
are rejected one by one, and an image over `image.max_side` is stored downscaled with its aspect, values and boxes.

Every image is a PNG the test draws, so the expected records are known without running the pipeline's helpers.
"""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_gen import phantom
from data_gen.build import run_build
from data_gen.config import load_dataset_config
from data_gen.phantom import cxr
from data_gen.pipeline import convert_image
from data_gen.types import ImageItem, LesionAnnotation
from medclm_jax.records import schema as S

VOCAB = {"xray": ["nodule", "pleural effusion"]}


def _cfg(root, *sets):
    return load_dataset_config("phantom", f"root={root}", list(sets))


def _png(path, pixels):
    Image.fromarray(pixels).save(path)
    return str(path)


def _item(path, boxes, mask_ref=None, key="img"):
    lesions = [LesionAnnotation(box=tuple(float(v) for v in b), label="nodule", row=f"rows.csv:{i}")
               for i, b in enumerate(boxes)]
    return ImageItem(path=str(path), source="test", image_key=key, patient_key="p1", lesions=lesions,
                     modality="xray", mask_ref=mask_ref)


def _stored(record):
    return np.asarray(Image.open(io.BytesIO(record[S.IMAGE_ENCODED])))


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    """A 256 px phantom radiograph with one nodule: (png path, nodule pixel box, the drawn organs)."""
    root = tmp_path_factory.mktemp("cxr")
    r = cxr.chest_radiograph(np.random.default_rng(0), 256, ["Nodule"])
    assert len(r.lesions) == 1
    return _png(root / "cxr.png", (r.image * 255).astype(np.uint8)), r.lesions[0].box, r.organs


# ---- any exception is a counted reject --------------------------------------------------------------------------

class _CrashingSynthesizer:
    name = "crash"

    def synthesize(self, inp):
        raise RuntimeError("backend exploded on purpose")


def test_an_exception_inside_one_image_becomes_an_image_reject_and_one_per_lesion(radiograph, tmp_path):
    path, box, _ = radiograph
    item = _item(path, [box, (10, 10, 30, 30)])
    ok = convert_image(item, _cfg(tmp_path), VOCAB)
    result = convert_image(item, _cfg(tmp_path), VOCAB, _CrashingSynthesizer())
    assert result.examples == [] and result.image_id == ok.image_id
    image, *lesions = result.rejects
    assert (image.kind, image.reason) == ("image", "unexpected_error:RuntimeError")
    assert "backend exploded on purpose" in image.detail and image.item == f"test:{ok.image_id}"
    assert [(r.kind, r.item, r.reason, r.detail) for r in lesions] == [
        ("lesion", f"test:{ok.image_id}:rows.csv:{i}", "image_rejected", "unexpected_error:RuntimeError")
        for i in range(2)]


def test_a_crash_in_one_image_is_counted_by_the_build_and_the_others_are_written(tmp_path, monkeypatch):
    from data_gen import link

    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    phantom.write_phantom(raw, 4, seed=5, cxr_size=128, ct_size=128)
    calls = []

    def link_lesions_crashing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("first linked image")
        return original(*args, **kwargs)

    original = link.link_lesions
    monkeypatch.setattr(link, "link_lesions", link_lesions_crashing_once)
    info = run_build(_cfg(raw), out, workers=1, progress=False)
    t = info["counts"]["total"]
    assert len(calls) > 1 and t["images_written"] >= 1
    assert info["rejects"]["by_reason"]["image:unexpected_error:ZeroDivisionError"] == 1
    assert t["images_in"] == t["images_written"] + t["images_rejected"] == 4
    assert t["lesions_in"] == t["lesion_records"] + t["lesions_rejected"]
    logged = [json.loads(line) for f in glob.glob(os.path.join(out, "**", "rejects.jsonl"), recursive=True)
              for line in open(f)]
    assert sum(r["reason"] == "unexpected_error:ZeroDivisionError" for r in logged) == 1


# ---- organ masks: fallback to the built-in segmenter ------------------------------------------------------------

@pytest.mark.parametrize("masks", ["missing", "empty"])
def test_missing_or_empty_masks_fall_back_to_the_builtin_segmenter(radiograph, tmp_path, masks):
    path, box, organs = radiograph
    ref = tmp_path / "masks"
    if masks == "empty":
        ref.mkdir()
        _png(ref / "right lung.png", np.zeros((256, 256), np.uint8))
    item = _item(path, [box], mask_ref=str(ref))
    result = convert_image(item, _cfg(tmp_path), VOCAB)
    assert result.stats[f"masks_fallback:{masks}_masks"] == 1 and result.stats["masks_source:builtin"] == 1
    # the diagnostics name the mask reference and the reason; the image itself is not lost
    (note,) = [r for r in result.rejects if r.kind == "masks"]
    assert note.reason == f"masks_fallback:{masks}_masks" and result.written
    (record,) = result.examples
    # The phantom drew the nodule in one lung; the built-in segmenter's lung (or a zone of it) must host it.
    side = next(s for s in ("right lung", "left lung") if organs[s][box[1]:box[3], box[0]:box[2]].any())
    organ = record[S.LESION_ORGAN]
    assert "lung" in organ and side.split()[0] in organ, (organ, side)

    off = convert_image(item, _cfg(tmp_path, "masks.builtin=false"), VOCAB)
    assert off.stats[f"masks_fallback:{masks}_masks"] == 1 and off.stats["masks_source:none"] == 1
    assert (off.examples[0][S.LESION_ORGAN], off.examples[0][S.LESION_ORGAN_METHOD]) == ("unknown", "none")


# ---- boxes: degenerate, non-finite, outside, clipped -------------------------------------------------------------

def test_zero_area_nan_infinite_and_outside_boxes_are_rejected_one_by_one(radiograph, tmp_path):
    path, box, _ = radiograph
    boxes = [box,
             (200, 10, 300, 40),  # partly outside the 256 px image: clipped, kept
             (50, 60, 50, 90),  # zero width
             (50, 60, 80, 60),  # zero height
             (float("nan"), 10, 30, 30),
             (10, 10, float("inf"), 30),
             (300, 300, 340, 340)]  # wholly outside
    result = convert_image(_item(path, boxes), _cfg(tmp_path), VOCAB)
    assert [r.reason for r in result.rejects] == ["box_zero_area", "box_zero_area", "box_not_finite",
                                                  "box_not_finite", "box_outside"]
    assert [r.item.rsplit(":", 1)[1] for r in result.rejects] == ["2", "3", "4", "5", "6"]
    assert result.stats["boxes_clipped"] == 1 and len(result.examples) == 2
    stored = [tuple(np.round(np.asarray(r[S.LESION_BOX]) * 256, 3)) for r in result.examples]
    assert sorted(stored) == sorted([tuple(float(v) for v in box), (200.0, 10.0, 256.0, 40.0)])
    for record in result.examples:
        assert np.isfinite(record[S.LESION_BOX]).all()

    none_left = convert_image(_item(path, boxes[2:]), _cfg(tmp_path), VOCAB)
    assert none_left.examples == []
    assert [r.reason for r in none_left.rejects].count("no_valid_lesions") == 1
    assert len(none_left.rejects) == len(boxes[2:]) + 1


# ---- resize to image.max_side ------------------------------------------------------------------------------------

def test_an_image_over_max_side_is_stored_downscaled_with_its_aspect_values_and_box(tmp_path):
    h, w = 700, 1200  # landscape, long side over the default max_side
    pixels = np.tile(np.linspace(0, 255, w), (h, 1)).round().astype(np.uint8)  # left-to-right ramp 0..255
    box = (840, 210, 960, 330)  # a bright square lesion, 120 px
    pixels[box[1]:box[3], box[0]:box[2]] = 255
    pixels[box[1]:box[3], box[0]:box[0] + 10] = 0  # a dark left edge, so the square is not just "the right end"
    path = _png(tmp_path / "wide.png", pixels)
    cfg = _cfg(tmp_path, "masks.source=none")
    assert cfg.image.max_side == 896
    (record,) = convert_image(_item(path, [box]), cfg, VOCAB).examples
    stored = _stored(record)
    new_h, new_w = stored.shape
    assert stored.dtype == np.uint8 and (new_h, new_w) == (record[S.IMAGE_HEIGHT], record[S.IMAGE_WIDTH])
    assert new_w == 896 and abs(new_h - h * 896 / w) <= 0.5  # long side to max_side, aspect kept
    # Values: the ramp keeps its range and its level column by column (a ramp survives any sane filter).
    assert stored.min() <= 2 and stored.max() >= 253
    ramp_rows = stored[: int(0.25 * new_h)]  # above the lesion
    want = np.linspace(0, 255, w)[((np.arange(new_w) + 0.5) * w / new_w).astype(int)]
    assert np.abs(ramp_rows.mean(axis=0) - want).max() <= 2.0
    # The box, normalized on the original grid, still frames the lesion in the stored image.
    norm = np.asarray(record[S.LESION_BOX], np.float64)
    np.testing.assert_allclose(norm, np.asarray(box) / [w, h, w, h], atol=1e-6)
    x1, y1, x2, y2 = np.round(norm * [new_w, new_h, new_w, new_h]).astype(int)
    inside = stored[y1 + 2:y2 - 2, x1 + 10:x2 - 2]
    assert inside.mean() >= 250 and stored[y1 + 2:y2 - 2, x1 + 1:x1 + 5].mean() <= 10

    small = np.tile(np.linspace(0, 255, 600), (400, 1)).round().astype(np.uint8)
    (kept,) = convert_image(_item(_png(tmp_path / "small.png", small), [(10, 10, 50, 50)]), cfg, VOCAB).examples
    np.testing.assert_array_equal(_stored(kept), small)  # never upscaled, pixels untouched
