"""COCO-format detection datasets (instances JSON): many lesion datasets are released this way.

    root/annotations.json      {"images": [{id, file_name, width?, height?, patient_id?, modality?}, ...],
                                "annotations": [{id, image_id, category_id, bbox: [x, y, w, h], iscrowd?}, ...],
                                "categories": [{id, name}, ...]}
    root/images/<file_name>

Boxes are xywh pixels -> xyxy. Classes are the category names (open vocabulary; `options.class_map` renames).
Per annotation: an unknown `image_id` or `category_id` rejects the row ('unknown_image' / 'unknown_category');
`iscrowd=1` regions are not single lesions and are rejected ('crowd_annotation'). Images without any annotation
become negative items (`options.empty_images='negative'`, the default) or are rejected ('skip'). COCO has no
patient notion: the patient key is the image's `patient_id` (or `patient`) field when present, else the image id
(then images of one patient may land in different splits: add patient ids when you have them). An image `id` that
is not an integer or a string rejects the image entry ('bad_id'); an annotation of an image rejected for its path
('outside_root') is rejected as 'image_rejected'. Unannotated image files are counted in the folders that hold
the listed images.
"""

from __future__ import annotations

import os
from typing import Any

from data_gen.annotations import classes
from data_gen.annotations.base import (IMAGE_SUFFIXES, AnnotationSet, Collector, cfg_get, duplicates_mode, options,
                                       parse_fields, require_root, resolve, row_ref)
from data_gen.annotations.tables import read_json
from data_gen.errors import ConfigError, InputError

OPTIONS = ("empty_images",)  # adapter.options this adapter reads (besides base.COMMON_OPTIONS)
EXPECTED = ('{"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h]}], '
            '"categories": [{"id", "name"}]}')


def load(cfg: Any) -> AnnotationSet:
    """The `coco` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "coco")
    opts = options(cfg, OPTIONS)
    empty_images = str(opts.get("empty_images", "negative"))
    if empty_images not in ("negative", "skip"):
        raise ConfigError(f"adapter.options.empty_images: unknown value {empty_images!r}; expected one of "
                          "['negative', 'skip']")
    json_path = resolve(root, cfg_get(cfg, "json", "annotations.json"))
    image_dir = resolve(root, cfg_get(cfg, "image_dir", "images"))
    mask_dir = cfg_get(cfg, "mask_dir")
    mask_dir = resolve(root, mask_dir) if mask_dir else None
    modality = cfg_get(cfg, "modality")
    source = cfg_get(cfg, "source", "coco")
    class_map = classes.class_map({}, cfg, open_vocab=True)

    data = read_json(json_path, adapter="coco", expected=EXPECTED)
    if not isinstance(data, dict):
        raise InputError(f"the top level is a {type(data).__name__}, not an object; expected {EXPECTED}",
                         path=json_path, reason="bad_structure")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"missing list {key!r}; the coco adapter expects {EXPECTED}", path=json_path,
                             field=key, reason="missing_field")

    categories = {}
    for c in data["categories"]:
        if isinstance(c, dict) and "id" in c and "name" in c:
            categories[c["id"]] = str(c["name"])

    col = Collector(root, folders=(image_dir,), duplicates=duplicates_mode(opts))
    items = {}  # COCO image id -> item (the first entry of a duplicated id)
    for i, img in enumerate(data["images"]):
        where = row_ref(json_path, root, f"images[{i}]")
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            col.reject("image", where, "missing_field", "an image entry needs 'id' and 'file_name'", rows=0)
            continue
        if _key(img["id"]) is None:
            col.reject("image", where, "bad_id", f"'id' must be an integer or a string, got {type(img['id']).__name__}"
                                                 f" {str(img['id'])[:40]}", rows=0)
            continue
        key = str(img["id"])
        patient = img.get("patient_id", img.get("patient"))
        stem = os.path.splitext(os.path.basename(str(img["file_name"])))[0]
        item = col.item(key, os.path.join(image_dir, str(img["file_name"])), where, rows=0, source=source,
                        patient_key=str(patient) if patient not in (None, "") else key,
                        study_key=str(img.get("study_id", "")), modality=img.get("modality") or modality,
                        mask_ref=os.path.join(mask_dir, stem) if mask_dir else None)
        if item is None or img["id"] in items:
            continue
        if "width" in img and "height" in img:
            item.extra["size"] = [img["width"], img["height"]]
        items[img["id"]] = item

    annotated = set()
    for i, ann in enumerate(data["annotations"]):
        where = row_ref(json_path, root, f"annotations[{i}]")
        col.count("rows")
        if not isinstance(ann, dict):
            col.reject("row", where, "missing_field", "an annotation must be an object")
            continue
        item = items.get(_key(ann.get("image_id")))
        if item is None:
            refused = col.refused(str(ann.get("image_id"))) if _key(ann.get("image_id")) is not None else None
            if refused:
                col.reject("row", where, "image_rejected", f"the image of this annotation was rejected at {refused}")
            else:
                col.reject("row", where, "unknown_image",
                           f"image_id {str(ann.get('image_id'))[:40]} is not in 'images'")
            continue
        annotated.add(item.image_key)
        col.claim(item.image_key)
        if _key(ann.get("category_id")) not in categories:
            col.reject("row", where, "unknown_category", f"category_id {ann.get('category_id')!r} is not in "
                                                         "'categories'")
            continue
        if ann.get("iscrowd"):
            col.reject("lesion", where, "crowd_annotation", "iscrowd=1 marks a group, not one lesion")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            reason = "missing_box" if not bbox else "bad_number"
            col.reject("row", where, reason, f"bbox must be [x, y, w, h], got {bbox!r}")
            continue
        try:
            x, y, w, h = parse_fields([(f"bbox {k}", v) for k, v in zip("xywh", bbox)])
        except ValueError as e:
            col.reject("row", where, "bad_number", str(e))
            continue
        col.add_lesion(item, (x, y, x + w, y + h), categories[ann["category_id"]], class_map, where)

    for item in items.values():
        if item.image_key in annotated:
            continue
        if empty_images == "negative":
            item.negative = True
            col.count("empty_images_as_negative")
        else:
            col.reject("image", row_ref(json_path, root, f"images[id={item.image_key}]"), "no_annotations",
                       "adapter.options.empty_images='skip'", rows=0)
            col.drop(item.image_key)
    col.count_unannotated([image_dir] + sorted({os.path.dirname(p) for p in col.referenced}), IMAGE_SUFFIXES)
    return col.finish()


def _key(value: Any) -> Any:
    """A JSON id usable as a dict key (ints and strings); anything else matches nothing."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None
