"""Boxes in generated text: parse every form we emit or users meet, convert to normalized xyxy, score IoU.

All boxes returned here are normalized `(x1, y1, x2, y2)` floats in [0, 1], x to the right, y down (the record's
`lesion/box` convention, `medclm_jax.records.boxes`).

Forms (`form=` argument; "auto" tries them all, see `parse_box`):

| form        | example in text                          | conversion                                        |
|-------------|------------------------------------------|---------------------------------------------------|
| `canonical` | `[0.25, 0.33, 0.58, 0.67]`               | as is; every value must be in [0, 1]              |
| `loc`       | `<loc0338><loc0256><loc0686><loc0593>`   | PaliGemma: y1 x1 y2 x2 bins over 1024, `bin/1024` |
| `percent`   | `[25, 33, 58, 67]`                       | integers 0-100, divided by 100                    |
| `permille`  | `[250, 330, 580, 670]`, `(250,330),(580,670)` | integers 0-1000 (Qwen-VL style), divided by 1000 |
| `pixel`     | `[128, 170, 297, 343]` or decimals > 1   | pixels xyxy, divided by the image size (w, h)     |

Brackets may be `[...]` or `(...)`; the two-point form `(x1, y1), (x2, y2)` is accepted for every numeric form.

"auto" resolution of a numeric box (documented because integer forms are ambiguous by nature): all values <= 1 ->
canonical; any value with a decimal point and > 1 -> pixel; integers with max <= 100 -> percent; max <= 1000 ->
permille; larger -> pixel. A model with a known convention should be scored with that `form` explicitly
(`medclm score --box-form`): e.g. pixel boxes on a 512-pixel image look like permille to "auto".

Which box is scored: the first box after the last `Answer:` if the answer holds one, else the first box in the
text. A missing box, a box that does not parse, a value out of range, or a degenerate box (x2 <= x1 or y2 <= y1)
scores IoU 0 and is counted (`n_missing`, `n_malformed`); nothing raises.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from medclm_jax.records.boxes import LOC_BINS, LOC_BOX_RE, from_loc_bins
from medclm_jax.eval.cot import split_reasoning_answer

Box = tuple[float, float, float, float]
FORMS = ("auto", "canonical", "loc", "percent", "permille", "pixel")

_NUM = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
_LIST_RE = re.compile(r"[\[\(]\s*" + _NUM + _SEP + _NUM + _SEP + _NUM + _SEP + _NUM + r"\s*[\]\)]")
_PAIRS_RE = re.compile(
    r"\(\s*" + _NUM + _SEP + _NUM + r"\s*\)\s*,?\s*(?:to\s*)?\(\s*" + _NUM + _SEP + _NUM + r"\s*\)"
)


@dataclasses.dataclass(frozen=True)
class ParsedBox:
    """One parse result. `box` is normalized xyxy or None; `form` the form it was read as ("none" when no box
    was found); `error` says why a found box was rejected ("" when fine)."""

    box: Box | None
    form: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.box is not None


def _validated(vals: Sequence[float], form: str) -> ParsedBox:
    x1, y1, x2, y2 = vals
    if any(v < -1e-9 or v > 1 + 1e-9 for v in vals):
        return ParsedBox(None, form, f"coordinates outside the image: {tuple(round(v, 4) for v in vals)}")
    if x2 <= x1 or y2 <= y1:
        return ParsedBox(None, form, f"degenerate box (need x2 > x1 and y2 > y1): {tuple(round(v, 4) for v in vals)}")
    return ParsedBox((x1, y1, x2, y2), form)


def _numeric_form(raw: Sequence[str]) -> str:
    vals = [float(r) for r in raw]
    if all(v <= 1.0 for v in vals):
        return "canonical"
    if any("." in r for r in raw):
        return "pixel"
    top = max(vals)
    return "percent" if top <= 100 else "permille" if top <= 1000 else "pixel"


def _convert(raw: Sequence[str], form: str, image_size: Sequence[float] | None) -> ParsedBox:
    vals = [float(r) for r in raw]
    if form == "canonical":
        return _validated(vals, form)
    if form in ("percent", "permille"):
        if any("." in r for r in raw):
            return ParsedBox(None, form, f"{form} boxes hold integers, got {list(raw)}")
        scale = 100.0 if form == "percent" else 1000.0
        return _validated([v / scale for v in vals], form)
    if form == "pixel":
        if not image_size or len(image_size) != 2 or min(image_size) <= 0:
            return ParsedBox(None, form, "pixel box but no image size [w, h] to normalize it")
        w, h = float(image_size[0]), float(image_size[1])
        return _validated([vals[0] / w, vals[1] / h, vals[2] / w, vals[3] / h], form)
    raise ValueError(f"unknown box form {form!r}; use one of {FORMS}")


def find_boxes(text: str, form: str = "auto", image_size: Sequence[float] | None = None) -> list[ParsedBox]:
    """Every box-like span in `text`, in order of position, each converted (or rejected with a reason).

    Args:
      text: generated text.
      form: one of `FORMS`; anything but "auto" reads only that form.
      image_size: (width, height) in pixels, needed for the pixel form.
    """
    if form not in FORMS:
        raise ValueError(f"unknown box form {form!r}; use one of {FORMS}")
    found: list[tuple[int, ParsedBox]] = []
    if form in ("auto", "loc"):
        for m in LOC_BOX_RE.finditer(text):
            bins = [int(g) for g in m.groups()]
            if max(bins) >= LOC_BINS:
                found.append((m.start(), ParsedBox(None, "loc", f"location bin >= {LOC_BINS}: {bins}")))
                continue
            found.append((m.start(), _validated(from_loc_bins(bins), "loc")))
    if form != "loc":
        spans = [(m.start(), m.groups()) for m in _LIST_RE.finditer(text)]
        spans += [(m.start(), m.groups()) for m in _PAIRS_RE.finditer(text)]
        for start, raw in spans:
            f = _numeric_form(raw) if form == "auto" else form
            found.append((start, _convert(raw, f, image_size)))
    found.sort(key=lambda t: t[0])
    return [b for _, b in found]


def parse_box(text: str, form: str = "auto", image_size: Sequence[float] | None = None) -> ParsedBox:
    """The box a prediction commits to: the first in its answer (after the last `Answer:`) if any, else the first
    in the whole text; `ParsedBox(None, "none", "no box found")` when there is none."""
    answer = split_reasoning_answer(text)[1]
    if answer:
        boxes = find_boxes(answer, form, image_size)
        if boxes:
            return boxes[0]
    boxes = find_boxes(text, form, image_size)
    return boxes[0] if boxes else ParsedBox(None, "none", "no box found")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two normalized xyxy boxes; 0.0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def question_scores(prediction: str, ref_box: Sequence[float], form: str = "auto",
                    image_size: Sequence[float] | None = None, threshold: float = 0.5) -> dict[str, float]:
    """Per-question grounding: `iou` (0 for a missing/malformed box), `hit` (iou >= threshold), and the flags
    `missing` / `malformed` (1.0 or 0.0) for counting."""
    parsed = parse_box(prediction, form, image_size)
    iou = box_iou(parsed.box, ref_box) if parsed.ok else 0.0
    return {"iou": iou, "hit": 1.0 if iou >= threshold else 0.0,
            "missing": 1.0 if parsed.form == "none" else 0.0,
            "malformed": 1.0 if (not parsed.ok and parsed.form != "none") else 0.0}


def summarize(per_question: Sequence[dict[str, float]]) -> dict[str, float | int | None]:
    """`mean_iou` and `acc_at_0.5` in percent over all questions with a reference box (missing boxes count as 0),
    plus `n`, `n_missing`, `n_malformed`."""
    n = len(per_question)
    return {
        "mean_iou": 100.0 * sum(s["iou"] for s in per_question) / n if n else None,
        "acc_at_0.5": 100.0 * sum(s["hit"] for s in per_question) / n if n else None,
        "n": n,
        "n_missing": int(sum(s["missing"] for s in per_question)),
        "n_malformed": int(sum(s["malformed"] for s in per_question)),
    }
