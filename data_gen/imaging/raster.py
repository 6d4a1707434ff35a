"""PNG/JPEG reader (Pillow), including DeepLesion's 16-bit PNG slices (stored value = HU + 32768).

A DeepLesion slice is recognised from the item, not guessed from the pixels alone: `item.source` containing
`deeplesion`, `item.extra['png_encoding'] == 'hu+32768'` (or `item.extra['deeplesion']`), or a 16-bit PNG that
comes with a CT window (`item.window`, from `DICOM_windows`). Other 16-bit PNGs are contrast-stretched; 8-bit
images are used as they are (they are already display images). Spacing of a PNG comes only from the item.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_gen.errors import InputError
from data_gen.imaging.checks import check_pixels
from data_gen.imaging.window import ImageOptions, ct_to_uint8, stretch_to_uint8
from data_gen.types import ImageItem, LoadedImage

DEEPLESION_OFFSET = 32768  # DeepLesion PNG value = HU + 32768 (uint16)

_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_deeplesion(item: ImageItem, high_bit_depth: bool) -> bool:
    """Whether this PNG holds DeepLesion-encoded HU (see the module docstring)."""
    extra = item.extra or {}
    if str(extra.get("png_encoding", "")).lower() == "hu+32768" or extra.get("deeplesion"):
        return True
    if "deeplesion" in (item.source or "").lower():
        return True
    return high_bit_depth and item.window is not None


def decode_raster(path: str) -> tuple[np.ndarray, str]:
    """Decode a PNG/JPEG/TIFF into a numpy array and its Pillow mode.

    Returns:
      (array, mode): `[H, W]` (uint8, uint16/int32 for 16-bit modes, float32 for 'F') or `[H, W, 3]` uint8.

    Raises:
      InputError: `unsupported_format` (Pillow cannot identify it), `truncated` (cut file).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in _INT_MODES or mode in ("L", "F"):
                arr = np.array(im)
            elif mode in ("1",):
                arr = np.array(im.convert("L"))
                mode = "L"
            elif mode in ("LA", "La"):
                arr = np.array(im.getchannel(0))
                mode = "L"
            else:  # RGB, RGBA, P, CMYK, YCbCr, ...
                arr = np.array(im.convert("RGB"))
                mode = "RGB"
    except UnidentifiedImageError as e:
        with open(path, "rb") as f:
            signed = f.read(8).startswith((b"\x89PNG", b"\xff\xd8\xff"))
        if signed:  # a PNG/JPEG signature that Pillow cannot parse: the file was cut or corrupted
            raise InputError(f"PNG/JPEG signature but unreadable image data ({e}): truncated or corrupt; re-fetch it",
                             path=path, reason="truncated") from e
        raise InputError(f"not an image Pillow can read ({e}); expected DICOM, NIfTI, PNG or JPEG", path=path,
                         reason="unsupported_format") from e
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e).lower()
        reason = "truncated" if "truncat" in text or "broken" in text or "ended" in text else "decode_failed"
        raise InputError(f"cannot decode the image ({type(e).__name__}: {e})", path=path, reason=reason) from e
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr, mode = arr[..., 0], "L"  # grey stored as RGB (common for radiograph PNG/JPEG exports)
    return arr, mode


def read_raster(path: str, item: ImageItem, opts: ImageOptions) -> LoadedImage:
    """Load a PNG/JPEG image (DeepLesion 16-bit PNG included).

    Returns:
      LoadedImage: uint8 `[H, W]` or `[H, W, 3]`; for DeepLesion, `hu` float32 `[H, W]` and modality `ct`
      (unless the item says otherwise), windowed by `opts.ct_window` (`auto` = the item's window).
    """
    arr, mode = decode_raster(path)
    high = mode in _INT_MODES
    common = dict(spacing_mm=item.spacing_mm, col_direction="L", path=path)
    if is_deeplesion(item, high):
        if not high:
            raise InputError(f"DeepLesion slices are 16-bit PNG (HU + {DEEPLESION_OFFSET}); this file is {mode}",
                             path=path, reason="bad_deeplesion_png")
        hu = arr.astype(np.float32) - DEEPLESION_OFFSET
        check_pixels(hu, path)
        modality = item.modality or "ct"
        pixels = ct_to_uint8(hu, opts.ct_window, rgb=opts.rgb_windows, hint=item.window, modality=modality)
        return LoadedImage(pixels=pixels, modality=modality, hu=hu, **common)
    check_pixels(arr, path)
    modality = item.modality or "unknown"
    if high or mode == "F":
        pixels = stretch_to_uint8(arr, "percentile" if opts.xray_voi == "auto" else opts.xray_voi)
    else:
        pixels = np.ascontiguousarray(arr, dtype=np.uint8)
    return LoadedImage(pixels=pixels, modality=modality, **common)
