"""data_gen.phantom: layout, determinism, boxes over their lesions, masks on the image grid, fake DICOM names."""

from __future__ import annotations

import csv
import json
import os
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from data_gen.commands.phantom import main
from data_gen.imaging import display_slice, load_image
from data_gen.phantom import write_phantom
from data_gen.phantom.ct import CT_ORGANS, HU
from data_gen.phantom.cxr import CXR_ORGANS, plan_findings
from data_gen.types import ImageItem

N, SIZE = 10, 256
VINDR = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
DEEPLESION = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index", "Measurement_coordinates",
              "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location", "Coarse_lesion_type",
              "Possibly_noisy", "Slice_range", "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender",
              "Patient_age", "Train_Val_Test"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("phantom"))
    summary = write_phantom(out, N, seed=7, cxr_size=SIZE, ct_size=SIZE)
    return out, summary


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def _item(path, **kw):
    return ImageItem(path=path, source="phantom", image_key="k", patient_key="p", **kw)


def _numbers(text):
    return [float(v) for v in text.split(",")]


def test_same_seed_same_bytes(tmp_path, phantom):
    a, b = tmp_path / "a", tmp_path / "b"
    write_phantom(str(a), 6, seed=3, cxr_size=128, ct_size=128)
    write_phantom(str(b), 6, seed=3, cxr_size=128, ct_size=128)
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) and len(fa) > 20
    assert [k for k in fa if fa[k] != fb[k]] == []
    write_phantom(str(b), 6, seed=4, cxr_size=128, ct_size=128)  # a re-run replaces a previous phantom
    fc = _files(b)
    assert fc["cxr/annotations.csv"] != fa["cxr/annotations.csv"]


def test_layout(phantom):
    out, summary = phantom
    info = json.load(open(os.path.join(out, "phantom.json")))
    assert {k: info[k] for k in ("seed", "n_cxr", "n_ct", "version")} == {"seed": 7, "n_cxr": 5, "n_ct": 5,
                                                                          "version": 1}
    assert set(info["classes"]) == {"Nodule", "Mass", "Pleural effusion", "Consolidation", "lung nodule",
                                    "liver cyst", "kidney cyst", "liver mass"}
    header, rows = _rows(os.path.join(out, "cxr", "annotations.csv"))
    assert header == VINDR
    ids = {r["image_id"] for r in rows}
    assert ids == {f[:-6] for f in os.listdir(os.path.join(out, "cxr", "images"))} and len(ids) == 5
    for image_id in ids:
        assert sorted(os.listdir(os.path.join(out, "cxr", "masks", image_id))) == sorted(f"{o}.png" for o in CXR_ORGANS)
        assert len({r["rad_id"] for r in rows if r["image_id"] == image_id}) >= 2  # several radiologists
    for r in rows:
        boxed = [r[k] for k in VINDR[3:]]
        assert (r["class_name"] == "No finding") == (boxed == [""] * 4)
    header, ct_rows = _rows(os.path.join(out, "ct", "DL_info.csv"))
    assert header[:len(DEEPLESION)] == DEEPLESION and header[len(DEEPLESION):] == ["Phantom_class"]
    assert summary["ct_rows"] == len(ct_rows) and summary["cxr_rows"] == len(rows)
    for r in ct_rows:
        series, key = r["File_name"][:-8], int(r["Key_slice_index"])
        assert r["File_name"] == f"{series}_{key:03d}.png"
        assert os.path.isfile(os.path.join(out, "ct", "Images_png", series, f"{key:03d}.png"))
        masks = os.listdir(os.path.join(out, "ct", "masks", f"{series}_{key:03d}"))
        assert sorted(masks) == sorted(f"{o}.nii.gz" for o in CT_ORGANS)
        assert int(r["Coarse_lesion_type"]) == {"lung nodule": 5, "liver cyst": 4, "kidney cyst": 6,
                                                "liver mass": 4}[r["Phantom_class"]]


def test_finding_mix():
    rng = np.random.default_rng(0)
    plans = [plan_findings(rng) for _ in range(2000)]
    assert 0.12 < np.mean([p == [] for p in plans]) < 0.18  # ~15% "No finding"
    assert np.mean([len(p) >= 2 for p in plans]) > 0.25  # some images hold 2-3 lesions
    assert all(len(set(p)) == len(p) for p in plans)


def test_cxr_boxes_inside_and_over_lesions(phantom):
    out, _ = phantom
    _, rows = _rows(os.path.join(out, "cxr", "annotations.csv"))
    checked = 0
    for image_id in sorted({r["image_id"] for r in rows}):
        img = load_image(_item(os.path.join(out, "cxr", "images", f"{image_id}.dicom")))
        assert img.pixels.shape == (SIZE, SIZE) and img.modality == "xray" and img.col_direction == "L"
        mdir = os.path.join(out, "cxr", "masks", image_id)
        masks = {o: np.array(Image.open(os.path.join(mdir, f"{o}.png"))) for o in CXR_ORGANS}
        assert all(set(np.unique(m)) <= {0, 255} for m in masks.values())
        lungs = (masks["right lung"] > 0) | (masks["left lung"] > 0)
        # Anatomy on the image grid: lung fields dark, heart bright; the right lung is on the image left.
        assert np.median(img.pixels[lungs]) + 40 < np.median(img.pixels[masks["heart"] > 0])
        assert np.nonzero(masks["right lung"])[1].mean() < SIZE / 2 < np.nonzero(masks["left lung"])[1].mean()
        boxes = [(r["class_name"], [float(r[k]) for k in VINDR[3:]]) for r in rows
                 if r["image_id"] == image_id and r["class_name"] != "No finding"]
        outside = lungs.copy()
        for _, (x1, y1, x2, y2) in boxes:
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            outside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = False
        for label, (x1, y1, x2, y2) in boxes:
            inside = img.pixels[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))]
            assert np.median(inside) > np.median(img.pixels[outside]) + 20, (image_id, label)
            checked += 1
    assert checked >= 5


