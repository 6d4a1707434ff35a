"""The per-image conversion: one detection image in, its curriculum records (and rejects) out.

`convert_image` is a pure function of (item, config, class vocabulary): no global state, no output files. The
local process pool (`data_gen.runners.local`) and the Beam pipeline (`data_gen.runners.beam`) both call it, so
the two runners produce identical records.

    ImageItem --load_image--> LoadedImage --load_masks--> OrganMasks --link_lesions--> LinkResult per box
      --seed_rationale--> SeedRationale --synthesize--> CurriculumQA --> one feature dict per (image, lesion)
"""

from __future__ import annotations

import collections
import dataclasses
import io
from typing import Any, Optional

import numpy as np
from PIL import Image

from data_gen import splits
from data_gen.errors import InputError
from data_gen.types import ImageItem, LoadedImage, OrganMasks, Reject, SynthInput
from medclm_jax.records import schema as S


@dataclasses.dataclass
class ConvertResult:
    """What one image became.

    Attributes:
      image_id: the pseudonymous id (salted hash), also used in rejects.
      examples: feature dicts, one per (image, lesion); the keys of `medclm_jax.records.schema`.
      rejects: what was dropped, with reasons (a whole image or single lesions).
      stats: counters (clipped boxes, mask fallbacks, unknown classes, ...).
      organs: host organs used by the records (for the vocabulary).
    """

    image_id: str
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def written(self) -> bool:
        return bool(self.examples)


def validate_box(box, width: int, height: int) -> tuple[Optional[tuple[float, float, float, float]], str]:
    """Clip a pixel xyxy box to the image; returns (box or None, status).

    status: `ok`, `clipped` (partly outside: clipped), `outside` (no overlap with the image: rejected),
    `zero_area` (degenerate after clipping: rejected), `not_finite`.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        return None, "not_finite"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None, "outside"
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 - cx1 < 1e-6 or cy2 - cy1 < 1e-6:
        return None, "zero_area"
    status = "ok" if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2) else "clipped"
    return (cx1, cy1, cx2, cy2), status


def resize_max_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) so the long side is at most `max_side`, aspect kept. uint8 in, uint8 out."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return pixels
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.LANCZOS))


def encode_png(pixels: np.ndarray, compress_level: int = 3) -> bytes:
    """uint8 [H, W] or [H, W, 3] -> PNG bytes (compress level 3: the size/speed knee for radiographs)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"images are stored as uint8, got {pixels.dtype}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _load_masks(item: ImageItem, image: LoadedImage, cfg, result: ConvertResult) -> OrganMasks:
    """Organ masks for the image; missing/empty masks fall back to the built-in segmenter when allowed."""
    from data_gen import segment  # local import: keeps worker start-up cheap when masks are off

    settings = segment.MaskSettings.from_config(cfg.masks)
    try:
        return segment.load_masks(item, image, settings)
    except InputError as e:
        result.stats[f"masks_fallback:{e.reason}"] += 1
        # A diagnostic, not a lost input: the image goes on with the fallback, and the rejects list names the file.
        result.rejects.append(Reject("masks", e.path or f"{item.source}:{result.image_id}",
                                     f"masks_fallback:{e.reason}", str(e)[:500]))
        if settings.builtin and settings.source != "builtin":
            return segment.load_masks(item, image, dataclasses.replace(settings, source="builtin"))
        return OrganMasks(names=[], masks=np.zeros((0,) + image.pixels.shape[:2], bool), source="none")


def convert_image(item: ImageItem, cfg, class_vocab: dict[str, list[str]], synthesizer=None) -> ConvertResult:
    """Converts one image; never lets one image crash a batch.

    Bad input data arrives as `InputError` and becomes a reject with its reason inside `_convert`; anything else
    (a decoder crashing on a malformed file, a bug) also becomes a reject, `unexpected_error:<type>`, with the
    message, so a batch run skips it, counts it and reports it.
    """
    try:
        return _convert(item, cfg, class_vocab, synthesizer)
    except Exception as e:  # noqa: BLE001 - the batch contract: skip, count, report
        image_id = splits.pseudonymous_id(cfg.salt, item.source, item.image_key)
        ref = f"{item.source}:{image_id}"
        reason = f"unexpected_error:{type(e).__name__}"
        result = ConvertResult(image_id=image_id)
        result.rejects.append(Reject("image", ref, reason, str(e)[:500]))
        result.rejects += [Reject("lesion", f"{ref}:{les.row}", "image_rejected", reason) for les in item.lesions]
        return result


