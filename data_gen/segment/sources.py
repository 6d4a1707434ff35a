"""Readers for organ-mask files: each returns the masks on the file's own grid with their raw class names.

Formats (what the segmenters and the authors' pipeline write):
  * per-organ PNG folder: `<folder>/<organ>.png`, file stem = organ name (the authors' input, CXAS `png`/`jpg`
    output). Binarized `> 127` as the authors' code does; a 0/1 PNG (maximum value 1) is read as is.
  * CXAS stack: `.npy` `[159, H, W]` or `.npz` (`arr_0`, as `np.savez_compressed` names it) in CXAS channel order;
    an npz may instead hold `masks` `[K, H, W]` and `names` `[K]`.
  * TotalSegmentator per-class folder: `<folder>/<class>.nii.gz` (v2 names), one binary volume per class.
  * TotalSegmentator `--ml`: one NIfTI whose voxel values are the class ids of the shipped v2 `total` table.
  * label map + names: a JSON `{"labelmap": "<file .png/.npy/.nii(.gz), relative to the JSON>",
    "labels": {"1": "liver", ...} | ["background", "liver", ...]}`.
  * COCO JSON (CXAS `json` output): categories + per-image annotations with RLE (compressed or not) or polygons.

NIfTI masks are read on the key slice in display orientation (`data_gen.segment.nifti`). Resampling to the image
grid and the display names are the caller's (`data_gen.segment.load`).

Every file is checked before it is opened (`data_gen.segment.mask_files`): a regular file (a FIFO would block the
worker for ever) of sane size; a file listed inside a mask folder, and the label map a JSON names, must resolve
(symbolic links followed) inside that folder. Every failure to read a mask file is an `InputError` naming the file,
with a countable reason:

  missing_masks   the reference (folder or file) does not exist, or a folder holds no mask files
  outside_root    a listed file or a JSON-named label map leads out of its folder (`..`, a symbolic link)
  missing_file / not_a_file / too_large / unreadable   `data_gen.paths.regular_file`
  truncated_mask  the file ends early (gzip/zip/PNG stream, or NIfTI data shorter than its header declares)
  bad_mask        anything else the decoder refuses, or content of the wrong shape or type
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from data_gen.errors import InputError
from data_gen.paths import PathGuard
from data_gen.segment import names as organ_names
from data_gen.segment.mask_files import (MAX_MASK_BYTES, MAX_MASK_PIXELS, decoding, folder_guard, listed_file,
                                         require_file)
from data_gen.segment.nifti import load_display_slice

PNG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass
class RawMasks:
    """Masks as a file holds them.

    Attributes:
      names: raw class names (file stems, table names), one per mask.
      masks: bool `[K, h, w]` on the file's grid (may differ from the image grid), or a list of `[h_k, w_k]`
        masks when the files of one folder differ in size.
      source: the format (`png_dir`, `cxas_npz`, `totalseg_dir`, `totalseg_ml`, `labelmap`, `coco`, ...).
      path: the file or folder read (for messages).
    """

    names: list[str]
    masks: Union[np.ndarray, list[np.ndarray]]
    source: str
    path: str = ""


def nifti_stem(filename: str) -> Optional[str]:
    """`liver.nii.gz` -> `liver`; None when not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)]
    return None


def _require_dir(folder: str) -> None:
    if not os.path.isdir(folder):
        raise InputError("mask folder not found; check masks.root / the item's mask_ref",
                         path=folder, reason="missing_masks")


def _read_image_file(path: str, what: str, keep_values: bool = False) -> np.ndarray:
    """A 2-D (or RGB) image file as an array; grey/palette/colour masks as "L" unless `keep_values`."""
    with decoding(path, what):
        with Image.open(path) as im:
            if not keep_values and im.mode in ("1", "P", "RGB", "RGBA", "LA"):
                im = im.convert("L")
            return np.asarray(im)


def _stack(masks: list[np.ndarray]) -> Union[np.ndarray, list[np.ndarray]]:
    """One `[K, h, w]` array, or the list itself when the files differ in size (each is resampled alone)."""
    if len({m.shape for m in masks}) == 1:
        return np.stack(masks)
    return masks


