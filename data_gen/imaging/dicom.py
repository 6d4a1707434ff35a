"""DICOM reader (pydicom 3): decoded, LUT-corrected, windowed to uint8, with spacing, view and laterality.

The display pipeline follows PS3.3 C.11 / PS3.4 N.2: stored values -> Modality LUT (Rescale Slope/Intercept or
a Modality LUT Sequence; for CT the result is HU) -> VOI LUT or window -> Presentation (MONOCHROME1 is inverted
so that high attenuation is always bright). CT is windowed on HU with the configured preset instead of the VOI
of the file (`image.ct_window`, where `auto` uses the dataset's or the file's own window). Enhanced multi-frame
objects keep rescale, window and spacing in functional groups; those are read for the selected frame.

Before any pixel is decoded, images that may show patient names or dates in their pixels are refused
(`check_burned_in`: Burned In Annotation YES, or a Secondary Capture without that tag), unless the config allows
them (`image.burned_in_annotation`, `image.secondary_capture`).

Laterality convention (`LoadedImage.col_direction` = patient direction of increasing column):
  * Patient Orientation (0020,0020), first value = the row direction: its first letter `L` or `R` is used.
  * else Image Orientation (Patient) (0020,0037) (cross-sectional images, LPS): the row cosine's x component
    > 0 means columns run toward the patient's left ('L'), < 0 toward the right ('R').
  * else the display convention 'L': on a frontal radiograph image-left is the patient's right.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID

from data_gen.errors import InputError
from data_gen.imaging.checks import check_pixels
from data_gen.imaging.window import ImageOptions, ct_to_uint8, range_to_uint8, stretch_to_uint8
from data_gen.types import ImageItem, LoadedImage

# DICOM Modality (0008,0060) -> our modality names. Others are lower-cased (US -> "us", NM -> "nm").
MODALITY_MAP = {"CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "CT": "ct", "MR": "mri", "PT": "pet"}

# What to install to decode a compressed transfer syntax (pydicom's plugins), by UID prefix/name.
_DECODER_PACKAGES = (
    ("1.2.840.10008.1.2.4.8", "pylibjpeg and pylibjpeg-libjpeg (or pyjpegls)"),  # JPEG-LS
    ("1.2.840.10008.1.2.4.9", "pylibjpeg and pylibjpeg-openjpeg"),  # JPEG 2000
    ("1.2.840.10008.1.2.4.20", "pylibjpeg and pylibjpeg-openjpeg"),  # HTJ2K
    ("1.2.840.10008.1.2.4.", "pylibjpeg and pylibjpeg-libjpeg"),  # JPEG baseline/extended/lossless
    ("1.2.840.10008.1.2.5", "pylibjpeg-rle (or use pydicom's built-in RLE decoder)"),
)
_INSTALL_HINT = "pip install 'medclm-jax[dicom-codecs]'"

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5): screenshots, digitized films and
# converted exports, where text drawn into the pixels is common.
SECONDARY_CAPTURE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
})


def is_dicom_magic(head: bytes) -> bool:
    """True when the first bytes hold the DICOM Part 10 preamble signature (`DICM` at offset 128)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def read_dataset(path: str, *, magic: bool) -> Dataset:
    """Parse a DICOM file; `magic` says whether the Part 10 signature was seen (else parse without a preamble).

    Raises:
      InputError: `not_dicom` (does not parse as DICOM), `truncated` (parses but ends before the pixel data),
        `no_pixel_data` (a DICOM object that is not an image: SR, RT plan, ...).
    """
    try:
        ds = pydicom.dcmread(path, force=not magic)
    except InvalidDicomError as e:
        raise InputError(f"not a DICOM file ({e})", path=path, reason="not_dicom") from e
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on a cut or corrupt stream
        reason = "truncated" if magic else "not_dicom"
        raise InputError(f"cannot parse the DICOM data set ({type(e).__name__}: {e})", path=path,
                         reason=reason) from e
    if not magic and not ("Rows" in ds and _has_pixels(ds)):
        raise InputError("not a DICOM file (no 'DICM' signature at byte 128 and no image elements parsed)",
                         path=path, reason="not_dicom")
    if not _has_pixels(ds):
        sop = sop_class(ds)
        name = UID(sop).name if sop else ""
        if len(ds) == 0 or "Rows" in ds or "Image" in name:
            raise InputError("the file ends before its Pixel Data element (truncated download or copy?); "
                             "re-fetch the file", path=path, reason="truncated")
        raise InputError(f"DICOM object without pixel data (SOP class {name or sop or 'unknown'}); not an image",
                         path=path, reason="no_pixel_data")
    return ds


