"""The record's PNG as the model sees it: decode, resize the way the checkpoint family was pretrained, scale.

Conventions:
  in    PNG bytes (`image/encoded`), uint8, grey (1 channel) or RGB (3), already windowed by data_gen.
  out   float32[S, S, 3] in [-1, 1] (`x / 127.5 - 1`), S = the model's `image_size`; grey -> 3 equal channels.

Resize per family (`RESAMPLE`): both PaliGemma 1/2 and Gemma 3 (MedGemma) *squash* the image to a square, without
keeping the aspect ratio (no crop, no letterbox), so a normalized box `[x1, y1, x2, y2]` stays valid as is. They
differ in the filter: PaliGemma's processor (SigLIP's) resizes with PIL bicubic, Gemma 3's with PIL bilinear
(Gemma 3's optional pan-and-scan crops are off by default and not used here). The resize runs on uint8 pixels in
PIL, as theirs does, so an image fine-tuned here equals what transformers' processor feeds the model at inference
(tests/data/test_views.py compares with the PIL processors bit for bit). The tiny/small presets, trained from
scratch, take the PaliGemma filter.

Pure numpy + PIL (no jax): runs in Grain worker processes.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError
from medclm_jax.records.overlay import draw_box

RESAMPLE = {"paligemma": Image.Resampling.BICUBIC, "gemma3": Image.Resampling.BILINEAR}


def decode_png(data: bytes, *, where: str = "") -> np.ndarray:
    """PNG bytes -> uint8[H, W] (grey) or uint8[H, W, 3] (RGB).

    Grey+alpha and palette images are reduced to grey / RGB (the alpha is dropped: records are opaque).

    Raises:
      RecordError(reason='bad_image'): not a PNG PIL can read, or a mode (16-bit, CMYK, ...) the schema excludes.
    """
    prefix = f"{where}: " if where else ""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise RecordError(f"{prefix}image/encoded is {im.format}, the schema stores PNG",
                                  field=schema.IMAGE_ENCODED, reason="bad_image")
            mode = {"L": "L", "LA": "L", "RGB": "RGB", "RGBA": "RGB", "P": "RGB", "1": "L"}.get(im.mode)
            if mode is None:
                raise RecordError(f"{prefix}PNG mode {im.mode!r} is not uint8 grey or RGB; rebuild the dataset "
                                  f"(data_gen windows images to uint8)", field=schema.IMAGE_ENCODED,
                                  reason="bad_image")
            return np.asarray(im.convert(mode), np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"{prefix}image/encoded is not a readable PNG ({e})", field=schema.IMAGE_ENCODED,
                          reason="bad_image") from e


def resize_square(pixels: np.ndarray, size: int, family: str) -> np.ndarray:
    """Squash uint8[H, W] or uint8[H, W, 3] to uint8[size, size] / [size, size, 3] with `family`'s filter."""
    if family not in RESAMPLE:
        raise ValueError(f"image resize: family {family!r} is not one of {sorted(RESAMPLE)}")
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8[H, W] or uint8[H, W, 3], got {pixels.dtype}{list(pixels.shape)}")
    if pixels.shape[:2] == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), resample=RESAMPLE[family]), np.uint8)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8[H, W] or [H, W, 1] -> uint8[H, W, 3] (equal channels); RGB passes through."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (0 -> -1, 255 -> 1): SigLIP's mean 0.5 / std 0.5 normalization."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def model_image(data: bytes, size: int, family: str, *, box: Sequence[float] | None = None,
                where: str = "") -> np.ndarray:
    """A record's PNG as the model's input, optionally with the lesion box drawn (the Easy view).

    The box is drawn *after* the resize, on the model-resolution pixels, with `overlay.draw_box`'s outline (1% of
    the side, at least 1 px, pure red): drawn before, a 1-px line of a small image would be filtered into a faint
    pink smear at 32 px, and Easy would not show the box. Squash-resizing keeps the normalized box exact, so the
    outline lands on the same anatomy either way.

    Args:
      data: PNG bytes.
      size: the model's `image_size` S.
      family: 'paligemma' | 'gemma3' (the resize filter, see `RESAMPLE`).
      box: normalized `[x1, y1, x2, y2]` to outline, or None for a clean image.
      where: prefix for error messages (shard and record).

    Returns:
      float32[S, S, 3] in [-1, 1].
    """
    pixels = resize_square(decode_png(data, where=where), size, family)
    pixels = draw_box(pixels, box) if box is not None else to_rgb(pixels)
    return to_model_range(pixels)
