"""Curriculum views: the box drawn only for Easy, images as the checkpoint families' processors make them, targets
and loc tokens per stage, negative records, and the records that must be refused."""

import io

import numpy as np
import pytest
import record_factory
from PIL import Image

from medclm_jax.data import images, views
from medclm_jax.records import RecordError, decode_example, encode_example, schema

S = 32
BOX = (0.10, 0.20, 0.50, 0.60)
COT = "The right lung is in view. The box [0.10, 0.20, 0.50, 0.60] holds a round opacity."
DOMAINS = {"effusion_xray": 0, "no_finding_xray": 1, "nodule_xray": 2}


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def phantom_pixels(h: int = 64, w: int = 64) -> np.ndarray:
    """A grey radiograph-like picture: a dark background, a lighter body, a bright round lesion."""
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.full((h, w), 30, np.uint8)
    pixels[h // 8:-h // 8, w // 8:-w // 8] = 110
    pixels[(yy - 0.4 * h) ** 2 + (xx - 0.3 * w) ** 2 < (0.1 * min(h, w)) ** 2] = 200
    return pixels


def make_record(pixels=None, *, box=BOX, pool="easy_medium", lesion="nodule", **changes) -> dict:
    """A complete record as the input pipeline reads it (encoded, decoded, checked against the schema)."""
    pixels = phantom_pixels() if pixels is None else pixels
    rec = record_factory.make_record(image=png(pixels), height=pixels.shape[0], width=pixels.shape[1], box=box,
                                     lesion=lesion, pool=pool, cot=COT, **changes)
    schema.check_record(rec)
    return decode_example(encode_example(rec))


def red(image: np.ndarray) -> np.ndarray:
    """bool[S, S]: pure red pixels (the overlay colour) of a [-1, 1] image."""
    return (image[..., 0] > 0.9) & (image[..., 1] < -0.9) & (image[..., 2] < -0.9)


def outline(box, size, t=1) -> np.ndarray:
    """The box outline by hand: pixel xyxy from floor/ceil of the normalized box, `t` px inside it."""
    x1, y1 = int(np.floor(box[0] * size)), int(np.floor(box[1] * size))
    x2, y2 = int(np.ceil(box[2] * size)) - 1, int(np.ceil(box[3] * size)) - 1
    m = np.zeros((size, size), bool)
    m[y1:y1 + t, x1:x2 + 1] = m[y2 - t + 1:y2 + 1, x1:x2 + 1] = True
    m[y1:y2 + 1, x1:x1 + t] = m[y1:y2 + 1, x2 - t + 1:x2 + 1] = True
    return m


def view(rec, stage, size=S, **kw):
    return views.make_view(rec, stage, views.ViewSettings(size, **kw), domain_ids=DOMAINS, example_id=7)


# ---- images ---------------------------------------------------------------------------------------------------
def test_box_is_drawn_in_easy_only():
    em, hard = make_record(), make_record(pool="hard")
    easy, medium, h = view(em, "easy"), view(em, "medium"), view(hard, "hard")
    # 0.10 * 32 = 3.2 -> column 3, 0.50 * 32 -> column 15; rows 6 .. 19; 1 px (1% of 32, at least 1).
    np.testing.assert_array_equal(red(easy.image), outline(BOX, S))
    assert red(easy.image)[6, 3:16].all() and red(easy.image)[6:20, 15].all() and not red(easy.image)[10, 8]
    assert not red(medium.image).any() and not red(h.image).any()
    # Inside and outside the outline, Easy is the clean image.
    np.testing.assert_array_equal(easy.image[~outline(BOX, S)], medium.image[~outline(BOX, S)])


def test_box_stays_visible_at_a_large_model_resolution():
    easy = view(make_record(), "easy", size=224)
    # 1% of 224 = 2 px, drawn after the resize, so the outline keeps its colour and thickness.
    np.testing.assert_array_equal(red(easy.image), outline(BOX, 224, t=2))


def test_image_range_shape_and_grey_becomes_three_equal_channels():
    for family in ("paligemma", "gemma3"):
        image = view(make_record(), "medium", family=family).image
        assert image.shape == (S, S, 3) and image.dtype == np.float32
        assert image.min() >= -1 and image.max() <= 1 and image.min() < -0.7 and image.max() > 0.4
        np.testing.assert_array_equal(image[..., 0], image[..., 1])
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    image = images.model_image(png(rgb), 8, "paligemma")
    np.testing.assert_allclose(image[0, 0], [1.0, -1.0, 51 / 127.5 - 1], atol=1e-6)


@pytest.mark.parametrize("family", ["paligemma", "gemma3"])
def test_non_square_image_is_squashed_not_cropped(family):
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 20:] = 255  # right half white
    image = images.model_image(png(wide), S, family)
    assert (image[:, :15, 0] == -1).all() and (image[:, 17:, 0] == 1).all()  # the halves keep their side
    tall = np.zeros((40, 20), np.uint8)
    tall[:10] = 255  # top quarter white
    image = images.model_image(png(tall), S, family)
    assert (image[:7, :, 0] == 1).all() and (image[9:, :, 0] == -1).all()
    # A normalized box drawn on the squashed picture lands on the same normalized place.
    easy = view(make_record(wide), "easy", family=family)
    np.testing.assert_array_equal(red(easy.image), outline(BOX, S))


