"""VinDr-CXR: DICOM chest radiographs with boxes from several radiologists.

Layout (PhysioNet release):
    root/annotations/annotations_train.csv   image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    root/train/<image_id>.dicom

Each row is one radiologist's box (pixels, xyxy, on the DICOM's pixel grid) or a "No finding" row with empty box
fields. An image is negative when it has "No finding" rows and no valid box from any reader. With
`options.merge='iou'` same-class boxes whose IoU is >= `options.merge_iou` are merged into their mean (see
`merge.py`); `'none'` keeps every reader's box. The test-split CSV (consensus boxes) has no `rad_id`; it is
optional. VinDr images are de-identified per image and carry no patient id, so the image id is the patient key
(`options.patient_key='dicom'` reads PatientID from each header instead).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from data_gen.annotations import classes
from data_gen.annotations.base import (AnnotationSet, ClassMap, Collector, cfg_get, duplicates_mode, is_no_finding,
                                       options, parse_fields, require_root, resolve, row_ref)
from data_gen.annotations.merge import merge_reader_boxes
from data_gen.annotations.tables import read_csv
from data_gen.errors import ConfigError

EXPECTED_HEADER = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max"
REQUIRED = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
MERGE_MODES = ("iou", "none")
OPTIONS = ("merge", "merge_iou", "patient_key")  # adapter.options read (besides base.COMMON_OPTIONS)
PATIENT_KEYS = ("image_id", "dicom")


def patient_key_from_dicom(opts: Any, default: str) -> bool:
    """`options.patient_key`, checked: True for 'dicom' (PatientID of each header), False for 'image_id'."""
    mode = str(opts.get("patient_key") or default)
    if mode not in PATIENT_KEYS:
        raise ConfigError(f"adapter.options.patient_key: unknown value {mode!r}; expected one of {list(PATIENT_KEYS)}")
    return mode == "dicom"


def parse_vindr_csv(csv_path: str, *, root: str, image_dir: str, image_ext: str, class_map: ClassMap,
                    merge: str = "iou", merge_iou: float = 0.5, source: str = "vindr_cxr",
                    modality: Optional[str] = "xray", mask_dir: Optional[str] = None,
                    adapter: str = "vindr_cxr", patient_from_dicom: bool = False,
                    duplicates: str = "merge") -> AnnotationSet:
    """Parses a VinDr-style CSV (also the phantom's CXR part).

    Args:
      csv_path: the annotation CSV.
      root: dataset root (row references are relative to it).
      image_dir: folder of the images; the image of `image_id` is `image_dir/<image_id><image_ext>`.
      image_ext: e.g. '.dicom'.
      class_map: raw class name -> canonical class.
      merge: 'iou' (merge readers' same-class boxes with IoU >= merge_iou) or 'none' (keep all).
      merge_iou: the IoU threshold for 'iou'.
      source, modality: copied to every item.
      mask_dir: when set, `item.mask_ref = mask_dir/<image_id>` (the phantom's per-image mask folders).
      adapter: name used in messages.
      patient_from_dicom: take the patient key from each DICOM's PatientID (several studies per patient)
        instead of the image id.
      duplicates: rows repeated exactly: 'merge' or 'reject' (`base.duplicates_mode`).

    Returns:
      the AnnotationSet (see `base.py` for the stats keys).
    """
    if merge not in MERGE_MODES:
        raise ConfigError(f"adapter.options.merge: unknown value {merge!r}; expected one of {list(MERGE_MODES)}")
    if merge == "iou" and not 0.0 < merge_iou <= 1.0:
        raise ConfigError(f"adapter.options.merge_iou must be in (0, 1] (an IoU), got {merge_iou}")
    table = read_csv(csv_path, adapter=adapter, required=REQUIRED, expected_header=EXPECTED_HEADER)
    col = Collector(root, folders=(image_dir,), duplicates=duplicates)
    columns = ("image_id", "rad_id", "class_name") + BOX_COLUMNS
    for line, row in table.records(columns):
        where = row_ref(csv_path, root, line)
        col.count("rows")
        image_id, raw = row["image_id"], row["class_name"]
        if not image_id:
            col.reject("row", where, "missing_field", "column image_id is empty")
            continue
        if not raw:
            col.reject("row", where, "missing_field", "column class_name is empty")
            continue
        item = col.item(image_id, os.path.join(image_dir, image_id + image_ext), where, source=source,
                        patient_key=image_id, study_key=image_id, modality=modality,
                        mask_ref=os.path.join(mask_dir, image_id) if mask_dir else None)
        if item is None:  # cannot happen here (the path is derived from the id), kept for symmetry
            continue
        reader = row.get("rad_id") or None
        if reader:
            readers = item.extra.setdefault("readers", [])
            if reader not in readers:
                readers.append(reader)
        if is_no_finding(raw):
            col.mark_no_finding(image_id)
            continue
        col.claim(image_id)
        if not all(row[c] for c in BOX_COLUMNS):
            empty = [c for c in BOX_COLUMNS if not row[c]]
            col.reject("row", where, "missing_box", f"class {raw!r} needs a box; empty column(s) {empty}")
            continue
        try:
            box = tuple(parse_fields([(f"column {c}", row[c]) for c in BOX_COLUMNS]))
        except ValueError as e:
            col.reject("row", where, "bad_number", str(e))
            continue
        col.add_lesion(item, box, raw, class_map, where, reader=reader)

    col.count_unannotated([image_dir], (image_ext,))
    if merge == "iou":
        for item in col.items():
            if len(item.lesions) > 1:
                item.lesions, absorbed = merge_reader_boxes(item.lesions, merge_iou)
                col.count("merged_boxes", absorbed)
    result = col.finish()
    if patient_from_dicom:
        from data_gen.annotations.dicom_keys import patient_keys_from_dicom

        patient_keys_from_dicom(result.items, result.stats)
    return result


def load(cfg: Any) -> AnnotationSet:
    """The `vindr_cxr` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "vindr_cxr")
    opts = options(cfg, OPTIONS)
    return parse_vindr_csv(
        resolve(root, cfg_get(cfg, "csv", "annotations/annotations_train.csv")),
        root=root,
        image_dir=resolve(root, cfg_get(cfg, "image_dir", "train")),
        image_ext=cfg_get(cfg, "image_ext", ".dicom"),
        class_map=classes.class_map(classes.VINDR_CXR, cfg),
        merge=str(opts.get("merge", "iou")),
        merge_iou=float(opts.get("merge_iou", 0.5)),
        source=cfg_get(cfg, "source", "vindr_cxr"),
        modality=cfg_get(cfg, "modality", "xray"),
        mask_dir=resolve(root, cfg_get(cfg, "mask_dir")) if cfg_get(cfg, "mask_dir") else None,
        patient_from_dicom=patient_key_from_dicom(opts, "image_id"),
        duplicates=duplicates_mode(opts),
    )
