"""A record seen at one curriculum stage: `make_view(record, stage, settings) -> View`.

    easy    the image with the lesion box drawn on it, `easy/question`, target `Reasoning: <cot> Answer: <answer>`
    medium  the clean image, `medium/question`, the same target form (the CoT still cites the box)
    hard    the clean image, `hard/question`, target `Answer: <answer>`

(docs/design.md, "Curriculum".) The view uses the record it is given. Which record that is belongs to the input
pipeline: Easy and Medium read a record of the `easy_medium` pool; Hard reads a *different* image, one of the
`hard` pool of the same domain, so the pipeline draws a same-domain hard-pool record and passes *that* here.
`make_view` only checks that the record's pool trains the stage (`schema.pool_stages`), so a mix-up fails loudly;
evaluation, which may ask any question of any record, turns the check off with `check_pool=False`.

Negative records (`lesion/class` = `no finding`, empty `lesion/box`) take part as written: their views have the
record's questions and targets (a box-free CoT, a negative answer) and no box, so the Easy image is clean too.

Box text in the CoT (`[x1, y1, x2, y2]`, `records.boxes`) is re-rendered as PaliGemma location tokens
(`<locY1><locX1><locY2><locX2>`) when `ViewSettings.loc_tokens` is set; the question and answer are left as written.

Pure numpy + PIL (no jax): runs in Grain worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from medclm_jax.data import images, targets
from medclm_jax.records import boxes, schema
from medclm_jax.records.errors import RecordError

STAGE_IDS = {stage: i for i, stage in enumerate(schema.STAGES)}  # easy 0, medium 1, hard 2


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """How records become model inputs, read once from the config.

    Attributes:
      image_size: the model's square input side S (`SiglipConfig.image_size`).
      family: 'paligemma' | 'gemma3': the resize filter of the checkpoint family (`images.RESAMPLE`).
      loc_tokens: re-render canonical box text in the CoT as `<locYYYY>` x4 (PaliGemma's detection format).
    """

    image_size: int
    family: str = "paligemma"
    loc_tokens: bool = False

    def __post_init__(self):
        if self.family not in images.RESAMPLE:
            raise ValueError(f"ViewSettings.family={self.family!r}: expected one of {sorted(images.RESAMPLE)}")
        if self.image_size <= 0:
            raise ValueError(f"ViewSettings.image_size={self.image_size}: must be positive")


@dataclasses.dataclass(frozen=True)
class View:
    """One training (or evaluation) example before tokenization.

    Attributes:
      image: float32[S, S, 3] in [-1, 1]; the box drawn in red for Easy.
      question: the stage's question.
      target: the stage's target (`targets.Target`: text and the character ranges of reasoning and answer).
      stage: 'easy' | 'medium' | 'hard'.
      domain: the record's `domain` (`{class}_{modality}`); `domain_id` its index in the dataset's vocabulary.
      example_id: the caller's integer id of the record (e.g. its index in the split); maps back to `image/id`
        and the reference answer on the host.
      box: float32[4] normalized `[x1, y1, x2, y2]` ground truth, or None for a negative record.
    """

    image: np.ndarray
    question: str
    target: targets.Target
    stage: str
    domain: str
    domain_id: int
    example_id: int
    box: np.ndarray | None

    @property
    def stage_id(self) -> int:
        return STAGE_IDS[self.stage]


def domain_vocabulary(dataset_info: Mapping[str, Any]) -> dict[str, int]:
    """`domain` -> id: the sorted domains of every split in `dataset_info.json`, so train and eval share ids.

    The curriculum scheduler must use the same ids: pass `list(domain_vocabulary(info))` as `domains` to
    `train.curriculum.init` (its default, the train split's names alone, differs when a domain is eval-only).
    """
    try:
        per_split = dataset_info["counts"]["per_split_domain_stage"]
    except (KeyError, TypeError):
        raise ValueError("dataset_info.json has no counts.per_split_domain_stage; rebuild it with medclm-data") \
            from None
    names = sorted({d for domains in per_split.values() for d in domains})
    return {d: i for i, d in enumerate(names)}


def lesion_box(record: Mapping[str, Any], *, where: str = "") -> np.ndarray | None:
    """The record's box as float32[4] normalized xyxy, or None for a negative record (checked as the schema says)."""
    box = np.asarray(record[schema.LESION_BOX], np.float32).reshape(-1)
    if box.size == 0:
        return None
    if box.size != 4 or not (np.all(np.isfinite(box)) and np.all((box >= 0) & (box <= 1))
                             and box[0] < box[2] and box[1] < box[3]):
        raise RecordError(f"{where + ': ' if where else ''}box {box.tolist()} is not normalized xyxy in [0, 1]",
                          field=schema.LESION_BOX, reason="bad_box")
    return box


def make_view(record: Mapping[str, Any], stage: str, settings: ViewSettings, *,
              domain_ids: Mapping[str, int], example_id: int = -1, check_pool: bool = True,
              where: str = "") -> View:
    """The `stage` view of one record.

    Args:
      record: a record as `decode_example` reads it (bytes as `[b'...']`) or as data_gen writes it.
      stage: 'easy' | 'medium' | 'hard'.
      settings: image size, resize family, loc-token rendering.
      domain_ids: `domain_vocabulary(dataset_info)`.
      example_id: the caller's id for this record (kept in the batch; -1 = none).
      check_pool: refuse a record whose `curriculum/pool` does not train `stage`.
      where: shard and record offset, put in front of error messages.

    Raises:
      RecordError: a bad image, box, target, pool or unknown domain; `reason` is countable (`bad_image`,
        `bad_box`, `empty_question`, `empty_cot`, `empty_answer`, `marker_in_answer`, `wrong_pool`, `unknown_domain`).
      ValueError: an unknown stage.
    """
    if stage not in STAGE_IDS:
        raise ValueError(f"stage {stage!r} is not one of {schema.STAGES}")
    prefix = f"{where}: " if where else ""
    if check_pool:
        pool = schema.text(record, schema.CURRICULUM_POOL)
        if stage not in schema.pool_stages(pool):
            raise RecordError(f"{prefix}a record of the {pool!r} pool cannot give a {stage} view (Hard trains on "
                              f"images kept apart from Easy/Medium); draw it from the "
                              f"{next(p for p, st in schema.POOL_STAGES.items() if stage in st)!r} pool",
                              field=schema.CURRICULUM_POOL, reason="wrong_pool")
    domain = schema.text(record, schema.DOMAIN)
    if domain not in domain_ids:
        raise RecordError(f"{prefix}domain {domain!r} is not in the dataset's vocabulary "
                          f"({len(domain_ids)} domains); was dataset_info.json built with these shards?",
                          field=schema.DOMAIN, reason="unknown_domain")
    box = lesion_box(record, where=where)
    cot = schema.text(record, schema.cot_key(stage)) if stage in targets.REASONING_STAGES else None
    if cot is not None and settings.loc_tokens:
        cot = boxes.canonical_to_loc_tokens(cot)
    target = targets.make_target(stage, cot, schema.text(record, schema.answer_key(stage)), where=where)
    data = record[schema.IMAGE_ENCODED]
    data = data[0] if isinstance(data, (list, tuple)) else data
    image = images.model_image(data, settings.image_size, settings.family,
                               box=box if stage == "easy" else None, where=where)
    question = targets.normalize_text(schema.text(record, schema.question_key(stage)))
    if not question:
        raise RecordError(f"{prefix}the question is empty", field=schema.question_key(stage),
                          reason="empty_question")
    return View(image=image, question=question, target=target, stage=stage, domain=domain,
                domain_id=int(domain_ids[domain]), example_id=int(example_id), box=box)
