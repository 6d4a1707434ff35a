"""One axial slice of a NIfTI mask, displayed exactly as data_gen's NIfTI image reader displays the CT.

Masks only help if they lie on the image grid. TotalSegmentator writes its masks with the affine of the CT it
segmented, so the mask's key slice must go through the same transform as the image's key slice:

  1. canonical orientation (what `nib.as_closest_canonical` gives: voxel axes i, j, k increasing towards patient
     Right, Anterior, Superior, "RAS+");
  2. the key slice `k` (`ImageItem.slice_index`, counted in that canonical order; a single-slice file needs none);
  3. radiological display: row 0 anterior, column 0 at the patient's right (image-left is patient-right,
     `LoadedImage.col_direction == 'L'`), i.e. `display = canonical[:, :, k][::-1, ::-1].T`.

Only the one slice is read (the proxy is sliced on the file's own axes), so a 117-file TotalSegmentator folder of
full volumes costs 117 slices, not 117 volumes. A damaged file is an `InputError` naming it
(`data_gen.segment.mask_files`): an uncompressed file shorter than its header declares, or a .nii.gz whose stream
ends before the key slice, is `truncated_mask`; a slice over `MAX_MASK_PIXELS` is `too_large`.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from data_gen.errors import InputError
from data_gen.segment.mask_files import MAX_MASK_PIXELS, decoding


def load_display_slice(path: str, slice_index: Optional[int]) -> np.ndarray:
    """Reads axial slice `slice_index` (canonical RAS+ order) of a NIfTI file in display orientation.

    Args:
      path: a .nii or .nii.gz file holding a 3-D volume (a trailing 4th axis of size 1 is allowed) or one slice.
      slice_index: the axial index in canonical order (increasing towards superior); ignored for a single slice.

    Returns:
      `[rows, cols]` array with the file's dtype: rows anterior -> posterior, columns patient right -> left.

    Raises:
      InputError: `bad_mask` (not 3-D, undecodable), `truncated_mask`, `too_large`, `missing_slice_index` or
        `slice_out_of_range`, naming the file.
    """
    import nibabel as nib  # local: nibabel is only needed when NIfTI masks are used

    with decoding(path, "NIfTI mask"):
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise InputError(f"expected a 3-D mask volume, got shape {img.shape}", path=path, reason="bad_mask")
    _check_size(img, shape, path)

    ornt = nib.orientations.io_orientation(img.affine)  # row a: (canonical axis of file axis a, flip +1/-1)
    file_axis_of = {int(ornt[a, 0]): a for a in range(3)}
    flip_of = {int(ornt[a, 0]): ornt[a, 1] < 0 for a in range(3)}
    k_axis = file_axis_of[2]
    n_slices = shape[k_axis]
    if n_slices == 1:
        k_file = 0
    else:
        if slice_index is None:
            raise InputError(
                f"the mask volume has {n_slices} axial slices and the item names no key slice (slice_index)",
                path=path, reason="missing_slice_index")
        if not 0 <= int(slice_index) < n_slices:
            raise InputError(f"key slice {slice_index} is outside the mask volume's {n_slices} slices",
                             path=path, reason="slice_out_of_range")
        k = int(slice_index)
        k_file = n_slices - 1 - k if flip_of[2] else k

    source = img.dataobj if len(img.shape) >= 3 else np.asanyarray(img.dataobj)[:, :, None]
    index: list = [slice(None)] * max(3, len(img.shape))
    index[k_axis] = k_file
    for extra in range(3, len(index)):
        index[extra] = 0
    with decoding(path, "NIfTI mask"):
        plane = np.asanyarray(source[tuple(index)])  # the two remaining file axes, in file order

    # Put the plane in canonical (x: towards Right, y: towards Anterior) order, then flip to display.
    if file_axis_of[0] > file_axis_of[1]:
        plane = plane.T
    if flip_of[0]:
        plane = plane[::-1, :]
    if flip_of[1]:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def _check_size(img, shape: tuple[int, int, int], path: str) -> None:
    """A slice over `MAX_MASK_PIXELS` is refused before it is read; an uncompressed file shorter than its header
    declares is `truncated_mask` (reading it would fail, or quietly return zeros, only for the later slices)."""
    if shape[0] * shape[1] > MAX_MASK_PIXELS or shape[0] * shape[2] > MAX_MASK_PIXELS \
            or shape[1] * shape[2] > MAX_MASK_PIXELS:
        raise InputError(f"a {shape} mask volume has slices over {MAX_MASK_PIXELS} pixels", path=path,
                         reason="too_large")
    if path.lower().endswith(".nii"):
        header = img.header
        declared = int(header.get_data_offset()) + int(np.prod(shape)) * np.dtype(header.get_data_dtype()).itemsize
        size = os.path.getsize(path)
        if size < declared:
            raise InputError(f"cannot read NIfTI mask: the file ends early ({size} bytes, its header declares "
                             f"{declared}); re-export or re-copy it", path=path, reason="truncated_mask")


def display_to_canonical(display: np.ndarray) -> np.ndarray:
    """Inverse of the display transform for one slice: `[rows, cols]` display -> `[x (R), y (A)]` canonical.

    For writers (tests, the phantom) that need a NIfTI slice which reads back onto a given display grid.
    """
    return np.ascontiguousarray(display.T[::-1, ::-1])
