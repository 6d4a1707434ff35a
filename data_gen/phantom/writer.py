"""`write_phantom`: the built-in sample dataset in real formats (`medclm-data phantom` writes it).

Layout (the contract with the `phantom` annotation adapter):

    DIR/phantom.json                         seed, counts, classes, version, conventions
    DIR/cxr/images/<image_id>.dicom          DX/CR chest radiographs (fake patient names and ids)
    DIR/cxr/annotations.csv                  VinDr-CXR header: image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    DIR/cxr/masks/<image_id>/<organ>.png     CXAS-named organ masks, 0/255
    DIR/ct/Images_png/<pat>_<study>_<series>/<slice:03d>.png   DeepLesion 16-bit PNG (HU + 32768)
    DIR/ct/DL_info.csv                       DeepLesion header + `Phantom_class` (one row per lesion)
    DIR/ct/masks/<pat>_<study>_<series>_<slice:03d>/<name>.nii.gz  TotalSegmentator-named single-slice masks

Box conventions: pixel coordinates on the stored image, xyxy, pixel edges (a lesion covering columns 10..19 has
x_min 10, x_max 20). CXR boxes are one radiologist's read each: the true extent plus up to +-3 px of jitter
(scaled with size); CT boxes are the true extent. DeepLesion's `DICOM_windows` is "low, high" in HU.

Every random choice comes from `numpy.random.default_rng([seed, part, index])`, so image i is the same whatever
n is, and the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time

import numpy as np

from data_gen.phantom.ct import CT_CLASSES, CT_ORGANS, CT_TYPES, ct_slice
from data_gen.phantom.ct import plan_findings as plan_ct
from data_gen.phantom.cxr import CXR_CLASSES, chest_radiograph
from data_gen.phantom.cxr import plan_findings as plan_cxr
from data_gen.phantom.files import (RadiographTags, slice_affine, write_hu_png, write_mask_nifti, write_mask_png,
                                    write_radiograph_dicom)

VERSION = 1
VINDR_HEADER = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
DL_HEADER = ("File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index", "Measurement_coordinates",
             "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location", "Coarse_lesion_type",
             "Possibly_noisy", "Slice_range", "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender",
             "Patient_age", "Train_Val_Test")
CLASS_COLUMN = "Phantom_class"
NO_FINDING = "No finding"
FIRST_NAMES = ("ALICE", "BRUNO", "CLARA", "DMITRI", "EMMA", "FARID", "GRETA", "HUGO", "INES", "JONAS", "KAYA",
               "LEON", "MIRA", "NILS", "OLGA", "PAVEL", "QUINN", "ROSA", "SAMIR", "TILDA", "UMAR", "VERA", "WILLEM",
               "XENIA", "YUSUF", "ZOE")
CT_WINDOWS = {"chest": (-1350, 150), "abdomen": (-175, 275)}  # DeepLesion DICOM_windows ("low, high" HU)
_CXR, _CT, _PATIENTS = 1, 2, 3  # rng stream ids


def _fmt(values, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _patients(seed: int, n: int, part: int) -> list[tuple[int, int]]:
    """(patient number, study number) per image; about a quarter of the images are a patient's second study."""
    rng = np.random.default_rng([seed, _PATIENTS, part])
    out, patient, study = [], 0, 0
    for i in range(n):
        if i and rng.random() < 0.25 and study < 2:
            study += 1
        else:
            patient, study = patient + 1, 1
        out.append((patient, study))
    return out


