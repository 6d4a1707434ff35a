"""NIH ChestX-ray14: PNG radiographs; 984 images carry boxes in BBox_List_2017.csv.

Layout (NIH release):
    root/BBox_List_2017.csv     Image Index,Finding Label,Bbox [x,y,w,h],,,
    root/Data_Entry_2017.csv    Image Index,Finding Labels,Follow-up #,Patient ID,...,View Position,
                                OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
    root/images/<Image Index>   (or the download's split folders root/images_001/images/..., found automatically)

The box header is written as `Bbox [x,y,w,h]` unquoted, so a CSV reader sees four columns `Bbox [x`, `y`, `w`,
`h]`: the four columns starting at the one whose name begins with "Bbox" are x, y, w, h (plain `x,y,w,h` headers
are accepted too). Boxes are xywh in pixels of the 1024x1024 PNG and become xyxy = (x, y, x + w, y + h).

Patient key: `Patient ID` from Data_Entry_2017.csv when that file is present, else the file-name prefix
(`00013118_008.png` -> `00013118`, which is how NIH numbers patients). The PNGs were resized from the original
radiographs to 1024x1024 (changing the aspect ratio), so the pixel spacing of the PNG is
`original spacing * original size / png_size` per axis (`options.png_size`, default 1024).
`options.include_no_finding=True` also adds the "No Finding" images of Data_Entry_2017.csv as negatives.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable, Optional

from data_gen.annotations import classes
from data_gen.annotations.base import (AnnotationSet, Collector, cfg_get, duplicates_mode, options, parse_fields,
                                       parse_number, require_root, resolve, row_ref)
from data_gen.annotations.tables import CsvTable, read_csv
from data_gen.errors import ConfigError, InputError

OPTIONS = ("png_size", "include_no_finding")  # adapter.options this adapter reads (besides base.COMMON_OPTIONS)
EXPECTED_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"
ENTRIES_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,..."


def _bbox_columns(table: CsvTable) -> list[int]:
    for i, name in enumerate(table.header):
        if name.lower().startswith("bbox"):
            if i + 4 > len(table.header):
                break
            return list(range(i, i + 4))
    if all(c in table.header for c in "xywh"):
        return [table.column(c) for c in "xywh"]
    raise InputError(f"missing column 'Bbox [x,y,w,h]' (four columns x, y, w, h); the nih_cxr14 adapter expects "
                     f"the header: {EXPECTED_HEADER}; found: {','.join(table.header)}", path=table.path,
                     field="Bbox [x,y,w,h]", reason="missing_column")


def _image_locator(root: str, image_dir: str) -> tuple[Callable[[str], str], list[str]]:
    """(Image Index -> path, the image folders): `image_dir/<name>`, or the release's `images_*/images/<name>` split
    folders.

    Raises:
      InputError(reason='unreadable_folder'): a split folder that cannot be listed (a symbolic link loop, no
        permission), naming it.
    """
    if not os.path.isdir(image_dir):
        found = {}
        folders = sorted(glob.glob(os.path.join(glob.escape(root), "images_*", "images")))
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        found.setdefault(entry.name, entry.path)
            except OSError as e:
                raise InputError(f"cannot list this image folder ({e.strerror or e}; a symbolic link loop?); fix it "
                                 "or set adapter.image_dir to the folder of the PNGs", path=folder,
                                 reason="unreadable_folder") from None
        if found:
            return (lambda name: found.get(name, os.path.join(image_dir, name))), folders
    return (lambda name: os.path.join(image_dir, name)), [image_dir]


def _pair(table: CsvTable, prefix: str) -> Optional[tuple[int, int]]:
    for i, name in enumerate(table.header):
        if name.startswith(prefix) and i + 1 < len(table.header):
            return i, i + 1
    return None


def _read_entries(path: str, png_size: float) -> dict[str, dict[str, Any]]:
    """Image Index -> {patient, view, spacing_mm, finding_labels, line} from Data_Entry_2017.csv."""
    table = read_csv(path, adapter="nih_cxr14", required=("Image Index", "Patient ID"),
                     expected_header=ENTRIES_HEADER, config_key="adapter.entries_csv")
    idx = {c: table.column(c) for c in ("Image Index", "Patient ID", "View Position", "Finding Labels")
           if table.has(c)}
    size, spacing = _pair(table, "OriginalImage["), _pair(table, "OriginalImagePixelSpacing[")
    out = {}
    for line, f in table.rows:
        get = lambda i: f[i].strip() if i is not None and i < len(f) else ""  # noqa: E731
        entry = {"patient": get(idx["Patient ID"]), "line": line,
                 "view": get(idx.get("View Position")) or None, "finding_labels": get(idx.get("Finding Labels"))}
        if size and spacing:
            try:
                w0, h0 = parse_number(get(size[0])), parse_number(get(size[1]))
                sx, sy = parse_number(get(spacing[0])), parse_number(get(spacing[1]))
                entry["spacing_mm"] = (sy * h0 / png_size, sx * w0 / png_size)  # (row, col) of the PNG
            except ValueError:
                pass
        out[get(idx["Image Index"])] = entry
    return out


def load(cfg: Any) -> AnnotationSet:
    """The `nih_cxr14` adapter: `cfg` is the build config's `adapter` section."""
    root = require_root(cfg, "nih_cxr14")
    opts = options(cfg, OPTIONS)
    csv_path = resolve(root, cfg_get(cfg, "csv", "BBox_List_2017.csv"))
    entries_path = cfg_get(cfg, "entries_csv", "Data_Entry_2017.csv")
    entries_path = resolve(root, entries_path) if entries_path else None
    png_size = opts.get("png_size", 1024)
    if isinstance(png_size, bool) or not isinstance(png_size, (int, float)) or not png_size > 0:
        raise ConfigError(f"adapter.options.png_size must be a number of pixels > 0, got {png_size!r}")
    entries = (_read_entries(entries_path, float(png_size))
               if entries_path and os.path.isfile(entries_path) else {})
    image_dir = resolve(root, cfg_get(cfg, "image_dir", "images"))
    locate, image_folders = _image_locator(root, image_dir)
    class_map = classes.class_map(classes.NIH_CXR14, cfg)
    source, modality = cfg_get(cfg, "source", "nih_cxr14"), cfg_get(cfg, "modality", "xray")

    col = Collector(root, folders=(image_dir,), duplicates=duplicates_mode(opts))
    seen: set[str] = set()

    def new_item(name: str, where: str):
        entry = entries.get(name)
        if entry is None and name not in seen:
            col.count("patient_key_from_filename")  # per image
        seen.add(name)
        patient = entry["patient"] if entry and entry["patient"] else name.split("_")[0]
        item = col.item(name, locate(name), where, source=source, patient_key=patient,
                        study_key=os.path.splitext(name)[0], modality=modality,
                        spacing_mm=entry.get("spacing_mm") if entry else None)
        if item is not None and entry and entry.get("view") and "view" not in item.extra:
            item.extra["view"] = entry["view"]
        return item

    table = read_csv(csv_path, adapter="nih_cxr14", required=("Image Index", "Finding Label"),
                     expected_header=EXPECTED_HEADER)
    bbox = _bbox_columns(table)
    i_name, i_label = table.column("Image Index"), table.column("Finding Label")
    for line, f in table.rows:
        get = lambda i: f[i].strip() if i < len(f) else ""  # noqa: E731
        where = row_ref(csv_path, root, line)
        col.count("rows")
        name, raw = get(i_name), get(i_label)
        if not name or not raw:
            col.reject("row", where, "missing_field", f"column {'Image Index' if not name else 'Finding Label'} "
                                                      "is empty")
            continue
        item = new_item(name, where)
        if item is None:
            continue
        values = [get(i) for i in bbox]
        try:
            x, y, w, h = parse_fields([(f"bbox {k}", v) for k, v in zip("xywh", values)])
        except ValueError as e:
            col.reject("row", where, "bad_number", str(e))
            continue
        col.add_lesion(item, (x, y, x + w, y + h), raw, class_map, where)

    if opts.get("include_no_finding", False) and entries:
        boxed = {i.image_key for i in col.items()}
        for name, entry in entries.items():
            if entry["finding_labels"].lower() == "no finding" and name not in boxed:
                item = new_item(name, row_ref(entries_path, root, entry["line"]))
                if item is not None:
                    item.negative = True
                    col.count("no_finding_entries")
    col.count_unannotated(image_folders, (".png",))
    return col.finish()

