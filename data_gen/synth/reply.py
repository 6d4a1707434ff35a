"""Parsing and validating a VLM's `Question: ... | Reasoning: ... | Answer: ...` reply into a `QAView`.

A reply is accepted only when it could train the model without teaching it something false:
  * it parses (labels in any case, with or without pipes, on one line or several, with markdown bold);
  * Easy/Medium reasoning cites the target box: near-miss spellings (4 decimals as in the authors' code,
    parentheses, extra spaces) within `BOX_TOLERANCE` of the box are rewritten to the canonical
    `medclm_jax.records.boxes.format_box` text; a missing box (`no_box`) or any other box (`box_mismatch`) rejects;
  * Easy/Medium reasoning names the host organ (its name, head noun or adjective: "pulmonary" for lung);
  * the answer agrees with the label: it names the class or a synonym, or is "yes" to a question that names it,
    or "no" to a question about a class absent from the image, or names the organ for a question naming the class;
  * on an image with several lesions a Medium/Hard question names the class or region it asks about, or its
    answer names every class of the image (`unanswerable` otherwise);
  * Medium and Hard questions do not mention a box or highlighted region; answers stay short.
Each rejection is a `ReplyError` whose `reason` the backend counts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional

from data_gen.synth.scene import Scene
from data_gen.types import Box, QAView
from medclm_jax.records.boxes import format_box

BOX_TOLERANCE = 0.015  # two-decimal rounding (0.005) plus slack for a model's own rounding
MAX_ANSWER_WORDS = 12

_LABEL = re.compile(r"\b(question|reasoning|rationale|chain[ -]of[ -]thought|answer)\s*:", re.IGNORECASE)
_NUM = r"(-?\d+(?:\.\d+)?)"
_BOX_LIKE = re.compile(r"[\[\(]\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*[\]\)]")
_BOX_WORDS = re.compile(r"\b(box|boxed|bounding|highlight(?:ed)?|outlined|marked region|coordinates)\b", re.I)
_NEGATIVE_ANSWERS = ("no", "none", "normal", "no finding", "negative", "nothing", "no abnormality")

# Synonyms a radiologist would accept for a class word (matched as whole words, plural allowed).
SYNONYMS = {
    "nodule": ("nodular",),
    "mass": ("tumor", "tumour", "neoplasm"),
    "effusion": ("pleural fluid", "hydrothorax"),
    "consolidation": ("consolidated", "airspace opacity", "airspace disease", "air-space opacity"),
    "cyst": ("cystic",),
    "cardiomegaly": ("enlarged heart", "cardiac enlargement"),
    "atelectasis": ("atelectatic",),
    "opacity": ("opacification",),
    "fracture": ("fractured",),
}
ORGAN_ADJECTIVES = {
    "lung": ("lungs", "pulmonary", "lobe", "hemithorax"),
    "liver": ("hepatic",),
    "kidney": ("renal",),
    "heart": ("cardiac",),
    "spleen": ("splenic",),
    "stomach": ("gastric",),
    "brain": ("cerebral",),
    "pancreas": ("pancreatic",),
    "bone": ("osseous",),
    "vertebra": ("vertebral", "spine", "spinal"),
    "rib": ("costal",),
}


class ReplyError(ValueError):
    """A reply that cannot be used; `reason` is a short countable code."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    question: str
    reasoning: str
    answer: str


def _clean(segment: str) -> str:
    text = " ".join(segment.split())
    return text.strip(" |\"'`").strip()


def parse_reply(text: str) -> ParsedReply:
    """'Question: ... | Reasoning: ... | Answer: ...' (pipes or newlines, any case, markdown bold) -> fields.

    Takes the first Question, the first Reasoning after it and the last Answer after that, so "answer:" inside
    the reasoning does not cut it short. Raises ReplyError('unparseable') without a question or an answer.
    """
    plain = re.sub(r"(\*\*|__|^#+\s*|^\s*[-*>]\s+)", "", text or "", flags=re.MULTILINE)
    marks = [(m.group(1).lower(), m.start(), m.end()) for m in _LABEL.finditer(plain)]
    q = next((m for m in marks if m[0] == "question"), None)
    if q is None:
        raise ReplyError("unparseable", f"no 'Question:' in reply {text[:120]!r}")
    r = next((m for m in marks if m[1] > q[1] and m[0] != "question" and m[0] != "answer"), None)
    after = r[1] if r else q[1]
    answers = [m for m in marks if m[0] == "answer" and m[1] > after]
    if not answers:
        raise ReplyError("unparseable", f"no 'Answer:' in reply {text[:120]!r}")
    a = answers[-1]

    def span(start_mark, end_pos):
        return _clean(plain[start_mark[2]:end_pos])

    question = span(q, r[1] if r else a[1])
    reasoning = span(r, a[1]) if r else ""
    answer = _clean(plain[a[2]:]).rstrip(".").strip()
    if not question or not answer:
        raise ReplyError("unparseable", f"empty question or answer in reply {text[:120]!r}")
    return ParsedReply(question=question, reasoning=reasoning, answer=answer)


def canonicalize_box(text: str, box_norm: Box, tolerance: float = BOX_TOLERANCE) -> str:
    """Rewrites every citation of `box_norm` in `text` to the canonical form; rejects other boxes.

    Raises:
      ReplyError('no_box') when no 4-number box is cited; ReplyError('box_mismatch') when a cited box is not
      within `tolerance` of `box_norm` in every coordinate (pixels, percentages and other boxes included).
    """
    canonical = format_box(box_norm)
    target = [min(1.0, max(0.0, float(v))) for v in box_norm]
    found = list(_BOX_LIKE.finditer(text))
    if not found:
        raise ReplyError("no_box", f"the reasoning does not cite the box {canonical}")
    for m in found:
        values = [float(g) for g in m.groups()]
        if any(abs(v - t) > tolerance for v, t in zip(values, target)):
            raise ReplyError("box_mismatch", f"the reasoning cites {m.group(0)}, not the box {canonical}")
    return _BOX_LIKE.sub(canonical, text)