def _prepare(out_dir: str) -> None:
    """Create `out_dir`; refuse a non-empty folder that is not a previous phantom (never delete user data)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, "phantom.json")):
            raise FileExistsError(f"{out_dir} is not empty and holds no phantom.json; choose an empty folder")
        for sub in ("cxr", "ct"):
            shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    for sub in ("cxr/images", "cxr/masks", "ct/Images_png", "ct/masks"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)


def _write_cxr(out_dir: str, seed: int, n: int, size: int, counts: dict) -> int:
    rows = []
    patients = _patients(seed, n, _CXR)
    for i in range(n):
        rng = np.random.default_rng([seed, _CXR, i])
        labels = plan_cxr(rng)
        radiograph = chest_radiograph(rng, size, labels)
        image_id = hashlib.sha256(f"medclm-phantom-cxr-{seed}-{i}".encode()).hexdigest()[:32]
        patient, study = patients[i]
        modality = "DX" if rng.random() < 0.6 else "CR"
        photometric = "MONOCHROME1" if rng.random() < (0.6 if modality == "CR" else 0.15) else "MONOCHROME2"
        prng = np.random.default_rng([seed, _PATIENTS, _CXR, patient])  # per-patient attributes
        age = int(prng.integers(18, 90))
        tags = RadiographTags(
            patient_name=f"PHANTOM^{FIRST_NAMES[patient % len(FIRST_NAMES)]}_{patient:04d}",
            patient_id=f"PHX{seed % 1000:03d}{patient:05d}",
            birth_date=f"{2024 - age}{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}",
            sex="F" if prng.random() < 0.5 else "M",
            age_years=age,
            study_date=f"2024{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
            accession=f"PHA{seed % 1000:03d}{i:06d}",
            modality=modality,
            view="PA" if rng.random() < 0.75 else "AP",
            photometric=photometric,
            spacing_mm=round(float(rng.uniform(350.0, 430.0)) / size, 6),
            uid_key=(str(seed), f"p{patient}", f"s{study}", f"i{i}"),
            study_number=study,
            instance_number=1,
        )
        write_radiograph_dicom(os.path.join(out_dir, "cxr", "images", f"{image_id}.dicom"), radiograph.image, tags)
        mask_dir = os.path.join(out_dir, "cxr", "masks", image_id)
        os.makedirs(mask_dir, exist_ok=True)
        for name, mask in radiograph.organs.items():
            write_mask_png(os.path.join(mask_dir, f"{name}.png"), mask)
        readers = [f"R{k}" for k in sorted(rng.choice(np.arange(1, 18), size=3, replace=False))]
        if not radiograph.lesions:
            counts["cxr_no_finding"] += 1
            rows += [(image_id, rad, NO_FINDING, "", "", "", "") for rad in readers]
        for lesion in radiograph.lesions:
            counts["cxr_lesions"][lesion.label] += 1
        jitter = 3.0 * size / 512
        for rad in readers:
            for lesion in radiograph.lesions:
                x1, y1, x2, y2 = (np.array(lesion.box, float) + rng.uniform(-jitter, jitter, 4)).clip(0, size)
                x2, y2 = max(x2, x1 + 2.0), max(y2, y1 + 2.0)
                rows.append((image_id, rad, lesion.label, *(f"{v:.1f}" for v in (x1, y1, min(x2, size),
                                                                                    min(y2, size)))))
    with open(os.path.join(out_dir, "cxr", "annotations.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(VINDR_HEADER)
        w.writerows(rows)
    return len(rows)


def _write_ct(out_dir: str, seed: int, n: int, size: int, counts: dict) -> int:
    rows = []
    patients = _patients(seed, n, _CT)
    for i in range(n):
        rng = np.random.default_rng([seed, _CT, i])
        region = "chest" if i % 2 == 0 else "abdomen"
        labels = plan_ct(rng, region)
        ct = ct_slice(rng, size, region, labels)
        patient, study = patients[i]
        series = 1 + int(rng.integers(0, 3))
        key = int(rng.integers(20, 120))
        spacing = round(float(rng.uniform(0.6, 0.9)) * 512 / size, 6)
        slice_mm = float(rng.choice([1.25, 2.5, 5.0]))
        series_name = f"{patient:06d}_{study:02d}_{series:02d}"
        os.makedirs(os.path.join(out_dir, "ct", "Images_png", series_name), exist_ok=True)
        write_hu_png(os.path.join(out_dir, "ct", "Images_png", series_name, f"{key:03d}.png"), ct.hu)
        mask_dir = os.path.join(out_dir, "ct", "masks", f"{series_name}_{key:03d}")
        os.makedirs(mask_dir, exist_ok=True)
        affine = slice_affine((spacing, spacing), slice_mm, key, ct.hu.shape)
        for name in CT_ORGANS:
            write_mask_nifti(os.path.join(mask_dir, f"{name}.nii.gz"), ct.organs[name], affine)
        prng = np.random.default_rng([seed, _PATIENTS, _CT, patient])
        sex, age = ("F" if prng.random() < 0.5 else "M"), int(prng.integers(18, 90))
        split = 1 + int(np.searchsorted([0.7, 0.85], prng.random()))
        z = rng.uniform(0.3, 0.45) if region == "chest" else rng.uniform(0.5, 0.65)
        for lesion in ct.lesions:
            counts["ct_lesions"][lesion.label] += 1
            x1, y1, x2, y2 = lesion.box
            rows.append((
                f"{series_name}_{key:03d}.png", patient, study, series, key, _fmt(lesion.recist),
                _fmt(lesion.box), _fmt(lesion.diameters), _fmt(((x1 + x2) / 2 / size, (y1 + y2) / 2 / size, z)),
                CT_TYPES[lesion.label], 0, f"{key}, {key}", _fmt((spacing, spacing, slice_mm), 6),
                f"{size}, {size}", ", ".join(str(v) for v in CT_WINDOWS[region]), sex, age, split, lesion.label,
            ))
    with open(os.path.join(out_dir, "ct", "DL_info.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(DL_HEADER + (CLASS_COLUMN,))
        w.writerows(rows)
    return len(rows)


def write_phantom(out_dir: str, n: int, seed: int = 0, *, cxr_size: int = 512, ct_size: int = 512,
                  cxr_fraction: float = 0.5) -> dict:
    """Write the phantom dataset (layout in the module docstring).

    Args:
      out_dir: output folder; created, or a previous phantom there is replaced; any other non-empty folder is
        refused.
      n: number of images in all; `n * cxr_fraction` radiographs (rounded half up), the rest CT slices.
      seed: the dataset seed (same seed -> same bytes).
      cxr_size, ct_size: image side in pixels (anatomy and lesion sizes scale with it).
      cxr_fraction: share of radiographs.

    Returns:
      A summary: counts of images, rows, lesions per class, "No finding" images, and the seconds taken.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    start = time.perf_counter()
    n_cxr = int(np.floor(n * cxr_fraction + 0.5))  # half up: n=1 gives one radiograph
    n_ct = n - n_cxr
    _prepare(out_dir)
    counts = {"cxr_no_finding": 0, "cxr_lesions": {c: 0 for c in CXR_CLASSES},
              "ct_lesions": {c: 0 for c in CT_CLASSES}}
    cxr_rows = _write_cxr(out_dir, seed, n_cxr, cxr_size, counts)
    ct_rows = _write_ct(out_dir, seed, n_ct, ct_size, counts)
    info = {
        "version": VERSION,
        "seed": seed,
        "n_cxr": n_cxr,
        "n_ct": n_ct,
        "classes": list(CXR_CLASSES) + list(CT_CLASSES),
        "cxr_classes": list(CXR_CLASSES),
        "ct_classes": list(CT_CLASSES),
        "ct_coarse_types": CT_TYPES,
        "ct_class_column": CLASS_COLUMN,
        "sizes": {"cxr": cxr_size, "ct": ct_size},
        "conventions": {
            "boxes": "pixel xyxy on the stored image, pixel edges (x_max = last column + 1)",
            "display": "image-left is patient-right (CXR and axial CT); CT row 0 anterior",
            "dicom_windows": "DeepLesion 'low, high' in HU",
            "ct_masks": "single-slice NIfTI per key slice; data_gen.imaging.display_slice(img, 0) is the PNG grid",
        },
    }
    with open(os.path.join(out_dir, "phantom.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    return {"out_dir": out_dir, "n_cxr": n_cxr, "n_ct": n_ct, "cxr_rows": cxr_rows, "ct_rows": ct_rows, **counts,
            "seconds": round(time.perf_counter() - start, 3)}
