"""DeepLesion: key CT slices as 16-bit PNGs (HU + 32768) with one DL_info.csv row per lesion.

Layout (NIH release):
    root/DL_info.csv
    root/Images_png/<pat>_<study>_<series>/<slice:03d>.png

Columns used: `File_name` ("000001_01_01_109.png" -> Images_png/000001_01_01/109.png), `Patient_index` (patient
key), `Study_index`, `Key_slice_index` (the annotated slice), `Bounding_boxes` ("x1, y1, x2, y2" pixels, xyxy),
`Spacing_mm_px_` ("r, c, z" mm; the first two are the in-plane (row, col) spacing), `DICOM_windows` ("lo, hi" HU ->
window center (lo+hi)/2, width hi-lo), `Coarse_lesion_type` (1..8, mapped to a class by `options.type_map`; -1
means not annotated: kept as "lesion" and counted in stats['coarse_type_unknown']); `Train_Val_Test` (1/2/3, the
official split) and `Possibly_noisy` are kept in `item.extra` (the patient-level split of the build is our own).
Rows of the same key slice become one item with several lesions. With `class_column` set and present in the CSV
(the phantom's), a non-empty value there names the class directly (open vocabulary) instead of the type map.
`unannotated_images` is not counted: the slices around each key slice are its context, not unannotated images.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from data_gen.annotations import classes
from data_gen.annotations.base import (AnnotationSet, ClassMap, Collector, cfg_get, duplicates_mode, options,
                                       parse_number, parse_number_list, require_root, resolve, row_ref)
from data_gen.annotations.tables import read_csv

OPTIONS = ("type_map",)  # adapter.options this adapter reads (besides base.COMMON_OPTIONS)
EXPECTED_HEADER = ("File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
                   "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
                   "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,"
                   "Train_Val_Test")
REQUIRED = ("File_name", "Patient_index", "Study_index", "Key_slice_index", "Bounding_boxes", "Coarse_lesion_type",
            "Spacing_mm_px_", "DICOM_windows")
OPTIONAL = ("Train_Val_Test", "Possibly_noisy", "Image_size", "Series_ID")


def split_file_name(file_name: str) -> tuple[str, int]:
    """'000001_01_01_109.png' -> ('000001_01_01', 109); ValueError when it is not that shape."""
    stem = os.path.splitext(file_name)[0]
    series, _, slice_text = stem.rpartition("_")
    if not series or series.count("_") != 2 or not slice_text.isdigit():
        raise ValueError(f"File_name {file_name!r} is not <patient>_<study>_<series>_<slice>.png")
    return series, int(slice_text)


def parse_dl_info(csv_path: str, *, root: str, image_dir: str, type_map: Mapping[str, str],
                  source: str = "deeplesion", modality: Optional[str] = "ct", mask_dir: Optional[str] = None,
                  class_column: Optional[str] = None, class_map: Optional[ClassMap] = None,
                  adapter: str = "deeplesion", duplicates: str = "merge") -> AnnotationSet:
    """Parses a DeepLesion-style DL_info.csv (also the phantom's CT part).

    Args:
      csv_path: DL_info.csv.
      root: dataset root (row references are relative to it).
      image_dir: the `Images_png` folder.
      type_map: Coarse_lesion_type (str key) -> class.
      source, modality: copied to every item.
      mask_dir: when set, `item.mask_ref = mask_dir/<pat>_<study>_<series>_<slice:03d>`.
      class_column: a column that, when present and non-empty, names the class (overrides the type).
      class_map: canonical names for `class_column` values (open vocabulary when None).
      adapter: name used in messages.
      duplicates: rows repeated exactly: 'merge' or 'reject' (`base.duplicates_mode`).
    """
    table = read_csv(csv_path, adapter=adapter, required=REQUIRED, expected_header=EXPECTED_HEADER)
    use_class_column = bool(class_column) and table.has(class_column)
    class_map = class_map or ClassMap(open_vocab=True)
    col = Collector(root, folders=(image_dir,), duplicates=duplicates)
    columns = REQUIRED + OPTIONAL + ((class_column,) if use_class_column else ())
    for line, row in table.records(columns):
        where = row_ref(csv_path, root, line)
        col.count("rows")
        try:
            series, slice_no = split_file_name(row["File_name"])
            key_slice = int(parse_number(row["Key_slice_index"]))
            box = tuple(parse_number_list(row["Bounding_boxes"], 4))
            spacing = parse_number_list(row["Spacing_mm_px_"], 3)
            lo, hi = parse_number_list(row["DICOM_windows"], 2)
            coarse = int(parse_number(row["Coarse_lesion_type"]))
        except ValueError as e:
            col.reject("row", where, "bad_number", str(e))
            continue
        if not row["Patient_index"]:
            col.reject("row", where, "missing_field", "column Patient_index is empty")
            continue
        if key_slice != slice_no:
            col.count("key_slice_mismatch")  # the file name is what exists on disk; trust it
        image_key = row["File_name"]
        name = f"{series}_{slice_no:03d}"
        item = col.item(image_key, os.path.join(image_dir, series, f"{slice_no:03d}.png"), where, source=source,
                        patient_key=row["Patient_index"], study_key=f"{row['Patient_index']}_{row['Study_index']}",
                        modality=modality, slice_index=slice_no, spacing_mm=(spacing[0], spacing[1]),
                        window=((lo + hi) / 2.0, hi - lo),
                        mask_ref=os.path.join(mask_dir, name) if mask_dir else None)
        if item is None:
            continue
        if not item.extra:
            item.extra.update({"format": "deeplesion_png", "series": series, "coarse_types": [],
                               "possibly_noisy": []})
            if row.get("Train_Val_Test"):
                item.extra["train_val_test"] = row["Train_Val_Test"]
            if row.get("Image_size"):
                item.extra["image_size"] = row["Image_size"]
        raw_class = row.get(class_column, "") if use_class_column else ""
        if raw_class:
            added = col.add_lesion(item, box, raw_class, class_map, where)
        else:
            label, known = type_map.get(str(coarse)), True
            if coarse == -1:
                label = classes.DEEPLESION_UNTYPED
            elif label is None:
                label, known = f"coarse type {coarse}", False
            added = col.add_lesion(item, box, str(coarse), class_map, where, label=label, known=known)
            if added and coarse == -1:
                col.count("coarse_type_unknown")
        if not added:
            continue
        item.extra["coarse_types"].append(coarse)
        item.extra["possibly_noisy"].append(row.get("Possibly_noisy", "") == "1")
    return col.finish()


def load(cfg: Any) -> AnnotationSet:
    """The `deeplesion` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "deeplesion")
    opts = options(cfg, OPTIONS)
    return parse_dl_info(
        resolve(root, cfg_get(cfg, "csv", "DL_info.csv")),
        root=root,
        image_dir=resolve(root, cfg_get(cfg, "image_dir", "Images_png")),
        type_map=classes.type_map(classes.DEEPLESION_TYPES, cfg),
        source=cfg_get(cfg, "source", "deeplesion"),
        modality=cfg_get(cfg, "modality", "ct"),
        class_column=cfg_get(cfg, "class_column"),
        class_map=classes.class_map({}, cfg, open_vocab=True),
        duplicates=duplicates_mode(opts),
    )
