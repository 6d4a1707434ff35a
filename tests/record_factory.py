"""A schema-complete record for tests, as data_gen would write it: `make_record(**changes)`.

tests/conftest.py's folder is on sys.path, so tests import it as `from record_factory import make_record`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from medclm_jax.records import schema

BOX = (0.1, 0.2, 0.5, 0.6)
COT = "A round opacity lies in the box [0.10, 0.20, 0.50, 0.60] in the right upper zone."
QUESTIONS = {"easy": "What is in the highlighted region?", "medium": "Is there an abnormality in the right lung?",
             "hard": "What abnormality is seen?"}


def make_record(*, image: bytes = b"\x89PNG...", height: int = 64, width: int = 80, box: Optional[Sequence[float]] = BOX,
                lesion: str = "nodule", pool: str = "easy_medium", image_id: str = "0123456789abcdef0123",
                cot: str = COT, questions: Optional[dict[str, str]] = None, **changes: Any) -> dict[str, Any]:
    """A record dict with every schema key (`box=None`: a negative record); `changes` override keys by name."""
    negative = box is None
    rec: dict[str, Any] = {
        schema.IMAGE_ENCODED: image, schema.IMAGE_FORMAT: "png", schema.IMAGE_HEIGHT: height,
        schema.IMAGE_WIDTH: width, schema.IMAGE_ID: image_id, schema.IMAGE_MODALITY: "xray",
        schema.IMAGE_SOURCE: "phantom", schema.LESION_CLASS: schema.NO_FINDING if negative else lesion,
        schema.LESION_BOX: np.asarray([] if negative else box, np.float32),
        schema.LESION_ORGAN: schema.NO_ORGAN if negative else "right lung",
        schema.LESION_ORGAN_SCORE: 0.0 if negative else 0.9,
        schema.LESION_ORGAN_METHOD: "none" if negative else "containment",
        schema.LESION_LOCATION: "none" if negative else "right upper zone",
        schema.DOMAIN: schema.domain_of(schema.NO_FINDING if negative else lesion, "xray"),
        schema.RATIONALE_SEED: "seed", schema.CURRICULUM_POOL: pool, schema.SYNTH_BACKEND: "template",
        schema.SPLIT: "train",
    }
    for stage in schema.STAGES:
        rec[schema.question_key(stage)] = (questions or QUESTIONS)[stage]
        rec[schema.answer_key(stage)] = "no" if negative else lesion
        rec[schema.answer_type_key(stage)] = "open"
        if stage != "hard":
            rec[schema.cot_key(stage)] = ("No focal lesion is seen, so there is no region to localize."
                                          if negative else cot)
    rec.update(changes)
    return rec
