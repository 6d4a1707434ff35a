"""The training target: the text the model learns to write after the prompt, per curriculum stage.

    easy, medium   `Reasoning: <cot> Answer: <answer>`
    hard           `Answer: <answer>`

(docs/design.md, "Curriculum".) The markers are `medclm_jax.eval.cot`'s, and every target written here is read
back exactly by the parser the metrics use: `cot.split_reasoning_answer(target.text) == (cot, answer)` after the
normalization below, so what training teaches is what evaluation scores (tests/data/test_targets.py pins it).

Decisions:
- Whitespace: `cot` and `answer` are stripped and every run of whitespace (newlines included) becomes one space.
  A target is one line; the parser strips its pieces anyway, so nothing it reads is lost.
- An Easy/Medium view with an empty (or all-space) `cot` is a bad record, not an answer-only target: those stages
  are trained as `0.8 L_ans + 0.2 L_cot`, and a silent fallback would turn them into Hard without the Hard pool.
  `RecordError` names the key (`easy/cot`) so the input pipeline counts it by `reason` (`empty_cot`).
- An empty answer is a bad record too (`empty_answer`): there is nothing to score.
- An answer that itself contains `Answer:` (any case, `answer :` too) is refused (`marker_in_answer`): the metric
  reads the text after the *last* marker, so such a target would be scored on its tail. A `cot` may contain it:
  the last marker is still the one written here.
- Hard has no reasoning: a non-empty `cot` for Hard is a caller's mistake (`ValueError`), never dropped silently.

Pure Python (no jax); the input pipeline's tokenizer turns `Target` into ids and loss spans.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from medclm_jax.eval.cot import ANSWER_MARKER, ANSWER_TAG, REASONING_MARKER
from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError

REASONING_STAGES = ("easy", "medium")  # stages whose target carries reasoning; Hard is answer-only


@dataclasses.dataclass(frozen=True)
class Target:
    """One stage's target text and where its two parts lie in it.

    Attributes:
      text: the whole target, e.g. `Reasoning: The box ... Answer: nodule`.
      reasoning: `(start, end)` character range of the reasoning inside `text` (markers excluded); None for Hard.
      answer: `(start, end)` character range of the answer inside `text`; it always ends the text.
    """

    text: str
    reasoning: tuple[int, int] | None
    answer: tuple[int, int]


def _check_stage(stage: str) -> None:
    if stage not in schema.STAGES:
        raise ValueError(f"stage {stage!r} is not one of {schema.STAGES}")


def normalize_text(text: str) -> str:
    """Stripped, with every run of whitespace (newlines, tabs) turned into one space."""
    return " ".join(text.split())


def make_target(stage: str, cot: str | None, answer: str, *, where: str = "") -> Target:
    """The target of one view.

    Args:
      stage: 'easy' | 'medium' | 'hard'.
      cot: the view's chain of thought (`{stage}/cot`); None or empty for Hard.
      answer: the view's answer (`{stage}/answer`).
      where: put in front of error messages (e.g. the shard and record offset).

    Raises:
      RecordError: an Easy/Medium `cot` that is empty, an empty answer, or an answer containing `Answer:`; `field`
        names the record key and `reason` is `empty_cot`, `empty_answer` or `marker_in_answer`.
      ValueError: an unknown stage, or a `cot` given for Hard.
    """
    _check_stage(stage)
    prefix = f"{where}: " if where else ""
    answer = normalize_text(answer)
    if not answer:
        raise RecordError(f"{prefix}the answer is empty; a target needs something to score",
                          field=schema.answer_key(stage), reason="empty_answer")
    if ANSWER_TAG.search(answer):
        raise RecordError(f"{prefix}the answer {answer!r} contains {ANSWER_MARKER!r}, so the metric (which reads "
                          f"the text after the last {ANSWER_MARKER!r}) would score only its tail; rewrite it",
                          field=schema.answer_key(stage), reason="marker_in_answer")
    cot = normalize_text(cot or "")
    if stage not in REASONING_STAGES:
        if cot:
            raise ValueError(f"the {stage} target is answer-only; got a chain of thought {cot[:60]!r}")
        text = f"{ANSWER_MARKER} {answer}"
        return Target(text, None, (len(text) - len(answer), len(text)))
    if not cot:
        raise RecordError(f"{prefix}the chain of thought is empty; {stage} targets are "
                          f"'{REASONING_MARKER} <cot> {ANSWER_MARKER} <answer>'",
                          field=schema.cot_key(stage), reason="empty_cot")
    head = f"{REASONING_MARKER} "
    text = f"{head}{cot} {ANSWER_MARKER} {answer}"
    return Target(text, (len(head), len(head) + len(cot)), (len(text) - len(answer), len(text)))


def target_text(stage: str, cot: str | None, answer: str) -> str:
    """`make_target(stage, cot, answer).text`."""
    return make_target(stage, cot, answer).text


def record_target(record: Mapping[str, Any], stage: str, *, where: str = "") -> Target:
    """The target of `stage`'s view of a record (as data_gen writes it or `decode_example` reads it back)."""
    _check_stage(stage)
    cot = schema.text(record, schema.cot_key(stage)) if stage in REASONING_STAGES else None
    return make_target(stage, cot, schema.text(record, schema.answer_key(stage)), where=where)
