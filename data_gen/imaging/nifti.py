"""NIfTI reader (nibabel): the key axial slice of a volume, in radiological display orientation, in HU.

Display convention (the same as axial CT on a PACS and as DeepLesion's PNG slices):
  * the volume is reoriented to the closest canonical RAS+ axes (`nibabel.as_closest_canonical`): voxel axis 0
    runs toward the patient's Right, axis 1 toward Anterior, axis 2 toward Superior;
  * an axial slice `canon[:, :, k]` (x, y) is shown with row 0 = anterior and image-left = patient-right, i.e.
    `display[r, c] = canon[X-1-c, Y-1-r]`: rows run anterior -> posterior, columns patient right -> left
    (`col_direction='L'`), as if looking up from the patient's feet.
  * `slice_index` counts along the canonical axis 2 (inferior -> superior), i.e. after reorientation, as the
    build brief specifies and as `data_gen.segment.nifti` reads TotalSegmentator masks. For a file stored
    superior -> inferior this is `n - 1 - (stored index)`; adapters that compute key slices from stored arrays
    must convert.

`display_slice` is public so mask sources can put TotalSegmentator NIfTI masks on exactly the same grid.
"""

from __future__ import annotations

from typing import Optional

import nibabel as nib
import numpy as np

from data_gen.errors import InputError
from data_gen.imaging.checks import check_pixels
from data_gen.imaging.window import ImageOptions, ct_to_uint8, stretch_to_uint8
from data_gen.types import ImageItem, LoadedImage


def _superior_axis(affine: np.ndarray) -> tuple[int, bool]:
    """The stored voxel axis closest to the world superior-inferior axis, and whether it runs S -> I."""
    ornt = nib.io_orientation(affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, bool(ornt[axis, 1] < 0)


def display_slice(img: nib.spatialimages.SpatialImage, slice_index: Optional[int], *, path: str = "",
                  dtype=np.float32) -> tuple[np.ndarray, tuple[float, float]]:
    """One axial slice of a NIfTI image in display orientation.

    Only the requested slice is read from disk (`img.slicer`), then reoriented with `as_closest_canonical`.

    Args:
      img: a loaded nibabel image, 2-D, 3-D or 4-D with a single volume.
      slice_index: axial index in canonical order (0 = most inferior); None is allowed only for one slice.
      path: for messages.
      dtype: output dtype (scaled values: `scl_slope`/`scl_inter` applied, i.e. HU for CT).

    Returns:
      (values `[H, W]` with H = anterior->posterior, W = patient right->left, (row, col) spacing in mm).

    Raises:
      InputError: `multi_frame` (a volume without slice_index, or a 4-D series), `slice_out_of_range`.
    """
    if img.ndim == 4:
        if img.shape[3] != 1:
            raise InputError(f"4-D image with {img.shape[3]} volumes where one 2-D slice is expected",
                             path=path, reason="multi_frame")
        img = img.slicer[..., 0]
    if img.ndim == 2:  # a single 2-D slice: add the through-plane axis
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
    if img.ndim != 3:
        raise InputError(f"expected a 2-D or 3-D image, got shape {img.shape}", path=path, reason="bad_shape")
    axis, flipped = _superior_axis(img.affine)
    n = img.shape[axis]
    if slice_index is None:
        if n != 1:
            raise InputError(f"volume with {n} axial slices where a 2-D image is expected; set the item's "
                             "slice_index to the key slice", path=path, reason="multi_frame")
        slice_index = 0
    if not 0 <= slice_index < n:
        raise InputError(f"slice_index {slice_index} outside the volume's {n} axial slices", path=path,
                         reason="slice_out_of_range")
    index = [slice(None)] * 3
    k = n - 1 - slice_index if flipped else slice_index  # canonical index -> stored index
    index[axis] = slice(k, k + 1)
    slab = nib.as_closest_canonical(img.slicer[tuple(index)])  # (X, Y, 1), RAS+
    plane = slab.get_fdata(dtype=np.float64)[:, :, 0]
    zooms = slab.header.get_zooms()
    display = plane[::-1, ::-1].T  # rows: anterior at the top; columns: patient right at image left
    return display.astype(dtype), (float(zooms[1]), float(zooms[0]))


def read_nifti(path: str, item: ImageItem, opts: ImageOptions) -> LoadedImage:
    """Load the key slice (`item.slice_index`) of a NIfTI volume.

    Modality comes from the item (NIfTI has no modality field); unset means CT, the common case for
    NIfTI-distributed lesion datasets (KiTS, LiTS, MSD). CT keeps `hu` float32 `[H, W]`.

    Raises:
      InputError: `truncated` / `not_nifti` (unreadable), `multi_frame`, `slice_out_of_range`, `nan_pixels`,
        `constant_image`.
    """
    try:
        img = nib.load(path)
        values, spacing = display_slice(img, item.slice_index, path=path)
    except InputError:
        raise
    except nib.filebasedimages.ImageFileError as e:
        raise InputError(f"not a NIfTI file ({e})", path=path, reason="not_nifti") from e
    except (EOFError, OSError, ValueError) as e:
        text = str(e).lower()
        cut = isinstance(e, EOFError) or "truncat" in text or "ended before" in text or "too small" in text
        raise InputError(f"cannot read the NIfTI file ({type(e).__name__}: {e})", path=path,
                         reason="truncated" if cut else "not_nifti") from e
    check_pixels(values, path)
    modality = item.modality or "ct"
    common = dict(modality=modality, spacing_mm=item.spacing_mm or spacing, col_direction="L", path=path)
    if modality == "ct":
        pixels = ct_to_uint8(values, opts.ct_window, rgb=opts.rgb_windows, hint=item.window, modality=modality)
        return LoadedImage(pixels=pixels, hu=values.astype(np.float32), **common)
    mode = "percentile" if opts.xray_voi == "auto" else opts.xray_voi
    return LoadedImage(pixels=stretch_to_uint8(values, mode), **common)
