"""Strict VQA metrics: the numbers to trust, reported beside the LLaVA-Med convention (`llava_med.py`).

What "strict" fixes, and nothing else:
- repetition cannot raise a score: token metrics count word *types* (sets), not the prediction's multiplicity;
- no substring matching: "no" is not found inside "not", "nodule" or "abnormal"; "yes" is not found in "eyes";
- exact match really is exact (after normalization), not the released table's distinct-word ratio.

Normalization (`normalize`), one rule per step and no hidden cases:
1. Unicode NFKC, lower-case.
2. Hyphens (and en/em dashes) *join* the parts ("x-ray" -> "xray"): the same word spelled with or without the
   hyphen should match; "x ray" written with a space stays two tokens.
3. A period between two digits is kept (decimals: "3.5"); every other character that is not a letter, a digit or
   whitespace becomes a space (so "right." -> "right", "t1/t2" -> "t1 t2", "don't" -> "don t").
4. Number words zero..twenty become digits ("two" -> "2"); "none" is left alone (it answers "which?" questions
   as often as "how many?").
5. The articles a / an / the are dropped.
Tokens are the whitespace-separated results.

A prediction that is empty after normalization scores 0 on every metric (the caller counts it). An answer that is
empty after normalization (e.g. "-") cannot be scored by tokens: it matches only an equally empty prediction.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = frozenset({"a", "an", "the"})
_HYPHENS = re.compile(r"[\-\u2010\u2011\u2012\u2013\u2014]")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_NON_WORD = re.compile(r"[^\w\s\u0001]|_")
_DECIMAL_MARK = "\u0001"  # placeholder that survives step 3 and turns back into "."


def normalize(text: str) -> str:
    """Strict normalization (steps 1-5 above) -> space-joined tokens."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = _HYPHENS.sub("", s)
    s = _DECIMAL.sub(_DECIMAL_MARK, s)
    s = _NON_WORD.sub(" ", s).replace(_DECIMAL_MARK, ".")
    out = []
    for tok in s.split():
        tok = _NUMBERS.get(tok, tok)
        if tok not in _ARTICLES:
            out.append(tok)
    return " ".join(out)


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def token_prf(prediction: str, answer: str) -> tuple[float, float, float]:
    """Type-level (set) token (precision, recall, f1) in [0, 1].

    precision = |P & A| / |P|, recall = |P & A| / |A| over the *sets* of normalized tokens; f1 their harmonic
    mean. "lung lung lung" vs "left lung": P = {lung}, A = {left, lung} -> (1.0, 0.5, 0.667).
    """
    p, a = set(tokens(prediction)), set(tokens(answer))
    if not a:
        return (1.0, 1.0, 1.0) if not p else (0.0, 0.0, 0.0)
    if not p:
        return 0.0, 0.0, 0.0
    common = len(p & a)
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(p), common / len(a)
    return precision, recall, 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the two strings are identical after `normalize`, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(answer) else 0.0


def yes_no(text: str) -> str | None:
    """The polarity a text commits to: "yes" or "no" when exactly one of the two *whole words* occurs; None when
    neither or both occur ("there is not any effusion" -> None; "no, none seen" -> "no")."""
    found = {t for t in tokens(text) if t in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


def _contains_phrase(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def closed_correct(prediction: str, answer: str) -> float:
    """Strict closed-question score (0 or 1).

    Yes/no answers: the prediction's `yes_no` polarity must equal the answer (so a prediction that says "not"
    without the word "no", or that says both, scores 0). Other closed answers (e.g. SLAKE's "Left", "CT", PMC-VQA
    choices): the answer's normalized tokens must occur as a contiguous whole-word run in the prediction (the
    whole-word counterpart of the substring rule; "left" is found in "the left lung", not in "leftover").
    """
    gold = normalize(answer)
    if gold in ("yes", "no"):
        return 1.0 if yes_no(prediction) == gold else 0.0
    if not gold:
        return 1.0 if not normalize(prediction) else 0.0
    return 1.0 if _contains_phrase(tokens(prediction), gold.split()) else 0.0


def question_scores(prediction: str, answer: str, answer_type: str) -> dict[str, float]:
    """Per-question strict scores in [0, 1]: token precision/recall/F1 and exact match for every question, plus
    `closed_accuracy` for closed ones. `answer_type` is "open" or "closed" (case-insensitive)."""
    precision, recall, f1 = token_prf(prediction, answer)
    out = {"token_precision": precision, "token_recall": recall, "token_f1": f1,
           "exact_match": exact_match(prediction, answer)}
    if answer_type.strip().lower() == "closed":
        out["closed_accuracy"] = closed_correct(prediction, answer)
    return out


def summarize(per_question: Sequence[dict[str, float]]) -> dict[str, float | int | None]:
    """Mean of each per-question score over the questions that have it, in percent; `n` = number of questions."""
    keys = ("token_precision", "token_recall", "token_f1", "exact_match", "closed_accuracy")
    out: dict[str, float | int | None] = {}
    for k in keys:
        vals = [s[k] for s in per_question if k in s]
        out[k] = 100.0 * sum(vals) / len(vals) if vals else None
    out["n"] = len(per_question)
    return out
