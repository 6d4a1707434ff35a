"""Organ masks on real users' folders: mask references stay inside `masks.root`, only regular files are opened,
and a damaged mask file is named, with a countable reason, instead of crashing the image.

Each test recreates one case on files it writes: a `../` mask reference, a COCO image id used as the mask key, a
symbolic link out of the masks root (a folder, a file inside a mask folder), a label-map JSON naming a file
elsewhere, a FIFO where a mask file should be, a truncated .nii.gz, a corrupt PNG; then the same through
`pipeline.convert_image`, where the image must fall back to the built-in segmenter with the reason counted.
"""

from __future__ import annotations

import json
import os
import threading

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_gen.config import load_dataset_config
from data_gen.errors import InputError
from data_gen.phantom import cxr
from data_gen.pipeline import convert_image
from data_gen.segment import load_masks
from data_gen.segment.load import resolve_mask_ref
from data_gen.types import ImageItem, LesionAnnotation, LoadedImage

H, W = 40, 56


def _item(mask_ref=None, key="img1"):
    return ImageItem(path="/data/img1.png", source="test", image_key=key, patient_key="p", mask_ref=mask_ref)


def _image(h=H, w=W):
    return LoadedImage(pixels=np.zeros((h, w), np.uint8), modality="xray")


def _png_mask(path, r0=5, r1=20, c0=5, c1=30):
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 255
    Image.fromarray(m).save(path)
    return str(path)


def _mask_folder(folder, organs=("right lung", "heart")):
    os.makedirs(folder, exist_ok=True)
    for i, organ in enumerate(organs):
        _png_mask(os.path.join(folder, f"{organ}.png"), 5 + 10 * i, 15 + 10 * i)
    return str(folder)


def _refused(item, cfg) -> InputError:
    with pytest.raises(InputError) as e:
        load_masks(item, _image(), cfg)
    return e.value


@pytest.fixture
def layout(tmp_path):
    """tmp/masks (masks.root) holding img1/, and tmp/outside/img1/ with valid masks the build must not read."""
    root = tmp_path / "masks"
    _mask_folder(root / "img1")
    _mask_folder(tmp_path / "outside" / "img1", organs=("liver",))
    return root, tmp_path / "outside"


# ---- paths stay inside masks.root --------------------------------------------------------------------------------

def test_relative_mask_ref_with_dotdot_is_refused(layout):
    root, _ = layout
    e = _refused(_item("../outside/img1"), {"root": str(root)})
    assert e.reason == "outside_root" and e.field == "mask_ref"
    assert e.path == "masks.root/../outside/img1" and str(layout[1]) not in str(e)  # as written, no machine path
    with pytest.raises(InputError):
        resolve_mask_ref(_item("../outside/img1"), {"root": str(root)})
    # The same folder named without '..' still loads.
    assert "right lung" in load_masks(_item("img1"), _image(), {"root": str(root)}).names


@pytest.mark.parametrize("target_exists", [True, False])
def test_coco_image_id_used_as_mask_key_cannot_escape(tmp_path, target_exists):
    """A string COCO id `../../x` becomes the mask key: it is no candidate, whether or not x exists; the image's
    file name still is."""
    root = tmp_path / "a" / "b" / "masks"
    _mask_folder(root / "img1")
    if target_exists:
        np.savez(str(tmp_path / "a" / "x.npz"), masks=np.ones((1, H, W), bool), names=np.array(["liver"]))
    item = ImageItem(path="/data/scan.png", source="t", image_key="../../x", patient_key="p")
    e = _refused(item, {"root": str(root)})
    assert e.reason == "missing_masks" and e.path == "masks.root/scan.png"
    item = ImageItem(path="/data/img1.png", source="t", image_key="../../x", patient_key="p")
    assert load_masks(item, _image(), {"root": str(root)}).names == ["heart", "right lung"]
    item = ImageItem(path="", source="t", image_key="../../x", patient_key="p")  # no usable key at all
    assert _refused(item, {"root": str(root)}).reason == "outside_root"