def binarize_png(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 mask pixels -> bool: `> 127` (the authors' rule), or `> 0` when the mask is 0/1."""
    if pixels.ndim == 3:
        pixels = pixels.max(axis=2)
    if pixels.size and pixels.max() <= 1:
        return pixels > 0
    return pixels > 127


def read_png_dir(folder: str) -> RawMasks:
    """Per-organ PNG folder -> RawMasks (names = file stems, sorted for a deterministic order)."""
    _require_dir(folder)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(PNG_SUFFIXES))
    if not files:
        raise InputError(f"no mask images ({', '.join(PNG_SUFFIXES)}) in the folder", path=folder,
                         reason="missing_masks")
    guard = folder_guard(folder)
    names, masks = [], []
    for f in files:
        p = listed_file(folder, f, guard)
        arr = _read_image_file(p, "mask image")
        if arr.ndim not in (2, 3):
            raise InputError(f"a mask image is one 2-D plane, got shape {arr.shape}", path=p, reason="bad_mask")
        names.append(os.path.splitext(f)[0])
        masks.append(binarize_png(arr))
    return RawMasks(names, _stack(masks), "png_dir", folder)


def read_cxas_stack(path: str, class_names: Optional[Sequence[str]] = None) -> RawMasks:
    """CXAS npy/npz stack -> RawMasks in CXAS channel order (or the npz's own `names`)."""
    require_file(path)
    names = list(class_names) if class_names is not None else None
    with decoding(path, "mask stack"):
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                key = "masks" if "masks" in keys else ("arr_0" if "arr_0" in keys else (keys[0] if keys else None))
                if key is None:
                    raise InputError("the npz holds no arrays", path=path, reason="bad_mask")
                _check_npz_member(loaded, key, path)
                stack = loaded[key]
                if "names" in keys and names is None:
                    _check_npz_member(loaded, "names", path)
                    names = [str(n) for n in loaded["names"]]
        else:
            stack = loaded
    if names is None:
        names = organ_names.cxas_classes()
    k = len(names)
    if stack.ndim != 3:
        raise InputError(f"expected a [K, H, W] mask stack, got shape {stack.shape}", path=path, reason="bad_mask")
    if stack.shape[0] != k and stack.shape[-1] == k:
        stack = np.moveaxis(stack, -1, 0)  # channel-last stacks
    if stack.shape[0] != k:
        raise InputError(
            f"the stack has {stack.shape[0]} channels but {k} class names are known (CXAS order has 159); save "
            "an npz with 'masks' and 'names' for other class lists", path=path, reason="bad_mask")
    return RawMasks([str(n) for n in names], stack > 0 if stack.dtype != bool else stack,
                    "cxas_npz" if path.endswith(".npz") else "cxas_npy", path)


def _check_npz_member(npz: "np.lib.npyio.NpzFile", key: str, path: str) -> None:
    """Refuses an npz member whose declared array is over `MAX_MASK_BYTES` before decompressing it (a few KB of
    zip can declare terabytes)."""
    member = key + ".npy" if key + ".npy" in npz.zip.namelist() else key
    with npz.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:  # format 3.0 (utf-8 field names): not a mask stack numpy writes by default
            return
        shape, _, dtype = read_header(f)
    n = int(np.prod(shape, dtype=np.float64)) * int(np.dtype(dtype).itemsize)
    if n > MAX_MASK_BYTES:
        raise InputError(f"the npz member {key!r} declares {n / 2**20:.0f} MiB ({shape}, {dtype}), over the "
                         f"{MAX_MASK_BYTES / 2**20:.0f} MiB limit", path=path, reason="too_large")


def read_totalseg_dir(folder: str, slice_index: Optional[int]) -> RawMasks:
    """TotalSegmentator per-class folder -> RawMasks on the key slice (names = file stems)."""
    _require_dir(folder)
    files = sorted(f for f in os.listdir(folder) if nifti_stem(f))
    if not files:
        raise InputError("no .nii/.nii.gz masks in the folder", path=folder, reason="missing_masks")
    guard = folder_guard(folder)
    names, masks = [], []
    for f in files:
        plane = load_display_slice(listed_file(folder, f, guard), slice_index)
        names.append(nifti_stem(f))
        masks.append(plane > 0)
    return RawMasks(names, _stack(masks), "totalseg_dir", folder)


def _split_labels(label_plane: np.ndarray, table: dict[int, str], path: str, source: str) -> RawMasks:
    """Integer label plane -> one mask per label value present (0 is background), in label order."""
    values = np.unique(label_plane)
    values = values[values != 0]
    names, masks = [], []
    for v in values.tolist():
        iv = int(v)
        if iv != v:
            raise InputError(f"label map holds a non-integer value {v}", path=path, reason="bad_mask")
        names.append(table.get(iv, f"label {iv}"))
        masks.append(label_plane == v)
    h, w = label_plane.shape
    stack = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    return RawMasks(names, stack, source, path)


def read_totalseg_ml(path: str, slice_index: Optional[int],
                     class_table: Optional[dict[int, str]] = None) -> RawMasks:
    """TotalSegmentator `--ml` multilabel NIfTI -> RawMasks via the shipped v2 `total` class table."""
    require_file(path)
    plane = load_display_slice(path, slice_index)
    table = class_table if class_table is not None else organ_names.totalsegmentator_classes()
    return _split_labels(np.asarray(plane), table, path, "totalseg_ml")


def _read_label_plane(path: str, slice_index: Optional[int]) -> np.ndarray:
    require_file(path)
    if nifti_stem(os.path.basename(path)):
        return np.asarray(load_display_slice(path, slice_index))
    if path.endswith(".npy"):
        with decoding(path, "label map"):
            arr = np.load(path, allow_pickle=False)
    else:
        arr = _read_image_file(path, "label map", keep_values=True)  # palette/grey/16-bit keep their values
    if arr.ndim != 2:
        raise InputError(f"a label map is one 2-D integer image, got shape {arr.shape}", path=path,
                         reason="bad_mask")
    if arr.size > MAX_MASK_PIXELS:
        raise InputError(f"a {arr.shape} label map is over {MAX_MASK_PIXELS} pixels", path=path,
                         reason="too_large")
    return arr


def _labels_table(labels: Union[dict, list], path: str) -> dict[int, str]:
    if isinstance(labels, list):
        return {i: str(n) for i, n in enumerate(labels) if i != 0}
    if isinstance(labels, dict):
        try:
            return {int(k): str(v) for k, v in labels.items()}
        except ValueError as e:
            raise InputError("label keys must be integers", path=path, field="labels", reason="bad_mask") from e
    raise InputError("'labels' must be a list or an {id: name} object", path=path, field="labels",
                     reason="bad_mask")


def read_labelmap(json_path: str, slice_index: Optional[int]) -> RawMasks:
    """Label map + names JSON (see the module docstring) -> RawMasks."""
    spec = _read_json(json_path)
    if "labelmap" not in spec or "labels" not in spec:
        raise InputError("a label-map JSON needs 'labelmap' (file) and 'labels' (names)", path=json_path,
                         reason="bad_mask")
    lm_path = os.path.join(os.path.dirname(json_path), str(spec["labelmap"]))
    # The JSON is data: the file it names must lie beside it (or below), not anywhere on the machine.
    PathGuard([os.path.dirname(json_path)], "the label-map JSON's folder").check(lm_path, field="labelmap")
    plane = _read_label_plane(lm_path, slice_index)
    return _split_labels(plane, _labels_table(spec["labels"], json_path), lm_path, "labelmap")


def _read_json(path: str) -> dict:
    require_file(path)
    with decoding(path, "mask JSON"):
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    if not isinstance(spec, dict):
        raise InputError("expected a JSON object", path=path, reason="bad_mask")
    return spec


def read_json_masks(json_path: str, slice_index: Optional[int], image_keys: Sequence[str] = (),
                    shape: Optional[tuple[int, int]] = None) -> RawMasks:
    """A `.json` mask reference: COCO (has `annotations`) or label map + names (has `labelmap`)."""
    spec = _read_json(json_path)
    if "annotations" in spec:
        from data_gen.segment.coco import coco_masks  # local: only COCO inputs need it

        names, stack = coco_masks(spec, json_path, image_keys, shape)
        return RawMasks(names, stack, "coco", json_path)
    return read_labelmap(json_path, slice_index)
