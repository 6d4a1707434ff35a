"""Readers for organ-mask files: each returns the masks on the file's own grid with their raw class names.

Formats (what the segmenters and the authors' pipeline write):
  * per-organ PNG folder: `<folder>/<organ>.png`, file stem = organ name (the authors' input, CXAS `png`/`jpg`
    output). Binarized `> 127` as the authors' code does; a 0/1 PNG (maximum value 1) is read as is. Grey and
    1-bit PNG/JPEG files are decoded by OpenCV (the same pixels as Pillow's, several times faster), JPEGs at the
    linking grid's scale when one is given (`read_mask_image`); other modes (16-bit, palette, colour) by Pillow.
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
import io
import json
import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from data_gen.errors import InputError
from data_gen.paths import PathGuard
from data_gen.segment import names as organ_names
from data_gen.segment.grid import COVERAGE_FULL, area_resize, fit_plane, grid_shape
from data_gen.segment.mask_files import (MAX_MASK_BYTES, MAX_MASK_PIXELS, decoding, folder_guard, listed_file,
                                         opencv, require_file)
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


def _read_label_image(path: str) -> np.ndarray:
    """A label-map image file as an array of its values (palette indices, grey, 16-bit)."""
    with decoding(path, "label map"):
        with Image.open(path) as im:
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


# What OpenCV decodes to the same grey values as Pillow's "L": 8-bit grey and 1-bit PNGs, grey JPEGs. The file's
# last bytes must be the format's end marker (PNG's IEND chunk, JPEG's EOI, which can occur nowhere else in a
# JPEG): OpenCV returns a cut-short JPEG padded with grey, so those go to Pillow, which names the fault.
_OPENCV_MODES = ("L", "1")
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
_JPEG_SCALES = (8, 4, 2)


def _opencv_decodes(fmt: Optional[str], mode: str, data: bytes) -> bool:
    end = _END_MARKERS.get(fmt or "")
    return mode in _OPENCV_MODES and end is not None and end in data[-32:]


def _jpeg_scale(size: tuple[int, int], grid: Optional[tuple[int, int]]) -> int:
    """The coarsest libjpeg scale (1/8, 1/4, 1/2) that keeps a `size` (h, w) JPEG at least as fine as `grid`."""
    for s in _JPEG_SCALES if grid else ():
        if -(-size[0] // s) >= grid[0] and -(-size[1] // s) >= grid[1]:
            return s
    return 1


def read_mask_image(path: str, image_shape: Optional[tuple[int, int]] = None, cell: int = 1) -> np.ndarray:
    """One per-organ mask image -> a plane: when the file has the image's size (`image_shape`), on the image's
    linking grid of `cell` pixel cells (bool with cell 1, else coverage: `data_gen.segment.grid`); any other file
    as bool on its own grid (`load.to_organ_masks` resamples it and counts it). Pixels are in the mask when
    `binarize_png` says so.

    OpenCV decodes grey PNG/JPEG (`_opencv_decodes`); a JPEG straight at 1/2, 1/4 or 1/8 scale as the grid allows
    (libjpeg's DCT scaling: several times less work). The area mean of a two-valued mask's grey values, scaled so
    that its foreground value (the commonest above 127) is full, is the cells' coverage (JPEG noise moves it by ~1%
    of a cell at borders; within half a pixel's share of 0 or full it is snapped there);
    a mask whose mean stays at 127 or below (0/1 masks, faint ones) is decoded again at full size and binarized
    there (one whose mean is 0 everywhere is empty: CXAS writes many). Everything else, and anything OpenCV refuses, goes to Pillow, whose exceptions name the fault.
    """
    cv2 = opencv()
    with decoding(path, "mask image"):
        with open(path, "rb") as f:
            data = f.read(MAX_MASK_BYTES + 1)
        with Image.open(io.BytesIO(data)) as im:  # the header only: format, mode, size; Pillow's pixel limit
            fmt, mode, size = im.format, im.mode, (im.height, im.width)
            grid = grid_shape(size[0], size[1], cell) if image_shape and size == tuple(image_shape) else size
            grey = None
            if _opencv_decodes(fmt, mode, data):
                grey = _opencv_grey(cv2, data, _jpeg_scale(size, grid) if fmt == "JPEG" else 1, grid)
                if grey is not None and grey.shape != size and 0 < int(grey.max()) <= 127:  # 0/1 or faint
                    grey = _opencv_grey(cv2, data, 1, size)
            if grey is None:
                arr = np.asarray(im.convert("L") if mode in ("1", "P", "RGB", "RGBA", "LA") else im)
                if arr.ndim not in (2, 3):
                    raise InputError(f"a mask image is one 2-D plane, got shape {arr.shape}", path=path,
                                     reason="bad_mask")
                return fit_plane(binarize_png(arr), grid, coverage=grid != size)
    if grey.shape == size:
        return fit_plane(binarize_png(grey), grid, coverage=grid != size)
    fg = COVERAGE_FULL
    if int(grey.max()) < COVERAGE_FULL:  # a foreground value below 255 (a 0/200 mask): full coverage is that
        fg = int(np.bincount(grey[grey > 127]).argmax())  # value (the commonest, not JPEG's overshoot)
    return cv2.LUT(grey, _coverage_table(fg, cell), dst=grey)  # in place: no second plane per mask


def _coverage_table(fg: int, cell: int) -> np.ndarray:
    """grey -> coverage for a mask whose foreground grey is `fg`, as one 256-entry lookup: scaled so that `fg` is
    full, and within half a pixel's share of empty or full snapped there (JPEG noise, not anatomy: a cell outside
    the mask must not count as touching it, for extents and distances)."""
    cov = np.minimum((np.arange(256) * COVERAGE_FULL + fg // 2) // fg, COVERAGE_FULL)
    noise = COVERAGE_FULL // (2 * cell * cell)
    cov[cov <= noise] = 0
    cov[cov >= COVERAGE_FULL - noise] = COVERAGE_FULL
    return cov.astype(np.uint8)


def _opencv_grey(cv2, data: bytes, scale: int, grid: tuple[int, int]) -> Optional[np.ndarray]:
    """Grey pixels decoded at 1/`scale`, brought down to `grid` by area when still finer; None if refused."""
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if grey is not None and grey.shape != grid and grey.shape[0] >= grid[0] and grey.shape[1] >= grid[1]:
        grey = area_resize(grey, grid)
    return grey


def read_png_dir(folder: str, image_shape: Optional[tuple[int, int]] = None, cell: int = 1) -> RawMasks:
    """Per-organ PNG folder -> RawMasks (names = file stems, sorted for a deterministic order); the masks of the
    image's size on its linking grid (`read_mask_image`).

    The planes go straight into one `[K, h, w]` stack (no second copy while stacking: at CXAS scale that is the
    worker's peak memory), or stay a list when the files differ in size.
    """
    _require_dir(folder)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(PNG_SUFFIXES))
    if not files:
        raise InputError(f"no mask images ({', '.join(PNG_SUFFIXES)}) in the folder", path=folder,
                         reason="missing_masks")
    guard = folder_guard(folder)
    names: list[str] = []
    stack: Optional[np.ndarray] = None
    planes: list[np.ndarray] = []
    for i, f in enumerate(files):
        plane = read_mask_image(listed_file(folder, f, guard), image_shape, cell)
        names.append(os.path.splitext(f)[0])
        if i == 0:
            stack = np.empty((len(files),) + plane.shape, plane.dtype)
        if stack is not None and plane.shape == stack.shape[1:] and plane.dtype == stack.dtype:
            stack[i] = plane
            continue
        if stack is not None:  # sizes differ: every plane is resampled on its own
            planes, stack = list(stack[:i]), None
        planes.append(plane)
    return RawMasks(names, stack if stack is not None else planes, "png_dir", folder)


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
        arr = _read_label_image(path)
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