def test_ct_boxes_over_lesions_and_masks_on_grid(phantom):
    out, _ = phantom
    _, rows = _rows(os.path.join(out, "ct", "DL_info.csv"))
    by_slice = {}
    for r in rows:
        by_slice.setdefault(r["File_name"], []).append(r)
    nominal = {"heart": HU["blood"], "aorta": HU["blood"], "liver": HU["liver"], "spleen": HU["spleen"],
               "kidney_left": HU["kidney"], "kidney_right": HU["kidney"]}
    for name, lesions in by_slice.items():
        series, key = name[:-8], int(lesions[0]["Key_slice_index"])
        row_mm, col_mm, slice_mm = _numbers(lesions[0]["Spacing_mm_px_"])
        lo, hi = _numbers(lesions[0]["DICOM_windows"])
        img = load_image(_item(os.path.join(out, "ct", "Images_png", series), slice_index=key,
                               window=((lo + hi) / 2, hi - lo), spacing_mm=(row_mm, col_mm)), {"ct_window": "auto"})
        hu = img.hu
        mdir = os.path.join(out, "ct", "masks", f"{series}_{key:03d}")
        organs = {}
        for organ in CT_ORGANS:
            nii = nib.load(os.path.join(mdir, f"{organ}.nii.gz"))
            mask, spacing = display_slice(nii, None)
            assert mask.shape == hu.shape and spacing == pytest.approx((row_mm, col_mm), abs=1e-5)
            assert nii.header.get_zooms()[2] == pytest.approx(slice_mm)
            organs[organ] = mask > 0
        lungs = np.any([organs[o] for o in CT_ORGANS[:5]], axis=0)
        kidneys = organs["kidney_left"] | organs["kidney_right"]
        # The masks lie on the HU grid: each organ's median HU is its nominal value (a transposed or flipped
        # mask would sample other tissue).
        if lungs.any():
            assert abs(np.median(hu[lungs]) - HU["lung"]) < 60
        for organ, value in nominal.items():
            if organs[organ].sum() > 50:
                assert abs(np.median(hu[organs[organ]]) - value) < 15, (name, organ)
        hosts = {"lung nodule": lungs, "liver cyst": organs["liver"], "liver mass": organs["liver"],
                 "kidney cyst": kidneys}
        boxes = [(r["Phantom_class"], [int(round(v)) for v in _numbers(r["Bounding_boxes"])]) for r in lesions]
        for label, (x1, y1, x2, y2) in boxes:
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            host = hosts[label]
            in_box = np.zeros_like(host)
            in_box[y1:y2, x1:x2] = True
            rest = host.copy()
            for _, (a1, b1, a2, b2) in boxes:
                rest[b1:b2, a1:a2] = False
            lesion, organ = np.median(hu[in_box & host]), np.median(hu[rest])
            if label == "lung nodule":
                assert lesion > organ + 300, (name, label)
            elif label == "liver mass":
                assert lesion > organ + 25, (name, label)
            else:  # cysts: water density, darker than their organ
                assert lesion < organ - 15, (name, label)


def test_dicom_tags_hold_the_fake_identity(phantom):
    out, _ = phantom
    names = set()
    for f in sorted(os.listdir(os.path.join(out, "cxr", "images"))):
        path = os.path.join(out, "cxr", "images", f)
        raw = open(path, "rb").read()
        ds = pydicom.dcmread(path)
        assert raw[128:132] == b"DICM"
        assert re.fullmatch(r"PHANTOM\^[A-Z]+_\d{4}", str(ds.PatientName))
        for value in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.InstitutionName):
            assert value and value.encode() in raw  # the lead's de-identification test searches for these
        assert ds.SOPClassUID in (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage)
        assert ds.Modality == ("DX" if ds.SOPClassUID == DigitalXRayImageStorageForPresentation else "CR")
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert ds.ViewPosition in ("PA", "AP") and "WindowCenter" in ds and "WindowWidth" in ds
        assert ("PixelSpacing" in ds) or ("ImagerPixelSpacing" in ds)
        assert ds.StudyInstanceUID.is_valid and ds.SOPInstanceUID != ds.StudyInstanceUID
        names.add(str(ds.PatientName))
    assert names
    for csv_path in ("cxr/annotations.csv", "ct/DL_info.csv"):  # identities live only in the DICOM headers
        text = open(os.path.join(out, csv_path)).read()
        assert not any(n in text for n in names)


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--seed" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert main(["--out", str(out), "-n", "2", "--cxr-size", "96", "--ct-size", "96"]) == 0
    assert json.loads(capsys.readouterr().out)["n_cxr"] == 1
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "precious.txt").write_text("keep me")
    assert main(["--out", str(tmp_path / "user"), "-n", "2"]) == 2
    assert (tmp_path / "user" / "precious.txt").read_text() == "keep me"