def sop_class(ds: Dataset) -> str:
    """The SOP Class UID of the data set, or of its file meta header when the data set lacks it ('' if neither)."""
    meta = ds.get("file_meta", Dataset())
    return str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")


def check_burned_in(ds: Dataset, path: str, opts: ImageOptions) -> None:
    """Refuse images that may show patient names or dates in their pixels (see `ImageOptions`).

    Burned In Annotation (0028,0301) YES rejects unless `image.burned_in_annotation='allow'`; NO accepts; absent
    (or another value) on a Secondary Capture image rejects unless `image.secondary_capture='allow'`.

    Raises:
      InputError: `burned_in_annotation` or `secondary_capture`, naming the tag and the key that allows it.
    """
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES" and opts.burned_in_annotation != "allow":
        raise InputError("Burned In Annotation is YES: the pixels carry text (names, dates) that tag-level "
                         "de-identification leaves in place; scrub the pixels and set "
                         "image.burned_in_annotation=allow, or leave the image out", path=path,
                         field="BurnedInAnnotation", reason="burned_in_annotation")
    if flag in ("YES", "NO"):
        return
    if sop_class(ds) in SECONDARY_CAPTURE_SOP_CLASSES and opts.secondary_capture != "allow":
        raise InputError("a Secondary Capture image without a Burned In Annotation tag may show text (names, "
                         "dates) in its pixels; check the dataset and set image.secondary_capture=allow if it is "
                         "clean", path=path, field="SOPClassUID", reason="secondary_capture")


def check_transfer_syntax(ds: Dataset, path: str) -> None:
    """Fail early, with what to install, when no available plugin decodes the file's transfer syntax."""
    meta = ds.get("file_meta", Dataset())
    tsuid = meta.get("TransferSyntaxUID")
    if tsuid is None:
        return  # pydicom infers it from the data set encoding (files written without a meta header)
    tsuid = UID(tsuid)
    if not tsuid.is_transfer_syntax:  # newer than this pydicom (e.g. JPEG XL) or private
        raise InputError(
            f"transfer syntax {tsuid} is unknown to pydicom {pydicom.__version__}; transcode the file to an "
            "uncompressed syntax (e.g. `gdcmconv --raw in.dcm out.dcm`) or upgrade pydicom and its plugins",
            path=path, field="TransferSyntaxUID", reason="unsupported_transfer_syntax")
    if not tsuid.is_compressed and not tsuid.is_encapsulated:
        return
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise InputError(
            f"transfer syntax {tsuid} ({tsuid.name}) has no pixel-data decoder in pydicom {pydicom.__version__} or "
            "its plugins; transcode the file to an uncompressed syntax (e.g. `gdcmconv --raw in.dcm out.dcm` or "
            "`dcmdjpeg`/`dcmdjp2k` from DCMTK) and re-run",
            path=path, field="TransferSyntaxUID", reason="unsupported_transfer_syntax",
        ) from None
    if not decoder.is_available:
        pkg = next((p for prefix, p in _DECODER_PACKAGES if tsuid.startswith(prefix)), "a pydicom decoder plugin")
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise InputError(
            f"transfer syntax {tsuid} ({tsuid.name}) needs a decoder that is not installed: install {pkg} "
            f"({_INSTALL_HINT}); pydicom reports: {missing}",
            path=path, field="TransferSyntaxUID", reason="unsupported_transfer_syntax",
        )


def _frame_groups(ds: Dataset, index: int) -> list[Dataset]:
    """Functional group items for `index`: the per-frame item first (it overrides), then the shared one."""
    out = []
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf is not None and index < len(pf):
        out.append(pf[index])
    sh = ds.get("SharedFunctionalGroupsSequence")
    if sh:
        out.append(sh[0])
    return out