def test_images_equal_the_transformers_processors():
    pytest.importorskip("transformers")
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    rgb = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)
    for family, proc in (("paligemma", SiglipImageProcessorPil), ("gemma3", Gemma3ImageProcessorPil)):
        ref = proc(size={"height": 28, "width": 28})(Image.fromarray(rgb), return_tensors="np")["pixel_values"]
        ours = images.model_image(png(rgb), 28, family)
        np.testing.assert_allclose(ours, ref[0].transpose(1, 2, 0), atol=1e-6)


# ---- text -----------------------------------------------------------------------------------------------------
def test_targets_questions_and_ids_per_stage():
    em, hard = make_record(), make_record(pool="hard")
    easy, medium, h = view(em, "easy"), view(em, "medium"), view(hard, "hard")
    assert easy.question == "What is in the highlighted region?"
    assert easy.target.text == f"Reasoning: {COT} Answer: nodule" == medium.target.text
    assert h.question == "What abnormality is seen?" and h.target.text == "Answer: nodule"
    assert h.target.reasoning is None
    assert [v.stage_id for v in (easy, medium, h)] == [0, 1, 2]
    assert easy.domain == "nodule_xray" and easy.domain_id == 2 and easy.example_id == 7
    np.testing.assert_allclose(easy.box, BOX, atol=1e-6)


def test_box_text_becomes_loc_tokens_by_config():
    rec = make_record()
    assert "[0.10, 0.20, 0.50, 0.60]" in view(rec, "medium").target.text
    text = view(rec, "medium", loc_tokens=True).target.text
    # y1 = 0.2 -> bin 204, x1 = 0.1 -> 102, y2 = 0.6 -> 614, x2 = 0.5 -> 512 (floor(v * 1024)).
    assert text == ("Reasoning: The right lung is in view. The box <loc0204><loc0102><loc0614><loc0512> holds a "
                    "round opacity. Answer: nodule")


def test_negative_records_take_part_without_a_box():
    neg = make_record(box=None)
    easy, medium = view(neg, "easy"), view(neg, "medium")
    assert easy.box is None and not red(easy.image).any()
    np.testing.assert_array_equal(easy.image, medium.image)
    assert easy.target.text == "Reasoning: No focal lesion is seen, so there is no region to localize. Answer: no"
    assert view(make_record(box=None, pool="hard"), "hard").target.text == "Answer: no"


def test_domain_vocabulary_spans_every_split():
    info = {"counts": {"per_split_domain_stage": {"train": {"nodule_xray": {}, "effusion_xray": {}},
                                                  "test": {"mass_ct": {}, "nodule_xray": {}}}}}
    assert views.domain_vocabulary(info) == {"effusion_xray": 0, "mass_ct": 1, "nodule_xray": 2}
    with pytest.raises(ValueError, match="per_split_domain_stage"):
        views.domain_vocabulary({"counts": {}})


# ---- refusals -------------------------------------------------------------------------------------------------
def test_the_pool_must_train_the_stage():
    with pytest.raises(RecordError, match="cannot give a hard view") as e:
        view(make_record(), "hard")
    assert e.value.reason == "wrong_pool" and e.value.field == "curriculum/pool"
    with pytest.raises(RecordError) as e:
        view(make_record(pool="hard"), "easy")
    assert e.value.reason == "wrong_pool"
    settings = views.ViewSettings(S)
    assert views.make_view(make_record(), "hard", settings, domain_ids=DOMAINS, check_pool=False).stage == "hard"


@pytest.mark.parametrize("change, reason", [
    ({"domain": "mass_ct"}, "unknown_domain"),
    ({"image/encoded": b"not a png"}, "bad_image"),
    ({"easy/cot": "  "}, "empty_cot"),
    ({"easy/question": ""}, "empty_question"),
])
def test_bad_records_are_refused_with_a_countable_reason(change, reason):
    rec = make_record()
    rec.update({k: [v.encode() if isinstance(v, str) else v] for k, v in change.items()})
    with pytest.raises(RecordError) as e:
        views.make_view(rec, "easy", views.ViewSettings(S), domain_ids=DOMAINS, where="train-00000 record 3")
    assert e.value.reason == reason and "train-00000 record 3" in str(e.value)


def test_settings_and_stage_are_checked():
    with pytest.raises(ValueError, match="family"):
        views.ViewSettings(S, family="llava")
    with pytest.raises(ValueError, match="stage"):
        view(make_record(), "expert")
    jpeg = io.BytesIO()
    Image.fromarray(phantom_pixels()).save(jpeg, format="JPEG")
    with pytest.raises(RecordError, match="JPEG"):
        images.decode_png(jpeg.getvalue())
