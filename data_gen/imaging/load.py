"""`load_image`: the first step of the per-image conversion. Finds the file's format and calls its reader.

Format detection looks at the bytes first and the name second, because datasets mislabel files (VinDr-CXR's
`.dicom`, DICOMs without extension, PNGs named `.dcm`):
  1. a folder: a DeepLesion-style series folder; the slice file is `{slice_index:03d}.png` inside it;
  2. `DICM` at byte 128: DICOM Part 10;
  3. PNG / JPEG / TIFF / BMP signatures: Pillow;
  4. `.nii` / `.nii.gz` names or the NIfTI-1/2 magic: nibabel;
  5. anything else is parsed as a DICOM data set without preamble (old ACR-NEMA style exports), and rejected
     as `not_dicom` when that fails.
Before any byte is read the file must be a regular file of at most `image.max_file_mb` (`data_gen.paths`): a
FIFO or device (`not_a_file`) would block or never end, an absurd size (`too_large`) is a mistake.
Resizing to `image.max_side` is not done here: the record writer does it, after linking on the original grid.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from data_gen.errors import InputError
from data_gen.imaging.dicom import is_dicom_magic, read_dicom
from data_gen.imaging.nifti import read_nifti
from data_gen.imaging.raster import read_raster
from data_gen.imaging.window import ImageOptions
from data_gen.paths import DEFAULT_MAX_FILE_MB, max_bytes, regular_file
from data_gen.types import ImageItem, LoadedImage

_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: str, head: bytes) -> bool:
    name = path.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return True
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")


def detect_format(path: str, limit: Optional[int] = None) -> str:
    """`dicom`, `nifti`, `raster` or `dicom_nopreamble` (try a raw DICOM parse) for a file.

    Args:
      path: the file.
      limit: the largest size in bytes to accept (None: `paths.DEFAULT_MAX_FILE_MB`).

    Raises:
      InputError: `missing_file`, `not_a_file`, `too_large`, `unreadable`, `truncated` (an empty file).
    """
    regular_file(path, limit if limit is not None else max_bytes(DEFAULT_MAX_FILE_MB))
    with open(path, "rb") as f:
        head = f.read(352)
    if not head:
        raise InputError("empty file (0 bytes): truncated download or copy; re-fetch it", path=path,
                         reason="truncated")
    if is_dicom_magic(head):
        return "dicom"
    if head.startswith(_RASTER_MAGIC):
        return "raster"
    if _is_nifti(path, head):
        return "nifti"
    return "dicom_nopreamble"


def resolve_path(item: ImageItem) -> str:
    """The image file of an item: the path itself, or the key slice inside a DeepLesion series folder."""
    path = item.path
    if os.path.isdir(path):
        if item.slice_index is None:
            raise InputError("a folder of slices needs the item's slice_index (key slice)", path=path,
                             reason="multi_frame")
        path = os.path.join(path, f"{item.slice_index:03d}.png")
    return path


def load_image(item: ImageItem, cfg: Any = None) -> LoadedImage:
    """Decode one image of a detection dataset into model pixels and linking metadata.

    Args:
      item: the adapter's record (path, modality, slice_index, spacing_mm, window, source, extra).
      cfg: the build config's `image` block (`ct_window`, `rgb_windows`, `xray_voi`; `max_side` is applied
        later by the writer), a dict, an `ImageOptions`, or None for the defaults.

    Returns:
      LoadedImage on the original pixel grid: uint8 `[H, W]` or `[H, W, 3]`, `hu` float32 `[H, W]` for CT.

    Raises:
      InputError: with a countable `reason` (`missing_file`, `not_a_file`, `too_large`, `not_dicom`, `truncated`,
        `burned_in_annotation`, `secondary_capture`, `unsupported_format`,
        `unsupported_transfer_syntax`, `multi_frame`, `slice_out_of_range`, `nan_pixels`, `constant_image`,
        ...), naming the file.
    """
    opts = ImageOptions.from_config(cfg)
    path = resolve_path(item)
    kind = detect_format(path, max_bytes(opts.max_file_mb))
    if kind == "raster":
        return read_raster(path, item, opts)
    if kind == "nifti":
        return read_nifti(path, item, opts)
    return read_dicom(path, item, opts, magic=(kind == "dicom"))