def _term_re(term: str) -> str:
    return r"\b" + re.escape(term.lower()).replace(r"\ ", r"[\s-]+") + r"(?:s|es)?\b"


def mentions(text: str, terms: Iterable[str]) -> bool:
    """Whether `text` names any of `terms` as whole words (plural allowed, case-insensitive)."""
    low = text.lower()
    return any(t and re.search(_term_re(t), low) for t in terms)


def class_terms(cls: str) -> set[str]:
    """A class, its '/'-alternatives, their head nouns and synonyms: 'pleural effusion' -> {'pleural effusion',
    'effusion', 'pleural fluid', 'hydrothorax'}."""
    terms = {cls.lower()}
    for alt in cls.lower().split("/"):
        alt = alt.strip()
        if not alt:
            continue
        terms.add(alt)
        head = alt.split()[-1]
        terms.add(head)
        for word in {alt, head}:
            terms.update(SYNONYMS.get(word, ()))
    return {t for t in terms if t}


def organ_terms(organ: str, region: str = "", location: str = "") -> set[str]:
    """Words that name a host organ: the phrases, the head noun ('lung') and its adjectives ('pulmonary')."""
    terms = {p for p in (organ, region, location) if p}
    for phrase in [p for p in (organ, region) if p]:
        words = phrase.split()
        for word in {words[-1]} | {w for w in words if w in ORGAN_ADJECTIVES}:
            terms.add(word)
            terms.update(ORGAN_ADJECTIVES.get(word, ()))
    return terms


def _closed_answer(answer: str) -> Optional[str]:
    low = answer.lower().strip(" .!")
    for word in ("yes", "no"):
        if low == word or re.match(rf"{word}\b[\s,.;:!]", low):
            return word
    return None


def validate_reply(stage: str, parsed: ParsedReply, scene: Scene, box_norm: Optional[Box]) -> QAView:
    """Checks a parsed reply against the label (see the module docstring) and returns the view to store.

    Args:
      stage: 'easy' | 'medium' | 'hard'.
      parsed: the reply's fields.
      scene: the image's lesions as phrases (`Scene.from_input`); `scene.target` None for a negative image.
      box_norm: the target box (normalized xyxy) the Easy/Medium reasoning must cite; None for negatives.

    Raises:
      ReplyError with the reason to count.
    """
    question, answer, cot = parsed.question, parsed.answer, parsed.reasoning
    if len(answer.split()) > MAX_ANSWER_WORDS:
        raise ReplyError("long_answer", f"answer of {len(answer.split())} words: {answer[:80]!r}")
    if _BOX_LIKE.search(answer):
        raise ReplyError("box_in_answer", f"the answer cites a box: {answer!r}")
    if stage in ("medium", "hard") and (_BOX_WORDS.search(question) or _BOX_LIKE.search(question)):
        raise ReplyError(f"{stage}_mentions_box", f"a {stage} question must not refer to a box: {question!r}")
    closed = _closed_answer(answer)
    if scene.target is None:  # negative image
        if not (closed == "no" or answer.lower() in _NEGATIVE_ANSWERS):
            raise ReplyError("answer_mismatch", f"a 'No finding' image needs a negative answer, got {answer!r}")
        if stage != "hard":
            if not cot:
                raise ReplyError("no_reasoning", "Easy/Medium replies need reasoning")
            if _BOX_LIKE.search(cot):
                raise ReplyError("box_in_negative", "a 'No finding' reasoning must not cite a box")
        return QAView(question=question, answer="no", cot=cot if stage != "hard" else "", answer_type="closed")

    t = scene.target
    target_terms = class_terms(t.cls)
    if stage != "hard":
        if not cot:
            raise ReplyError("no_reasoning", "Easy/Medium replies need reasoning")
        assert box_norm is not None
        cot = canonicalize_box(cot, box_norm)
        if t.organ and not mentions(cot, organ_terms(t.organ, t.region, t.location)):
            raise ReplyError("no_organ", f"the reasoning does not name the {t.organ}")
    names_class = mentions(question, target_terms)
    if closed == "yes":
        ok = names_class
    elif closed == "no":
        present = set().union(*(class_terms(c) for c in scene.classes))
        ok = mentions(question, [c for c in scene.absent if c not in present]) and not mentions(question, present)
    else:
        ok = mentions(answer, target_terms) or (names_class and bool(t.organ) and
                                                 mentions(answer, organ_terms(t.organ, t.region, t.location)))
    if not ok:
        raise ReplyError("answer_mismatch", f"answer {answer!r} to {question!r} disagrees with the label {t.cls!r}")
    if stage != "easy" and len(scene.classes) > 1 and not names_class and closed != "no":
        covers_all = all(mentions(answer, class_terms(c)) for c in scene.classes)
        region = next((p for p in (t.region, t.organ) if p and p in question.lower()), "")
        covers_region = bool(region) and all(mentions(answer, class_terms(les.cls)) for les in scene.covered(region))
        if not (covers_all or covers_region):
            raise ReplyError("unanswerable", f"{question!r} does not name what it asks about and {answer!r} does "
                                             f"not list every finding ({', '.join(scene.classes)})")
    if not closed and not answer.split()[0].isupper():  # "Nodule" -> "nodule" like the templates; "ILD" kept
        answer = answer[:1].lower() + answer[1:]
    return QAView(question=question, answer=closed or answer, cot=cot if stage != "hard" else "",
                  answer_type="closed" if closed else "open")