def test_symlinked_mask_folder_leading_out_of_the_root_is_refused(layout):
    root, outside = layout
    os.symlink(outside / "img1", root / "img2")
    e = _refused(_item(None, key="img2"), {"root": str(root)})
    assert e.reason == "outside_root"
    e = _refused(_item("img2"), {"root": str(root)})
    assert e.reason == "outside_root"


def test_symlinked_file_inside_a_mask_folder_is_refused(layout):
    root, outside = layout
    os.symlink(outside / "img1" / "liver.png", root / "img1" / "liver.png")
    e = _refused(_item("img1"), {"root": str(root)})
    assert e.reason == "outside_root" and "liver.png" in str(e)
    assert str(outside) not in str(e)  # named as written (inside the root), never by its target


def test_label_map_named_by_json_must_lie_beside_it(tmp_path):
    root = tmp_path / "masks"
    root.mkdir()
    Image.fromarray(np.ones((H, W), np.uint8)).save(tmp_path / "secret.png")
    (root / "img1.json").write_text(json.dumps({"labelmap": "../secret.png", "labels": ["background", "liver"]}))
    e = _refused(_item(None), {"root": str(root)})
    assert e.reason == "outside_root" and e.field == "labelmap"


def _load_in_thread(item, cfg, timeout=20.0):
    """load_masks in a thread: a FIFO opened for reading would block for ever, and must not."""
    box: dict = {}

    def run():
        try:
            load_masks(item, _image(), cfg)
        except InputError as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "reading the masks blocked on a FIFO"
    return box.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_mask_file_is_refused_without_blocking(layout):
    root, _ = layout
    os.mkfifo(root / "img1" / "liver.png")
    e = _load_in_thread(_item("img1"), {"root": str(root)})
    assert e is not None and e.reason == "not_a_file" and "masks.root/img1/liver.png" in str(e)
    os.mkfifo(root / "img3.npz")  # the reference itself
    e = _load_in_thread(_item(None, key="img3"), {"root": str(root)})
    assert e is not None and e.reason == "not_a_file"


# ---- a bad mask file is named ------------------------------------------------------------------------------------

def _write_nifti(path, volume):
    nib.save(nib.Nifti1Image(volume.astype(np.uint8), np.eye(4)), str(path))