def _convert(item: ImageItem, cfg, class_vocab: dict[str, list[str]], synthesizer=None) -> ConvertResult:
    """Converts one detection image into its curriculum records.

    Args:
      item: the image and its lesion boxes (pixel xyxy on the original grid).
      cfg: the build config (`configs/data/*.py`): sections image, masks, link, synth, split, curriculum, salt.
      class_vocab: lesion classes per modality (`class_vocabulary`); the image's modality picks its list
        (for absent-class questions), the union is used for a modality the adapter did not know.
      synthesizer: a CoT-QA backend (built from cfg.synth when None; pass one to reuse its cache/connections).

    Returns:
      A ConvertResult; never raises on bad input data (it becomes a Reject), only on programming/config errors.
    """
    from data_gen import imaging as image_io
    from data_gen import link, rationale, synth

    image_id = splits.pseudonymous_id(cfg.salt, item.source, item.image_key)
    result = ConvertResult(image_id=image_id)
    ref = f"{item.source}:{image_id}"

    # ---- pixels ----------------------------------------------------------------------------------------------
    try:
        image = image_io.load_image(item, cfg.image)
    except InputError as e:
        result.rejects.append(Reject("image", ref, e.reason, str(e)))
        for les in item.lesions:
            result.rejects.append(Reject("lesion", f"{ref}:{les.row}", "image_rejected", e.reason))
        return result
    height, width = image.height, image.width

    # ---- boxes -----------------------------------------------------------------------------------------------
    kept = []  # (annotation, clipped pixel box)
    for les in item.lesions:
        box, status = validate_box(les.box, width, height)
        if box is None:
            detail = f"box {list(les.box)} vs image {width}x{height}"
            result.rejects.append(Reject("lesion", f"{ref}:{les.row}", f"box_{status}", detail))
            continue
        if status == "clipped":
            result.stats["boxes_clipped"] += 1
        kept.append((les, box))
    if item.lesions and not kept:
        result.rejects.append(Reject("image", ref, "no_valid_lesions", f"all {len(item.lesions)} boxes rejected"))
        return result
    if not item.lesions and not item.negative:
        result.rejects.append(Reject("image", ref, "no_annotations", "neither lesions nor a 'No finding' label"))
        return result

    # ---- anatomy ---------------------------------------------------------------------------------------------
    masks = _load_masks(item, image, cfg, result)
    result.stats[f"masks_source:{masks.source or 'unknown'}"] += 1
    boxes_px = np.asarray([b for _, b in kept], np.float64).reshape(-1, 4)
    links = link.link_lesions(boxes_px, masks, image, cfg.link) if kept else []

    # ---- views -----------------------------------------------------------------------------------------------
    pixels = resize_max_side(image.pixels, int(cfg.image.max_side))
    encoded = encode_png(pixels)
    if synthesizer is None:
        synthesizer = synth.get_synthesizer(cfg.synth)
    if kept:
        seeds = [
            rationale.seed_rationale(
                les.label, lk, image.modality,
                (b[0] / width, b[1] / height, b[2] / width, b[3] / height),
            )
            for (les, b), lk in zip(kept, links)
        ]
    else:
        organs_present = [n for n, m in zip(masks.names, masks.masks) if m.any()]
        seeds = [rationale.negative_rationale(image.modality, organs_present)]
        links = [None]

    vocab = class_vocab.get(image.modality) or sorted({c for v in class_vocab.values() for c in v})
    split = splits.patient_split(cfg.salt, item.source, item.patient_key, cfg.split.val, cfg.split.test)
    # The shard plan stratifies pools per domain (item.extra); a bare call hashes the image id alone.
    pool = item.extra.get("curriculum_pool") or splits.curriculum_pool(cfg.salt, image_id,
                                                                       cfg.curriculum.hard_fraction)
    for i, (seed, lk) in enumerate(zip(seeds, links)):
        qa = synthesizer.synthesize(
            SynthInput(seed=seed, image_lesions=seeds, class_vocab=list(vocab), key=f"{image_id}:{i}",
                       pixels=pixels))
        if qa.backend != "template":
            result.stats[f"synth:{qa.backend}"] += 1
        record = {
            S.IMAGE_ENCODED: encoded,
            S.IMAGE_FORMAT: "png",
            S.IMAGE_HEIGHT: int(pixels.shape[0]),
            S.IMAGE_WIDTH: int(pixels.shape[1]),
            S.IMAGE_ID: image_id,
            S.IMAGE_MODALITY: image.modality,
            S.IMAGE_SOURCE: item.source,
            S.LESION_CLASS: seed.lesion_class,
            S.LESION_BOX: (np.asarray(seed.box_norm, np.float32) if seed.box_norm is not None
                           else np.zeros(0, np.float32)),
            S.LESION_ORGAN: lk.organ if lk is not None else S.NO_ORGAN,
            S.LESION_ORGAN_SCORE: float(lk.score) if lk is not None else 0.0,
            S.LESION_ORGAN_METHOD: lk.method if lk is not None else "none",
            S.LESION_LOCATION: seed.location,
            S.DOMAIN: S.domain_of(seed.lesion_class, image.modality),
            S.RATIONALE_SEED: seed.text,
            S.CURRICULUM_POOL: pool,
            S.SYNTH_BACKEND: qa.backend,
            S.SPLIT: split,
        }
        for stage in S.STAGES:
            view = getattr(qa, stage)
            record[S.question_key(stage)] = view.question
            record[S.answer_key(stage)] = view.answer
            record[S.answer_type_key(stage)] = view.answer_type
            if stage != "hard":
                record[S.cot_key(stage)] = view.cot
        result.examples.append(record)
    if not kept:
        result.stats["negative_images"] += 1
    return result
