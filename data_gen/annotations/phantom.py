"""The built-in phantom dataset (written by `medclm-data phantom --out DIR`), read through the real parsers.

    DIR/phantom.json                 {"seed", "n_cxr", "n_ct", "classes": [...], "version": 1}
    DIR/cxr/annotations.csv          VinDr-CXR layout -> `vindr_cxr.parse_vindr_csv`
    DIR/cxr/images/<image_id>.dicom
    DIR/cxr/masks/<image_id>/        per-organ PNGs -> item.mask_ref
    DIR/ct/DL_info.csv               DeepLesion layout -> `deeplesion.parse_dl_info`
    DIR/ct/Images_png/<pat>_<study>_<series>/<slice:03d>.png
    DIR/ct/masks/<pat>_<study>_<series>_<slice:03d>/   TotalSegmentator-style NIfTIs -> item.mask_ref

CXR classes: the phantom's (Nodule, Mass, Pleural effusion, Consolidation) plus any name listed in
phantom.json's "cxr_classes" (or "classes"). CT classes: DeepLesion coarse types cannot tell the phantom's liver
cyst from its liver mass (both type 4), so the phantom adds a class column to DL_info.csv (named by phantom.json's
"ct_class_column", default `Phantom_class`; `adapter.class_column` overrides) that names the class when present;
otherwise phantom.json's optional "type_classes" {"4": ...} or the built-in type map is used. Items come
back with `source` 'phantom_cxr' / 'phantom_ct' and modality xray / ct. A part whose folder is absent is skipped
when phantom.json says it has no images (n_cxr / n_ct = 0).
"""

from __future__ import annotations

import os
from typing import Any

from data_gen.annotations import classes
from data_gen.annotations.base import AnnotationSet, ClassMap, as_dict, cfg_get, duplicates_mode, options, require_root
from data_gen.annotations.deeplesion import parse_dl_info
from data_gen.annotations.tables import read_json
from data_gen.annotations.vindr_cxr import parse_vindr_csv, patient_key_from_dicom
from data_gen.errors import InputError

OPTIONS = ("merge", "merge_iou", "patient_key", "type_map")  # adapter.options read (besides base.COMMON_OPTIONS)
SUPPORTED_VERSIONS = (1,)
EXPECTED = '{"seed": ..., "n_cxr": ..., "n_ct": ..., "classes": [...], "version": 1}'


def load(cfg: Any) -> AnnotationSet:
    """The `phantom` adapter: `cfg` is the build config's `adapter` section (root = the phantom folder)."""
    root = require_root(cfg, "phantom")
    opts = options(cfg, OPTIONS)
    meta_path = os.path.join(root, "phantom.json")
    if not os.path.isfile(meta_path):
        raise InputError("not a phantom folder (no phantom.json); write one with `medclm-data phantom --out DIR -n N`"
                         " and pass root=DIR", path=meta_path, reason="missing_file")
    meta = read_json(meta_path, adapter="phantom", expected=EXPECTED, config_key="adapter.root")
    if not isinstance(meta, dict) or meta.get("version") not in SUPPORTED_VERSIONS:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise InputError(f"phantom layout version {version!r} is not supported (supported: {SUPPORTED_VERSIONS}); "
                         "rewrite it with this version's `medclm-data phantom`", path=meta_path, field="version",
                         reason="unsupported_version")

    out = AnnotationSet([], [], {})
    cxr_dir = os.path.join(root, "cxr")
    if os.path.isdir(cxr_dir) or meta.get("n_cxr", 1):
        table = dict(classes.PHANTOM_CXR)
        table.update({str(c): str(c) for c in meta.get("cxr_classes", meta.get("classes", [])) if isinstance(c, str)})
        table.update({str(k): str(v) for k, v in as_dict(opts.get("class_map")).items()})
        out = out + parse_vindr_csv(
            os.path.join(cxr_dir, "annotations.csv"), root=root, image_dir=os.path.join(cxr_dir, "images"),
            image_ext=".dicom", class_map=ClassMap(table), merge=str(opts.get("merge", "iou")),
            merge_iou=float(opts.get("merge_iou", 0.5)), source="phantom_cxr", modality="xray",
            mask_dir=os.path.join(cxr_dir, "masks"), adapter="phantom",
            patient_from_dicom=patient_key_from_dicom(opts, "dicom"), duplicates=duplicates_mode(opts))
    ct_dir = os.path.join(root, "ct")
    if os.path.isdir(ct_dir) or meta.get("n_ct", 1):
        type_map = dict(classes.PHANTOM_CT_TYPES)
        type_map.update({str(k): str(v) for k, v in (meta.get("type_classes") or {}).items()})
        type_map.update({str(k): str(v) for k, v in as_dict(opts.get("type_map")).items()})
        out = out + parse_dl_info(
            os.path.join(ct_dir, "DL_info.csv"), root=root, image_dir=os.path.join(ct_dir, "Images_png"),
            type_map={k: " ".join(v.split()).lower() for k, v in type_map.items()}, source="phantom_ct",
            modality="ct", mask_dir=os.path.join(ct_dir, "masks"),
            class_column=cfg_get(cfg, "class_column", meta.get("ct_class_column", "Phantom_class")), adapter="phantom",
            duplicates=duplicates_mode(opts))
    return out
