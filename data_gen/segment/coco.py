"""COCO segmentation JSON (CXAS's `json` output) -> per-category masks, without pycocotools.

COCO stores a mask as run-length counts over the *column-major* flattened `[h, w]` mask, starting with a run of
zeros; "compressed" RLE writes those counts as a string (pycocotools' `rleToString`: 5 bits per character offset
by 48, a continuation bit 0x20, a sign bit 0x10 on the last character, and counts after the second stored as the
difference to the count two places back). Polygons (`[[x1, y1, x2, y2, ...], ...]`) are rasterized with Pillow.

The JSON is data: any entry of the wrong type or shape, and any mask larger than `MAX_MASK_PIXELS` (a few bytes of
RLE can declare terabytes), is an `InputError(reason='bad_mask' | 'too_large')` naming the file and the field.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_gen.errors import InputError
from data_gen.segment.mask_files import MAX_MASK_PIXELS


def rle_string_to_counts(s: str) -> list[int]:
    """Decodes a compressed COCO RLE string into its run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Run lengths (zeros first, column-major) -> bool `[height, width]`."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE covers {int(counts.sum())} pixels, the mask has {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(im) > 0


def _pick_image(images: list, image_keys: Sequence[str], path: str):
    if len(images) == 1:
        return images[0]
    keys = {k for k in image_keys if k}
    for im in images:
        name = str(im.get("file_name", ""))
        stem = os.path.splitext(os.path.basename(name))[0]
        if name in keys or stem in keys or os.path.basename(name) in keys:
            return im
    raise InputError(f"none of the {len(images)} images in the COCO file matches {sorted(keys)}", path=path,
                     field="images", reason="missing_masks")


def _checked_size(h, w, path: str, field: str) -> tuple[int, int]:
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError) as e:
        raise InputError(f"a mask size must be two integers, got {h!r} x {w!r}", path=path, field=field,
                         reason="bad_mask") from e
    if h <= 0 or w <= 0:
        raise InputError(f"a mask size must be positive, got {h} x {w}", path=path, field=field, reason="bad_mask")
    if h * w > MAX_MASK_PIXELS:
        raise InputError(f"a {h} x {w} mask is over {MAX_MASK_PIXELS} pixels", path=path, field=field,
                         reason="too_large")
    return h, w


def coco_masks(spec: dict, path: str, image_keys: Sequence[str] = (),
               shape: Optional[tuple[int, int]] = None) -> tuple[list[str], np.ndarray]:
    """COCO dict -> (category names, bool `[K, h, w]`), one mask per category present (instances merged).

    Args:
      spec: the parsed JSON.
      path: for messages.
      image_keys: names the image may have in `images[].file_name` (file name or stem); not needed when the file
        holds one image.
      shape: `(h, w)` to use when neither the RLE nor the image entry gives a size (polygons only).

    Raises:
      InputError: `bad_mask` (an entry of the wrong type or shape), `too_large`, `missing_masks` (no image entry
        matches), naming the file and the field.
    """
    try:
        return _coco_masks(spec, path, image_keys, shape)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise InputError(f"not a COCO segmentation file ({type(e).__name__}: {e}); expected `images`, "
                         "`categories` and `annotations` lists as COCO/CXAS write them", path=path,
                         reason="bad_mask") from e


def _coco_masks(spec: dict, path: str, image_keys: Sequence[str],
                shape: Optional[tuple[int, int]]) -> tuple[list[str], np.ndarray]:
    images = spec.get("images") or []
    # CXAS writes `images` as a list holding a list; flatten one level.
    flat = []
    for im in images:
        flat.extend(im if isinstance(im, list) else [im])
    categories = {int(c["id"]): str(c.get("name", c["id"])) for c in spec.get("categories", [])}
    anns = spec.get("annotations") or []
    image_id = None
    h = w = None
    if flat:
        im = _pick_image(flat, image_keys, path)
        image_id = im.get("id")
        h, w = im.get("height"), im.get("width")
    if h is None and shape is not None:
        h, w = shape
    if h is not None:
        h, w = _checked_size(h, w, path, "images")
    merged: dict[int, np.ndarray] = {}
    for ann in anns:
        if image_id is not None and ann.get("image_id", image_id) != image_id:
            continue
        seg = ann.get("segmentation")
        try:
            if isinstance(seg, dict):
                sh, sw = _checked_size(*seg["size"], path, "annotations")
                counts = seg["counts"]
                counts = rle_string_to_counts(counts) if isinstance(counts, str) else list(counts)
                m = rle_decode(counts, sh, sw)
            elif isinstance(seg, list):
                if h is None:
                    raise ValueError("polygons without an image height/width")
                m = polygons_to_mask(seg, int(h), int(w))
            else:
                continue
        except InputError:  # a ValueError too: keep its own reason (too_large)
            raise
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"bad segmentation in annotation {ann.get('id')}: {e}", path=path,
                             field="annotations", reason="bad_mask") from e
        cid = int(ann.get("category_id", -1))
        if cid in merged and merged[cid].shape == m.shape:
            merged[cid] |= m
        else:
            merged[cid] = m
    if not merged:
        sh = (int(h), int(w)) if h is not None else (shape or (1, 1))
        return [], np.zeros((0,) + tuple(sh), bool)
    order = sorted(merged)
    shapes = {merged[c].shape for c in order}
    if len(shapes) != 1:
        raise InputError(f"annotations of one image have different sizes {sorted(shapes)}", path=path,
                         reason="bad_mask")
    return [categories.get(c, f"category {c}") for c in order], np.stack([merged[c] for c in order])
