"""Organ masks: every source on files the test writes, resampling, missing/empty masks, the name map and
hierarchy, and the built-in segmenter against phantom masks (Dice)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_gen.errors import InputError
from data_gen.imaging import nifti as image_nifti
from data_gen.phantom import ct, cxr
from data_gen.phantom import files as phantom_files
from data_gen.segment import builtin, external, load_masks, load_masks_with_stats
from data_gen.segment import names as organ_names
from data_gen.segment import nifti as seg_nifti
from data_gen.segment.coco import rle_decode, rle_string_to_counts
from data_gen.types import ImageItem, LoadedImage

H, W = 40, 56


def _item(mask_ref=None, slice_index=None, key="img1", path="/data/img1.dcm"):
    return ImageItem(path=path, source="test", image_key=key, patient_key="p", mask_ref=mask_ref,
                     slice_index=slice_index)


def _image(h=H, w=W, modality="xray", hu=None):
    return LoadedImage(pixels=np.zeros((h, w), np.uint8), modality=modality, hu=hu)


def _rect(r0, r1, c0, c1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def _by_name(om):
    return dict(zip(om.names, om.masks))


# ---- names --------------------------------------------------------------------------------------------------------

def test_totalsegmentator_table_is_the_v2_total_task():
    t = organ_names.totalsegmentator_classes()
    assert sorted(t) == list(range(1, 118))
    assert (t[1], t[5], t[10], t[14], t[23], t[26], t[51], t[92], t[115], t[117]) == (
        "spleen", "liver", "lung_upper_lobe_left", "lung_lower_lobe_right", "kidney_cyst_left", "vertebrae_S1",
        "heart", "rib_left_1", "rib_right_12", "costal_cartilages")


def test_cxas_table_has_159_classes_in_channel_order():
    c = organ_names.cxas_classes()
    assert len(c) == 159 and len(set(c)) == 159
    assert (c[0], c[28], c[121], c[134], c[135], c[141], c[143], c[153], c[158]) == (
        "spine", "rib_cartilage", "heart", "lung", "right lung", "right upper zone lung", "right lung base",
        "lung upper lobe right", "breast right")


@pytest.mark.parametrize("raw,display", [
    ("lung_upper_lobe_right", "right upper lobe of lung"),
    ("lung upper lobe right", "right upper lobe of lung"),
    ("right upper zone lung", "right upper zone of lung"),
    ("kidney_left", "left kidney"),
    ("kidney left", "left kidney"),
    ("vertebrae_T12", "T12 vertebra"),
    ("vertebrae T12", "T12 vertebra"),
    ("liver", "liver"),
    ("lung", "lungs"),
    ("clavicula_right", "right clavicle"),
    ("posterior 5th rib left", "left posterior 5th rib"),
    ("rib_left_5", "left 5th rib"),
    ("right lower zone lung", "right lower zone of lung"),
    ("right upper lobe of lung", "right upper lobe of lung"),
    ("Psoas_Major_Left", "left psoas major"),  # unknown: cleaned up, side first
    ("tumour bed", "tumour bed"),
])
def test_display_names(raw, display):
    assert organ_names.display_name(raw) == display


def test_every_table_name_is_in_the_hierarchy():
    for raw in list(organ_names.totalsegmentator_classes().values()) + organ_names.cxas_classes():
        assert organ_names.known(raw), raw


def test_hierarchy():
    assert organ_names.parent("right upper zone lung") == "right lung"
    assert organ_names.parent("lung_upper_lobe_left") == "left lung"
    assert organ_names.parent("right lung") == "lungs"
    assert organ_names.parent("lungs") == "body"
    assert organ_names.parent("body") is None
    assert organ_names.parent("left lobe of liver") == "liver"
    assert organ_names.is_part_of("right upper zone lung", "right lung")
    assert organ_names.is_part_of("right upper zone lung", "lungs")
    assert organ_names.is_part_of("right upper zone lung", "upper lung zones")  # second parent
    assert not organ_names.is_part_of("right lung", "right upper zone lung")
    assert not organ_names.is_part_of("right lung", "right lung")
    assert not organ_names.is_part_of("right upper zone lung", "left lung")
    assert organ_names.is_part_of("vertebrae_T12", "spine")
    s = organ_names.specificity
    assert s("body") < s("lungs") < s("right lung") < s("right upper zone lung")
    assert s("right upper zone lung") == s("lung_upper_lobe_right")
    assert s("unknown") == 0 and s("tumour bed") == organ_names.UNLISTED_SPECIFICITY
    assert organ_names.side("kidney_left") == "left" and organ_names.side("liver") is None


# ---- PNG folders -------------------------------------------------------------------------------------------------

def _write_png(path, mask, mode="L", scale=255):
    arr = (mask.astype(np.uint8) * scale)
    im = Image.fromarray(arr)
    if mode == "1":
        im = Image.fromarray(mask).convert("1")  # what CXAS writes
    im.save(path)


def test_png_dir(tmp_path):
    d = tmp_path / "img1"
    d.mkdir()
    rl, zone, heart = _rect(5, 35, 3, 25), _rect(5, 15, 3, 25), _rect(20, 35, 26, 40)
    _write_png(d / "right lung.png", rl)
    _write_png(d / "right upper zone lung.png", zone, mode="1")
    _write_png(d / "heart.png", heart, scale=1)  # a 0/1 PNG
    faint = np.zeros((H, W), np.uint8)
    faint[0:3, 0:3] = 100  # below the > 127 rule
    faint[3, 3] = 255
    Image.fromarray(faint).save(d / "left lung.png")
    om = load_masks(_item(str(d)), _image(), {"source": "auto"})
    assert om.source == "png_dir"
    got = _by_name(om)
    assert set(got) == {"right lung", "right upper zone of lung", "heart", "left lung"}
    np.testing.assert_array_equal(got["right lung"], rl)
    np.testing.assert_array_equal(got["right upper zone of lung"], zone)
    np.testing.assert_array_equal(got["heart"], heart)
    assert got["left lung"].sum() == 1 and got["left lung"][3, 3]


def test_png_dir_other_size_is_resampled_and_counted(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    big = _rect(10, 70, 0, 56, shape=(80, 112))  # twice the image size
    _write_png(d / "liver.png", big)
    _write_png(d / "spleen.png", _rect(0, 10, 0, 10))
    om, stats = load_masks_with_stats(_item(str(d)), _image(), {})
    assert stats["resampled"] == 1 and om.source == "png_dir+resampled"
    np.testing.assert_array_equal(_by_name(om)["liver"], _rect(5, 35, 0, 28))


def test_missing_and_empty_masks(tmp_path):
    with pytest.raises(InputError) as e:
        load_masks(_item(str(tmp_path / "nope")), _image(), {"source": "auto"})
    assert e.value.reason == "missing_masks" and "nope" in str(e.value)
    with pytest.raises(InputError) as e:
        load_masks(_item(str(tmp_path / "nope")), _image(), {"source": "png_dir"})
    assert e.value.reason == "missing_masks"
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(InputError) as e:
        load_masks(_item(str(d)), _image(), {})
    assert e.value.reason == "missing_masks"  # a folder without mask files
    _write_png(d / "liver.png", np.zeros((H, W), bool))
    _write_png(d / "heart.png", np.zeros((H, W), bool))
    with pytest.raises(InputError) as e:
        load_masks(_item(str(d)), _image(), {})
    assert e.value.reason == "empty_masks"


def test_no_mask_ref_uses_builtin_or_nothing():
    img, *_ = _synthetic_cxr()
    om = load_masks(_item(None), img, {"source": "auto", "builtin": True})
    assert om.source == "builtin" and "right lung" in om.names
    om = load_masks(_item(None), img, {"source": "auto", "builtin": False})
    assert om.source == "none" and len(om) == 0 and om.masks.shape == (0,) + img.pixels.shape
    assert len(load_masks(_item(None), img, {"source": "none"})) == 0


def test_root_lookup_by_image_key(tmp_path):
    np.savez_compressed(tmp_path / "img7.npz", _cxas_stack())
    om = load_masks(_item(None, key="img7"), _image(), {"root": str(tmp_path)})
    assert om.source == "cxas_npz" and "right lung" in om.names


# ---- CXAS stacks -------------------------------------------------------------------------------------------------

def _cxas_stack(shape=(H, W)):
    stack = np.zeros((159,) + shape, bool)
    stack[135] = _rect(5, 35, 3, 25, shape)  # right lung
    stack[141] = _rect(5, 15, 3, 25, shape)  # right upper zone lung
    stack[113] = _rect(10, 18, 20, 26, shape)  # kidney left
    return stack


def test_cxas_npz_and_npy(tmp_path):
    np.savez_compressed(tmp_path / "a.npz", _cxas_stack())  # CXAS: np.savez_compressed(path, mask) -> arr_0
    om = load_masks(_item(str(tmp_path / "a.npz")), _image(), {})
    assert om.names == ["left kidney", "right lung", "right upper zone of lung"]  # channel order, empties dropped
    np.testing.assert_array_equal(_by_name(om)["right lung"], _rect(5, 35, 3, 25))
    half = np.zeros((159, 20, 28), bool)  # half the image size
    half[135, 2:18, 1:13] = True
    half[141, 2:7, 1:13] = True
    np.save(tmp_path / "b.npy", half)
    om, stats = load_masks_with_stats(_item(str(tmp_path / "b.npy")), _image(), {"source": "cxas_npz"})
    assert stats["resampled"] == 159 and stats["empty_dropped"] == 157
    np.testing.assert_array_equal(_by_name(om)["right lung"], _rect(4, 36, 2, 26))  # 2x nearest of [2:18, 1:13]


def test_npz_with_names_and_bad_channel_count(tmp_path):
    np.savez(tmp_path / "c.npz", masks=np.stack([_rect(0, 5, 0, 5)]), names=np.array(["spleen"]))
    assert load_masks(_item(str(tmp_path / "c.npz")), _image(), {}).names == ["spleen"]
    np.save(tmp_path / "d.npy", np.zeros((7, H, W), bool))
    with pytest.raises(InputError) as e:
        load_masks(_item(str(tmp_path / "d.npy")), _image(), {})
    assert e.value.reason == "bad_mask" and "159" in str(e.value)


# ---- NIfTI -------------------------------------------------------------------------------------------------------

def _canonical_volume(display_planes):
    """Display planes `[K][H, W]` -> canonical RAS+ volume `[X, Y, K]` (inverse of the display transform)."""
    return np.stack([seg_nifti.display_to_canonical(p) for p in display_planes], axis=2)


def _save_lps(vol_ras, path, dtype=np.uint8):
    """Store a RAS+ volume with its x and z axes reversed (file axes run towards Left and Inferior, "LAI")."""
    data = vol_ras[::-1, :, ::-1].astype(dtype)  # file x runs towards Left, file z towards Inferior
    nx, _, nz = data.shape
    affine = np.array([[-0.7, 0, 0, (nx - 1) * 0.7], [0, 0.7, 0, 0], [0, 0, -2.5, (nz - 1) * 2.5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_nifti_display_orientation_by_hand(tmp_path):
    # A marker at the patient's right-anterior corner of canonical slice 3 (i = X-1: most right, j = Y-1: most
    # anterior) must show at display row 0 (anterior at the top), column 0 (patient right at image left).
    vol = np.zeros((W, H, 5), np.uint8)  # canonical [X, Y, Z] -> display [H, W]
    vol[W - 1, H - 1, 3] = 1
    vol[0, 0, 1] = 1  # left-posterior corner of slice 1
    _save_lps(vol, tmp_path / "m.nii.gz")
    assert nib.aff2axcodes(nib.load(str(tmp_path / "m.nii.gz")).affine) == ("L", "A", "I")
    plane = seg_nifti.load_display_slice(str(tmp_path / "m.nii.gz"), 3)
    assert plane.shape == (H, W)
    assert plane[0, 0] == 1 and plane.sum() == 1
    plane1 = seg_nifti.load_display_slice(str(tmp_path / "m.nii.gz"), 1)
    assert plane1[H - 1, W - 1] == 1 and plane1.sum() == 1
    with pytest.raises(InputError) as e:
        seg_nifti.load_display_slice(str(tmp_path / "m.nii.gz"), None)
    assert e.value.reason == "missing_slice_index"


def test_nifti_mask_slice_matches_the_image_reader(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 5, size=(W, H, 6)).astype(np.int16)
    _save_lps(vol, tmp_path / "v.nii.gz", dtype=np.int16)
    img = nib.load(str(tmp_path / "v.nii.gz"))
    for k in (0, 4):
        values, _ = image_nifti.display_slice(img, k)
        np.testing.assert_array_equal(seg_nifti.load_display_slice(str(tmp_path / "v.nii.gz"), k), values)


def test_totalseg_dir_and_multilabel(tmp_path):
    liver, kid = _rect(5, 25, 0, 30), _rect(25, 35, 40, 50)
    d = tmp_path / "ts"
    d.mkdir()
    for name, m in (("liver", liver), ("kidney_left", kid), ("spleen", np.zeros((H, W), bool))):
        vol = _canonical_volume([np.zeros((H, W), bool), m, np.zeros((H, W), bool)])
        _save_lps(vol, d / f"{name}.nii.gz")
    om, stats = load_masks_with_stats(_item(str(d), slice_index=1), _image(modality="ct"), {})
    assert om.source == "totalseg_dir" and stats["empty_dropped"] == 1
    got = _by_name(om)
    np.testing.assert_array_equal(got["liver"], liver)
    np.testing.assert_array_equal(got["left kidney"], kid)

    labels = np.zeros((H, W), np.uint8)
    labels[liver] = 5
    labels[kid] = 3
    labels[0:4, 50:56] = 12  # lung_upper_lobe_right
    vol = _canonical_volume([np.zeros((H, W), np.uint8), labels, np.zeros((H, W), np.uint8)])
    _save_lps(vol, tmp_path / "seg.nii.gz")
    om = load_masks(_item(str(tmp_path / "seg.nii.gz"), slice_index=1), _image(modality="ct"), {})
    assert om.source == "totalseg_ml"
    assert om.names == ["left kidney", "liver", "right upper lobe of lung"]  # label order 3, 5, 12
    np.testing.assert_array_equal(_by_name(om)["liver"], liver)


def test_single_slice_nifti_on_another_grid_is_resampled(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    m = _rect(0, 10, 0, 14, shape=(20, 28))
    nib.save(nib.Nifti1Image(seg_nifti.display_to_canonical(m)[:, :, None].astype(np.uint8), np.eye(4)),
             str(d / "heart.nii.gz"))
    om, stats = load_masks_with_stats(_item(str(d)), _image(modality="ct"), {})
    assert stats["resampled"] == 1
    np.testing.assert_array_equal(om.masks[0], _rect(0, 20, 0, 28))


# ---- label map + JSON, COCO --------------------------------------------------------------------------------------

def test_labelmap_png_with_names_json(tmp_path):
    lm = np.zeros((H, W), np.uint8)
    lm[0:10, 0:10] = 1
    lm[20:30, 20:30] = 2
    Image.fromarray(lm).save(tmp_path / "lm.png")
    (tmp_path / "lm.json").write_text(json.dumps({"labelmap": "lm.png", "labels": {"1": "liver", "2": "kidney_right"}}))
    om = load_masks(_item(str(tmp_path / "lm.json")), _image(), {})
    assert om.source == "labelmap" and om.names == ["liver", "right kidney"]
    np.testing.assert_array_equal(om.masks[1], _rect(20, 30, 20, 30))
    np.save(tmp_path / "lm.npy", lm)
    (tmp_path / "l2.json").write_text(json.dumps({"labelmap": "lm.npy", "labels": ["background", "heart", "aorta"]}))
    assert load_masks(_item(str(tmp_path / "l2.json")), _image(), {}).names == ["heart", "aorta"]


def test_compressed_rle_by_hand():
    # Column-major runs [2 zeros, 3 ones, 4 zeros] of a 3x3 mask encode as "234" (values < 16: one char each).
    assert rle_string_to_counts("234") == [2, 3, 4]
    # A 4th count 40 is stored as 40 - counts[1] = 37 = 5 + 1 * 32: chars 48 + (5 | 0x20) = 'U', 48 + 1 = '1'.
    assert rle_string_to_counts("234U1") == [2, 3, 4, 40]
    m = rle_decode([2, 3, 4], 3, 3)
    np.testing.assert_array_equal(m, [[False, True, False], [False, True, False], [True, False, False]])


def test_coco_json_with_rle_and_polygons(tmp_path):
    liver = _rect(2, 12, 3, 20)
    counts, flat, run, val = [], liver.T.ravel(), 0, False  # column-major runs, zeros first
    for v in flat:
        if bool(v) != val:
            counts.append(run)
            run, val = 0, bool(v)
        run += 1
    counts.append(run)
    spec = {"images": [{"id": 1, "file_name": "img1.png", "height": H, "width": W}],
            "categories": [{"id": 111, "name": "liver"}, {"id": 121, "name": "heart"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 111, "segmentation": {"size": [H, W], "counts": counts}},
                {"id": 2, "image_id": 1, "category_id": 121,
                 "segmentation": [[30.0, 20.0, 40.0, 20.0, 40.0, 30.0, 30.0, 30.0]]}]}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    om = load_masks(_item(str(tmp_path / "c.json")), _image(), {})
    assert om.source == "coco" and om.names == ["liver", "heart"]
    np.testing.assert_array_equal(om.masks[0], liver)
    assert om.masks[1][25, 35] and not om.masks[1][10, 10]


def test_compressed_rle_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    m = rng.random((37, 53)) < 0.4
    enc = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = rle_string_to_counts(enc["counts"].decode("ascii"))
    np.testing.assert_array_equal(rle_decode(counts, 37, 53), m)


# ---- built-in segmenter ------------------------------------------------------------------------------------------

def _dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _ellipse(h, w, cy, cx, ry, rx):
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def _synthetic_cxr(h=256, w=240):
    rng = np.random.default_rng(0)
    body = _ellipse(h, w, h * 0.55, w / 2, h * 0.6, w * 0.45)
    rl = _ellipse(h, w, h * 0.45, w * 0.3, h * 0.28, w * 0.13)
    ll = _ellipse(h, w, h * 0.45, w * 0.7, h * 0.28, w * 0.13)
    img = np.full((h, w), 15.0)
    img[body] = 170
    img[rl | ll] = 70
    img += rng.normal(0, 6, img.shape)
    return LoadedImage(pixels=np.clip(img, 0, 255).astype(np.uint8), modality="xray"), rl, ll


def test_builtin_on_synthetic_radiograph_respects_col_direction():
    img, rl, ll = _synthetic_cxr()
    names, masks = builtin.segment(img)
    got = dict(zip(names, masks))
    assert _dice(got["right lung"], rl) >= 0.9 and _dice(got["left lung"], ll) >= 0.9
    zones = got["right upper zone lung"] | got["right mid zone lung"] | got["right lower zone lung"]
    np.testing.assert_array_equal(zones, got["right lung"])
    img.col_direction = "R"
    got = dict(zip(*builtin.segment(img)))
    assert _dice(got["left lung"], rl) >= 0.9  # image-left is now the patient's left


def test_builtin_lungs_on_phantom_radiographs():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        r = cxr.chest_radiograph(rng, 256, cxr.plan_findings(rng))
        img = LoadedImage(pixels=(r.image * 255).astype(np.uint8), modality="xray")
        om = load_masks(_item(None), img, {"source": "builtin"})
        got = _by_name(om)
        for side in ("right lung", "left lung"):
            assert _dice(got[side], r.organs[side]) >= 0.8, (seed, side)


def test_builtin_on_phantom_ct():
    for seed, region in ((0, "chest"), (2, "chest"), (5, "abdomen")):
        rng = np.random.default_rng(seed)
        s = ct.ct_slice(rng, 256, region, ct.plan_findings(rng, region))
        img = LoadedImage(pixels=np.zeros(s.hu.shape, np.uint8), modality="ct", hu=s.hu.astype(np.float32))
        got = _by_name(load_masks(_item(None), img, {"source": "builtin"}))
        assert "body" in got and "bone" in got
        o = s.organs
        refs = {"right lung": o["lung_upper_lobe_right"] | o["lung_middle_lobe_right"] | o["lung_lower_lobe_right"],
                "left lung": o["lung_upper_lobe_left"] | o["lung_lower_lobe_left"]}
        for side, ref in refs.items():
            if ref.sum() > 200:
                assert _dice(got.get(side, np.zeros_like(ref)), ref) >= 0.8, (seed, side)
            else:
                assert side not in got, (seed, side)  # no lung invented in the abdomen (stomach gas)


def test_phantom_ct_mask_files_land_on_the_image_grid_and_host_their_lesions(tmp_path):
    """D1's writer stores masks the way dcm2niix stores an LPS series; read back they must equal the drawn
    organs, and every drawn lesion must link to the organ it was drawn in."""
    from data_gen.link import link_lesions

    rng = np.random.default_rng(4)
    s = ct.ct_slice(rng, 128, "abdomen", ["liver cyst", "kidney cyst"])
    affine = phantom_files.slice_affine((0.8, 0.8), 2.5, 57, s.hu.shape)
    for name, m in s.organs.items():
        phantom_files.write_mask_nifti(str(tmp_path / f"{name}.nii.gz"), m, affine)
    img = LoadedImage(pixels=np.zeros(s.hu.shape, np.uint8), modality="ct", hu=s.hu.astype(np.float32))
    om = load_masks(_item(str(tmp_path)), img, {})
    got = _by_name(om)
    for name, m in s.organs.items():
        if m.any():
            np.testing.assert_array_equal(got[organ_names.display_name(name)], m)
    results = link_lesions(np.array([les.box for les in s.lesions], float), om, img, None)
    assert [r.organ for r in results] == [organ_names.display_name(les.host) for les in s.lesions]


def test_builtin_finds_nothing_on_unsupported_modality():
    om = load_masks(_item(None), _image(modality="us"), {"source": "builtin"})
    assert len(om) == 0 and om.source == "builtin"


# ---- optional external segmenters --------------------------------------------------------------------------------

@pytest.mark.skipif(not external.available("totalsegmentator"), reason="TotalSegmentator is not installed")
def test_totalsegmentator_adapter_needs_weights_or_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "no_weights"))
    with pytest.raises(InputError) as e:
        load_masks(_item(None), _image(modality="ct"), {"source": "totalsegmentator_run"})
    assert e.value.reason == "segmenter_unavailable"


@pytest.mark.skipif(not external.available("cxas"), reason="CXAS is not installed")
def test_cxas_adapter_needs_weights(tmp_path):
    with pytest.raises(InputError) as e:
        load_masks(_item(None), _image(), {"source": "cxas_run", "cxas_weights": str(tmp_path / "none")})
    assert e.value.reason == "segmenter_unavailable"


def test_external_adapters_report_when_not_installed():
    for tool, source in (("totalsegmentator", "totalsegmentator_run"), ("cxas", "cxas_run")):
        if external.available(tool):
            continue
        with pytest.raises(InputError) as e:
            load_masks(_item(None), _image(), {"source": source})
        assert e.value.reason == "segmenter_unavailable" and "pip install" in str(e.value)