def _from_groups(ds: Dataset, index: int, seq: str, keys: tuple[str, ...]) -> Optional[Dataset]:
    for g in _frame_groups(ds, index):
        if seq in g and len(g[seq].value) and all(k in g[seq][0] for k in keys):
            return g[seq][0]
    return None


def _lift_frame_attributes(ds: Dataset, index: int) -> None:
    """Copy rescale and window of an enhanced multi-frame object to the top level, so pydicom's LUT functions
    (which read top-level attributes) see the values that apply to frame `index`."""
    if "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        item = _from_groups(ds, index, "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"))
        if item is not None:
            ds.RescaleSlope, ds.RescaleIntercept = item.RescaleSlope, item.RescaleIntercept
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        item = _from_groups(ds, index, "FrameVOILUTSequence", ("WindowCenter", "WindowWidth"))
        if item is not None:
            ds.WindowCenter, ds.WindowWidth = item.WindowCenter, item.WindowWidth
            if "VOILUTFunction" in item:
                ds.VOILUTFunction = item.VOILUTFunction


def _positive_pair(value: Any) -> Optional[tuple[float, float]]:
    try:
        r, c = (float(x) for x in value)
    except (TypeError, ValueError):
        return None
    return (r, c) if r > 0 and c > 0 else None


def pixel_spacing(ds: Dataset, index: int = 0) -> Optional[tuple[float, float]]:
    """(row, col) spacing in mm: Pixel Spacing, else Imager Pixel Spacing, else the frame's Pixel Measures.

    Zero or malformed values (some CR writers store `0\\0`) count as absent.
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        got = _positive_pair(ds.get(key))
        if got:
            return got
    item = _from_groups(ds, index, "PixelMeasuresSequence", ("PixelSpacing",))
    return _positive_pair(item.PixelSpacing) if item is not None else None


def col_direction(ds: Dataset, index: int = 0) -> str:
    """Patient direction of increasing column ('L' or 'R'); see the module docstring for the rules."""
    po = ds.get("PatientOrientation")
    if po:
        first = str(po[0] if not isinstance(po, str) else po.split("\\")[0]).strip().upper()
        if first[:1] in ("L", "R"):
            return first[0]
        if first:
            return "L"  # lateral or oblique (A/P/H/F first): no left-right axis; keep the display default
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        item = _from_groups(ds, index, "PlaneOrientationSequence", ("ImageOrientationPatient",))
        iop = item.ImageOrientationPatient if item is not None else None
    if iop is not None and len(iop) == 6:
        x, y, z = (float(v) for v in iop[:3])
        if abs(x) >= max(abs(y), abs(z)):
            return "L" if x > 0 else "R"
    return "L"


def first_window(ds: Dataset) -> Optional[tuple[float, float]]:
    """(center, width) of the first window in the file (top level, after frame attributes were lifted)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = ds["WindowCenter"], ds["WindowWidth"]
    c = c.value[0] if c.VM > 1 else c.value
    w = w.value[0] if w.VM > 1 else w.value
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def _voi_to_uint8(values: np.ndarray, ds: Dataset) -> Optional[np.ndarray]:
    """Apply the file's VOI LUT Sequence or first window (pydicom), scaled to uint8 by the VOI output range.

    Returns None when the file has no usable VOI.
    """
    has_lut = bool(ds.get("VOILUTSequence")) and all(
        ds.VOILUTSequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData"))
    if not has_lut and first_window(ds) is None:
        return None
    v = values
    if has_lut and np.issubdtype(v.dtype, np.floating) and np.all(v == np.round(v)):
        v = v.astype(np.int64)  # LUT indices must be integers; Modality LUT output is float when rescaled
    out = apply_voi_lut(v, ds, index=0, prefer_lut=True).astype(np.float64)
    if has_lut:
        # The VOI LUT's output range: its own entries (robust to the common 12-in-16-bit descriptor mismatch).
        n_entries, first_map = int(ds.VOILUTSequence[0].LUTDescriptor[0]) or 2 ** 16, int(
            ds.VOILUTSequence[0].LUTDescriptor[1])
        lut = apply_voi_lut(np.arange(first_map, first_map + n_entries, dtype=np.int64), ds, index=0,
                            prefer_lut=True)
        lo, hi = float(lut.min()), float(lut.max())
    else:
        # Windowing maps to [y_min, y_max]: evaluate the same function far below and above the window.
        ends = apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0, prefer_lut=False)
        lo, hi = float(ends[0]), float(ends[1])
    return range_to_uint8(out, lo, hi)