def test_truncated_nifti_mask_is_named_with_its_reason(tmp_path):
    root = tmp_path / "masks"
    folder = root / "ct1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_nifti(folder / "heart.nii.gz", rng.random((64, 64, 30)) > 0.5)
    _write_nifti(folder / "liver.nii.gz", rng.random((64, 64, 30)) > 0.5)
    data = (folder / "liver.nii.gz").read_bytes()
    (folder / "liver.nii.gz").write_bytes(data[: len(data) // 2])  # an interrupted copy
    item = ImageItem(path="/data/ct1.nii.gz", source="t", image_key="ct1", patient_key="p", slice_index=25)
    with pytest.raises(InputError) as e:
        load_masks(item, _image(64, 64), {"root": str(root)})
    assert e.value.reason == "truncated_mask"
    assert e.value.path == "masks.root/ct1/liver.nii.gz" and str(tmp_path) not in str(e.value)
    # Uncompressed: shorter than its header declares (reading the key slice alone might not notice).
    _write_nifti(folder / "liver.nii.gz", rng.random((64, 64, 30)) > 0.5)
    _write_nifti(folder / "kidney.nii", rng.random((64, 64, 30)) > 0.5)
    data = (folder / "kidney.nii").read_bytes()
    (folder / "kidney.nii").write_bytes(data[:-1000])
    item = ImageItem(path="/data/ct1.nii.gz", source="t", image_key="ct1", patient_key="p", slice_index=0)
    with pytest.raises(InputError) as e:
        load_masks(item, _image(64, 64), {"root": str(root)})
    assert e.value.reason == "truncated_mask" and e.value.path == "masks.root/ct1/kidney.nii"


@pytest.mark.parametrize("damage,reason", [
    (lambda b: b[:-40], "truncated_mask"),                      # cut short inside the image data
    (lambda b: b[:60] + bytes(40) + b[100:], "bad_mask"),      # zeros written over the compressed stream
    (lambda b: b"this is not a PNG", "bad_mask"),
])
def test_corrupt_png_mask_is_named_with_its_reason(layout, damage, reason):
    root, _ = layout
    rng = np.random.default_rng(1)
    path = root / "img1" / "heart.png"
    Image.fromarray(((rng.random((H, W)) > 0.5) * 255).astype(np.uint8)).save(path)  # noise: a long stream
    path.write_bytes(damage(path.read_bytes()))
    e = _refused(_item("img1"), {"root": str(root)})
    assert e.reason == reason and e.path == "masks.root/img1/heart.png"


def test_corrupt_npz_and_coco_files_are_named(tmp_path):
    root = tmp_path / "masks"
    root.mkdir()
    np.savez_compressed(str(root / "img1.npz"), masks=np.ones((2, H, W), bool), names=np.array(["a", "b"]))
    data = (root / "img1.npz").read_bytes()
    (root / "img1.npz").write_bytes(data[: len(data) // 2])
    e = _refused(_item(None), {"root": str(root)})
    assert e.reason in ("bad_mask", "truncated_mask") and e.path == "masks.root/img1.npz"
    # COCO whose RLE declares a 10^6 x 10^6 mask: refused before any allocation.
    coco = {"images": [{"id": 1, "file_name": "img2.png"}], "categories": [{"id": 1, "name": "liver"}],
            "annotations": [{"image_id": 1, "category_id": 1,
                             "segmentation": {"size": [10**6, 10**6], "counts": [10**12]}}]}
    (root / "img2.json").write_text(json.dumps(coco))
    e = _refused(_item(None, key="img2"), {"root": str(root)})
    assert e.reason == "too_large" and e.path == "masks.root/img2.json"
    coco["categories"] = [{"name": "no id"}]
    (root / "img2.json").write_text(json.dumps(coco))
    assert _refused(_item(None, key="img2"), {"root": str(root)}).reason == "bad_mask"


# ---- through the pipeline: counted by reason, the image still converted -------------------------------------------

@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr")
    r = cxr.chest_radiograph(np.random.default_rng(0), 128, ["Nodule"])
    path = root / "cxr.png"
    Image.fromarray((r.image * 255).astype(np.uint8)).save(path)
    return str(path), r.lesions[0].box


@pytest.mark.parametrize("case", ["dotdot", "fifo", "corrupt_png"])
def test_pipeline_falls_back_to_builtin_and_counts_the_reason(tmp_path, radiograph, case):
    if case == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    path, box = radiograph
    root = tmp_path / "masks"
    _mask_folder(root / "img")
    _mask_folder(tmp_path / "elsewhere")
    mask_ref, expected = {"dotdot": ("../elsewhere", "outside_root"), "fifo": ("img", "not_a_file"),
                          "corrupt_png": ("img", "bad_mask")}[case]
    if case == "fifo":
        os.remove(root / "img" / "heart.png")
        os.mkfifo(root / "img" / "heart.png")
    if case == "corrupt_png":
        (root / "img" / "heart.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    item = ImageItem(path=path, source="test", image_key="img", patient_key="p1", modality="xray",
                     mask_ref=mask_ref, lesions=[LesionAnnotation(box=tuple(map(float, box)), label="nodule",
                                                                  row="rows.csv:0")])
    cfg = load_dataset_config("phantom", f"root={tmp_path}", [f"masks.root={root}"])
    result = convert_image(item, cfg, {"xray": ["nodule"]})
    assert result.stats[f"masks_fallback:{expected}"] == 1
    assert result.stats["masks_source:builtin"] == 1 and result.written
    assert not [r for r in result.rejects if r.reason.startswith("unexpected_error")]
