"""The record schema: every key of a `medclm-vqa-cot` record, its kind and meaning, and the rules around them.

One `tf.train.Example` per (image, lesion); an image without findings gives one negative record. data_gen writes
records through `check_record` and the input pipeline reads them through it, so a key renamed on one side fails
loudly on the other. docs/design.md ("The record") explains the design; this module is the definition.

Conventions: `lesion/box` is normalized `[x1, y1, x2, y2]` in [0, 1] of the stored image's width and height
(empty for a negative record); the image is the stored PNG, already windowed, with no box drawn on it.

Schema changes bump `SCHEMA_VERSION`; readers refuse a version they do not know.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, Mapping

import numpy as np

from medclm_jax.records.errors import RecordError

SCHEMA_NAME = "medclm-vqa-cot"
SCHEMA_VERSION = 1

Kind = Literal["bytes", "int", "float"]

STAGES = ("easy", "medium", "hard")
POOLS = ("easy_medium", "hard")
POOL_STAGES = {"easy_medium": ("easy", "medium"), "hard": ("hard",)}
SPLITS = ("train", "val", "test")
ANSWER_TYPES = ("open", "closed")
NO_FINDING = "no finding"  # `lesion/class` of a negative record
NO_ORGAN = "none"  # `lesion/organ` of a negative record


@dataclasses.dataclass(frozen=True)
class Key:
    """One record key. `shape`: `()` one value, `(4,)` exactly four, `(None,)` any number (possibly zero)."""

    name: str
    kind: Kind
    meaning: str
    shape: tuple = ()
    core: bool = True  # in the design's table (False: added since, listed as `extra_keys` in dataset_info.json)


IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_ID = "image/id"
IMAGE_MODALITY = "image/modality"
IMAGE_SOURCE = "image/source"
LESION_CLASS = "lesion/class"
LESION_BOX = "lesion/box"
LESION_ORGAN = "lesion/organ"
LESION_ORGAN_SCORE = "lesion/organ_score"
LESION_ORGAN_METHOD = "lesion/organ_method"
LESION_LOCATION = "lesion/location"
DOMAIN = "domain"
RATIONALE_SEED = "rationale/seed"
CURRICULUM_POOL = "curriculum/pool"
SYNTH_BACKEND = "synth/backend"
SPLIT = "split"


def question_key(stage: str) -> str:
    return f"{stage}/question"


def cot_key(stage: str) -> str:
    """The stage's chain of thought; Hard has none."""
    if stage == "hard":
        raise KeyError("the Hard view has no chain-of-thought target")
    return f"{stage}/cot"


def answer_key(stage: str) -> str:
    return f"{stage}/answer"


def answer_type_key(stage: str) -> str:
    return f"{stage}/answer_type"


_KEYS = [
    Key(IMAGE_ENCODED, "bytes", "the image as the model sees it, no box drawn (PNG, uint8, 1 or 3 channels, "
                                "already windowed)"),
    Key(IMAGE_FORMAT, "bytes", "`png`"),
    Key(IMAGE_HEIGHT, "int", "stored image height in pixels"),
    Key(IMAGE_WIDTH, "int", "stored image width in pixels"),
    Key(IMAGE_ID, "bytes", "pseudonymous image id (salted hash); never a patient identifier"),
    Key(IMAGE_MODALITY, "bytes", "xray / ct / mri / ..."),
    Key(IMAGE_SOURCE, "bytes", "the dataset's name"),
    Key(LESION_CLASS, "bytes", f"lesion class label; `{NO_FINDING}` for a negative record"),
    Key(LESION_BOX, "float", "normalized [x1, y1, x2, y2] in [0, 1]; empty for a negative record", (None,)),
    Key(LESION_ORGAN, "bytes", f"host organ, `unknown`, or `{NO_ORGAN}` for a negative record"),
    Key(LESION_ORGAN_SCORE, "float", "the linking score of the host organ (containment in [0, 1])"),
    Key(LESION_LOCATION, "bytes", "e.g. `right upper zone`, `left lobe of liver` (from masks and geometry)"),
    Key(DOMAIN, "bytes", "`{class}_{modality}` (see `domain_of`): the unit the curriculum tracks"),
    Key(RATIONALE_SEED, "bytes", "the structured seed sentence the views are written from"),
    Key("easy/question", "bytes", "Easy view: asked about the boxed region"),
    Key("easy/cot", "bytes", "Easy view: chain of thought citing the box"),
    Key("easy/answer", "bytes", "Easy view: answer"),
    Key("medium/question", "bytes", "Medium view: asked about the whole image"),
    Key("medium/cot", "bytes", "Medium view: chain of thought, still citing the box"),
    Key("medium/answer", "bytes", "Medium view: answer"),
    Key("hard/question", "bytes", "Hard view: no box, no chain-of-thought target"),
    Key("hard/answer", "bytes", "Hard view: answer"),
    Key(CURRICULUM_POOL, "bytes", "`easy_medium` or `hard`: Hard is trained on images kept apart, same domain"),
    Key("easy/answer_type", "bytes", "open | closed", core=False),
    Key("medium/answer_type", "bytes", "open | closed", core=False),
    Key("hard/answer_type", "bytes", "open | closed", core=False),
    Key(SYNTH_BACKEND, "bytes", "which CoT-QA backend wrote the views (template, llm, template_fallback:<reason>)",
        core=False),
    Key(LESION_ORGAN_METHOD, "bytes", "containment | nearest | none (how the host organ was chosen)", core=False),
    Key(SPLIT, "bytes", "train | val | test (patient-level)", core=False),
]
KEYS: dict[str, Key] = {k.name: k for k in _KEYS}
CORE_KEYS = [k.name for k in _KEYS if k.core]