def _color_to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 8) if ds.get("PhotometricInterpretation") != "PALETTE COLOR" else 16)
    return range_to_uint8(arr.astype(np.float64), 0.0, float(2 ** bits - 1))


def read_dicom(path: str, item: ImageItem, opts: ImageOptions, *, magic: bool = True) -> LoadedImage:
    """Load one 2-D DICOM image (or one frame of a multi-frame object) for the model.

    Args:
      path: the file.
      item: the adapter's record: `modality` (wins over the tag), `slice_index` (frame of a multi-frame
        object), `spacing_mm` (wins over the tags), `window` (used by `ct_window='auto'`).
      opts: display options.
      magic: whether the Part 10 signature was found (else the file is parsed without a preamble).

    Returns:
      LoadedImage: uint8 `[H, W]` (or `[H, W, 3]` for colour images and RGB windows), `hu` float32 `[H, W]`
      for CT.

    Raises:
      InputError: `not_dicom`, `truncated`, `no_pixel_data`, `burned_in_annotation`, `secondary_capture`,
        `unsupported_transfer_syntax`, `multi_frame`, `slice_out_of_range`, `decode_failed`, `nan_pixels`,
        `constant_image`.
    """
    ds = read_dataset(path, magic=magic)
    check_burned_in(ds, path, opts)
    check_transfer_syntax(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = item.slice_index
    if n_frames > 1 and index is None:
        raise InputError(
            f"multi-frame object ({n_frames} frames) where a 2-D image is expected; set the item's slice_index "
            "to the key frame or export the key image", path=path, field="NumberOfFrames", reason="multi_frame")
    if index is not None and not 0 <= index < n_frames:
        raise InputError(f"slice_index {index} outside the {n_frames} frame(s) of the object", path=path,
                         field="NumberOfFrames", reason="slice_out_of_range")
    try:
        arr = pixel_array(ds, index=index) if n_frames > 1 else ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise ValueError/RuntimeError/plugin-specific errors
        msg = str(e)
        reason = "truncated" if "less than expected" in msg or "truncat" in msg.lower() else "decode_failed"
        raise InputError(f"cannot decode the pixel data ({type(e).__name__}: {msg})", path=path,
                         field="PixelData", reason=reason) from e
    frame = index if index is not None else 0
    _lift_frame_attributes(ds, frame)
    tag_modality = str(ds.get("Modality", "") or "").upper()
    modality = item.modality or MODALITY_MAP.get(tag_modality, tag_modality.lower() or "unknown")
    spacing = item.spacing_mm or pixel_spacing(ds, frame)
    view = str(ds.get("ViewPosition", "") or "") or None
    common = dict(modality=modality, spacing_mm=spacing, col_direction=col_direction(ds, frame), view=view,
                  path=path)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        check_pixels(arr, path)
        return LoadedImage(pixels=_color_to_uint8(arr, ds), **common)

    values = apply_modality_lut(arr, ds)
    check_pixels(values, path)
    if modality == "ct":
        hu = np.asarray(values, dtype=np.float32)
        hint = item.window or first_window(ds)
        pixels = ct_to_uint8(hu, opts.ct_window, rgb=opts.rgb_windows, hint=hint, modality=modality)
        return LoadedImage(pixels=pixels, hu=hu, **common)

    pixels = _voi_to_uint8(values, ds) if opts.xray_voi == "auto" else None
    if pixels is None:
        pixels = stretch_to_uint8(values, "percentile" if opts.xray_voi == "auto" else opts.xray_voi)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels  # MONOCHROME1: minimum value is white; display convention is bright = dense
    return LoadedImage(pixels=pixels, **common)

