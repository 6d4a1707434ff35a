"""The MedCLM authors' input format: a JSON list of images with their organ-mask folder and lesion boxes.

    [{"image_path": "images/p1.png",            # the image (relative paths are relative to adapter.root)
      "anatomy_path": "masks/p1",               # folder of per-organ masks (file stem = organ name) -> mask_ref
      "annotations": [{"bbox": [xmin, ymin, xmax, ymax], "class": "nodule"}, ...],   # pixels, xyxy
      "image_id": "...", "patient_id": "...", "modality": "xray"},                   # optional (ours)
     ...]

Classes are open (any name, lowercased; `options.class_map` renames). An entry with an empty `annotations` list,
or whose only class is "No finding", is a negative image. The image key is `image_id` when given, else the
`image_path` as written; the patient key is `patient_id` when given, else the image key (the authors' format has
no patient field: add one so that patient-level splits mean something). The same key listed twice with the same
path merges the entries' boxes; with a different path the later entry is rejected ('duplicate_image_id').
`image_path` and `anatomy_path` must resolve (symbolic links followed) under adapter.root, else the entry is
rejected ('outside_root'). Unannotated image files are counted in the folders that hold the listed images.
"""

from __future__ import annotations

import os
from typing import Any

from data_gen.annotations import classes
from data_gen.annotations.base import (IMAGE_SUFFIXES, AnnotationSet, Collector, cfg_get, duplicates_mode,
                                       is_no_finding, options, parse_fields, require_root, resolve, row_ref)
from data_gen.annotations.tables import read_json
from data_gen.errors import InputError

OPTIONS = ()  # adapter.options this adapter reads besides base.COMMON_OPTIONS
EXPECTED = ('a list of {"image_path", "anatomy_path", "annotations": [{"bbox": [xmin, ymin, xmax, ymax], '
            '"class"}]}')


def load(cfg: Any) -> AnnotationSet:
    """The `generic_json` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "generic_json")
    opts = options(cfg, OPTIONS)
    json_path = resolve(root, cfg_get(cfg, "json", "annotations.json"))
    modality = cfg_get(cfg, "modality")
    source = cfg_get(cfg, "source", "generic_json")
    class_map = classes.class_map({}, cfg, open_vocab=True)

    data = read_json(json_path, adapter="generic_json", expected=EXPECTED)
    if not isinstance(data, list):
        raise InputError(f"the top level is a {type(data).__name__}, not a list; expected {EXPECTED}",
                         path=json_path, reason="bad_structure")
    col = Collector(root, duplicates=duplicates_mode(opts))
    for i, entry in enumerate(data):
        where = row_ref(json_path, root, f"[{i}]")
        anns = entry.get("annotations") if isinstance(entry, dict) else None
        n_rows = len(anns) if isinstance(anns, list) else 0
        col.count("rows", n_rows)
        if not isinstance(entry, dict) or not entry.get("image_path") or not isinstance(anns, list):
            missing = "image_path" if not isinstance(entry, dict) or not entry.get("image_path") else "annotations"
            col.reject("image", where, "missing_field", f"entry needs {missing!r} ({EXPECTED})", rows=n_rows)
            continue
        image_path = str(entry["image_path"])
        key = str(entry.get("image_id") or image_path)
        anatomy = entry.get("anatomy_path")
        if anatomy and not col.inside(resolve(root, str(anatomy)), where, rows=n_rows, field="anatomy_path"):
            continue
        item = col.item(key, resolve(root, image_path), where, rows=n_rows, source=source,
                        patient_key=str(entry.get("patient_id") or key), study_key=str(entry.get("study_id") or ""),
                        modality=entry.get("modality") or modality,
                        mask_ref=resolve(root, str(anatomy)) if anatomy else None)
        if item is None:
            continue
        if not anns:
            item.negative = True
        for j, ann in enumerate(anns):
            a_where = row_ref(json_path, root, f"[{i}].annotations[{j}]")
            if not isinstance(ann, dict) or not str(ann.get("class", "")).strip():
                col.reject("row", a_where, "missing_field", "an annotation needs 'class' (and 'bbox')")
                continue
            raw = str(ann["class"])
            if is_no_finding(raw):
                col.mark_no_finding(key)
                continue
            col.claim(key)
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                col.reject("row", a_where, "missing_box" if not bbox else "bad_number",
                           f"bbox must be [xmin, ymin, xmax, ymax], got {bbox!r}")
                continue
            try:
                box = tuple(parse_fields([(f"bbox {k}", v) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), bbox)]))
            except ValueError as e:
                col.reject("row", a_where, "bad_number", str(e))
                continue
            col.add_lesion(item, box, raw, class_map, a_where)
    col.count_unannotated(sorted({os.path.dirname(p) for p in col.referenced}), IMAGE_SUFFIXES)
    return col.finish()