def describe() -> dict[str, Any]:
    """The schema as `dataset_info.json` stores it."""
    return {
        "name": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "keys": CORE_KEYS,
        "extra_keys": {k.name: k.meaning for k in _KEYS if not k.core},
        "box_format": "normalized [x1, y1, x2, y2] in [0, 1]",
        "negative_records": f"images without findings: lesion/class '{NO_FINDING}', lesion/box empty, "
                            f"lesion/organ '{NO_ORGAN}'",
    }


def domain_of(lesion_class: str, modality: str) -> str:
    """The curriculum's tracking unit: `{class}_{modality}`, e.g. `pleural_effusion_xray`."""
    slug = re.sub(r"[^a-z0-9]+", "_", lesion_class.lower()).strip("_") or "unknown"
    return f"{slug}_{modality}"


def pool_stages(pool: str) -> tuple[str, ...]:
    """The stages a record of `pool` is trained in: Easy + Medium, or Hard."""
    try:
        return POOL_STAGES[pool]
    except KeyError:
        raise RecordError(f"curriculum pool {pool!r} is not one of {POOLS}", field=CURRICULUM_POOL,
                          reason="bad_pool") from None


def _count(value: Any) -> int:
    if isinstance(value, (bytes, str, int, float, np.integer, np.floating)):
        return 1
    return len(value)


def check_record(record: Mapping[str, Any], where: str = "") -> None:
    """Raises RecordError unless `record` has exactly the schema's keys, each with its kind and length.

    Works on what data_gen writes (scalars, `str`/`bytes`, arrays) and on `decode_example`'s lists alike.
    `where` (e.g. `"train-00000-of-00004.tfrecord record 12"`) goes into the message.
    """
    prefix = f"{where}: " if where else ""
    missing = [k for k in KEYS if k not in record]
    unknown = [k for k in record if k not in KEYS]
    if missing or unknown:
        raise RecordError(f"{prefix}record does not match schema {SCHEMA_NAME} v{SCHEMA_VERSION}: missing "
                          f"{missing}, unknown {unknown}; rebuild the dataset with this version of medclm-data",
                          reason="schema_mismatch")
    for name, key in KEYS.items():
        n = _count(record[name])
        if key.shape == () and n != 1 and not (key.kind == "bytes" and isinstance(record[name], (str, bytes))):
            raise RecordError(f"{prefix}expected one value, got {n}", field=name, reason="bad_value")
        if key.shape == (4,) and n != 4:
            raise RecordError(f"{prefix}expected 4 values, got {n}", field=name, reason="bad_value")
    box = np.asarray(record[LESION_BOX], np.float64).reshape(-1)
    if box.size not in (0, 4):
        raise RecordError(f"{prefix}a box has 4 coordinates (or none for a negative record), got {box.size}",
                          field=LESION_BOX, reason="bad_box")
    if box.size == 4 and not (np.all(np.isfinite(box)) and np.all((box >= 0) & (box <= 1))
                              and box[0] < box[2] and box[1] < box[3]):
        raise RecordError(f"{prefix}box {box.tolist()} is not normalized xyxy in [0, 1] with x1 < x2, y1 < y2",
                          field=LESION_BOX, reason="bad_box")


def text(record: Mapping[str, Any], name: str) -> str:
    """A bytes key of a decoded record as `str` (decode_example gives `[b'...']`)."""
    value = record[name]
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise RecordError(f"expected one value, got {len(value)}", field=name, reason="bad_value")
        value = value[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
