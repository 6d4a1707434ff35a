"""RSNA Pneumonia Detection: DICOM radiographs, boxes of lung opacities suggestive of pneumonia.

Layout (Kaggle stage 2):
    root/stage_2_train_labels.csv          patientId,x,y,width,height,Target
    root/stage_2_detailed_class_info.csv   patientId,class   ("Lung Opacity" | "Normal" |
                                           "No Lung Opacity / Not Normal"), optional
    root/stage_2_train_images/<patientId>.dcm

One row per box (xywh pixels -> xyxy); `Target` 1 rows carry a box, `Target` 0 rows (empty box) mark an image
without opacity. Such an image is not necessarily normal: a third of them are "No Lung Opacity / Not Normal"
(other pathology). `options.negatives` decides which become negative ("No finding") items:
  'auto' (default): 'normal_only' when the detailed class file is present, else 'all';
  'normal_only': only "Normal" images (the others are rejected with reason 'abnormal_without_box');
  'all': every Target 0 image; 'none': no negatives (rejected with reason 'negatives_disabled').
A patient with both Target 0 and Target 1 rows keeps its boxes; the Target 0 row is rejected
('conflicting_target'). One image per patient, so patientId is both the image and the patient key.
"""

from __future__ import annotations

import os
from typing import Any

from data_gen.annotations import classes
from data_gen.annotations.base import (AnnotationSet, Collector, cfg_get, duplicates_mode, options, parse_fields,
                                       require_root, resolve, row_ref)
from data_gen.annotations.tables import read_csv
from data_gen.errors import ConfigError

OPTIONS = ("negatives",)  # adapter.options this adapter reads (besides base.COMMON_OPTIONS)
EXPECTED_HEADER = "patientId,x,y,width,height,Target"
REQUIRED = ("patientId", "x", "y", "width", "height", "Target")
NEGATIVE_MODES = ("auto", "normal_only", "all", "none")
RSNA_CLASSES = {"Target=1": "lung opacity"}


def load(cfg: Any) -> AnnotationSet:
    """The `rsna` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "rsna")
    opts = options(cfg, OPTIONS)
    mode = str(opts.get("negatives", "auto"))
    if mode not in NEGATIVE_MODES:
        raise ConfigError(f"adapter.options.negatives must be one of {NEGATIVE_MODES}, got {mode!r}")
    csv_path = resolve(root, cfg_get(cfg, "csv", "stage_2_train_labels.csv"))
    info_path = cfg_get(cfg, "class_info_csv", "stage_2_detailed_class_info.csv")
    info_path = resolve(root, info_path) if info_path else None
    detailed = {}
    if info_path and os.path.isfile(info_path):
        info = read_csv(info_path, adapter="rsna", required=("patientId", "class"),
                        expected_header="patientId,class", config_key="adapter.class_info_csv")
        detailed = {r["patientId"]: r["class"] for _, r in info.records(("patientId", "class"))}
    if mode == "auto":
        mode = "normal_only" if detailed else "all"
    image_dir = resolve(root, cfg_get(cfg, "image_dir", "stage_2_train_images"))
    image_ext = cfg_get(cfg, "image_ext", ".dcm")
    class_map = classes.class_map(RSNA_CLASSES, cfg)
    source, modality = cfg_get(cfg, "source", "rsna"), cfg_get(cfg, "modality", "xray")

    table = read_csv(csv_path, adapter="rsna", required=REQUIRED, expected_header=EXPECTED_HEADER)
    col = Collector(root, folders=(image_dir,), duplicates=duplicates_mode(opts))
    negative_rows: dict[str, list[str]] = {}
    for line, row in table.records(REQUIRED):
        where = row_ref(csv_path, root, line)
        col.count("rows")
        pid = row["patientId"]
        if not pid:
            col.reject("row", where, "missing_field", "column patientId is empty")
            continue
        if row["Target"] not in ("0", "1"):
            col.reject("row", where, "bad_number", f"column Target: {row['Target']!r} is not 0 or 1")
            continue
        item = col.item(pid, os.path.join(image_dir, pid + image_ext), where, source=source, patient_key=pid,
                        study_key=pid, modality=modality)
        if item is None:
            continue
        if pid in detailed:
            item.extra["rsna_class"] = detailed[pid]
        if row["Target"] == "0":
            negative_rows.setdefault(pid, []).append(where)
            continue
        col.claim(pid)
        box_fields = [(c, row[c]) for c in ("x", "y", "width", "height")]
        if not all(v for _, v in box_fields):
            col.reject("row", where, "missing_box", "Target 1 needs x, y, width, height")
            continue
        try:
            x, y, w, h = parse_fields([(f"column {c}", v) for c, v in box_fields])
        except ValueError as e:
            col.reject("row", where, "bad_number", str(e))
            continue
        col.add_lesion(item, (x, y, x + w, y + h), "Target=1", class_map, where)

    by_key = {item.image_key: item for item in col.items()}
    for pid, wheres in negative_rows.items():
        if col.claimed(pid):  # the boxes (even rejected ones) win over a contradicting Target 0 row
            for where in wheres:
                col.reject("row", where, "conflicting_target", "Target 0 row for an image that has Target 1 boxes")
            continue
        if mode == "none":
            col.reject("image", wheres[0], "negatives_disabled", "adapter.options.negatives='none'", rows=len(wheres))
        elif mode == "normal_only" and detailed.get(pid) != "Normal":
            col.reject("image", wheres[0], "abnormal_without_box",
                       f"no box, detailed class {detailed.get(pid, 'unknown')!r}: not a normal image", rows=len(wheres))
        else:
            for _ in wheres:
                col.mark_no_finding(pid)
            continue
        col.drop(pid)
    col.count_unannotated([image_dir], (image_ext,))
    return col.finish()
