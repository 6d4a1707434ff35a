"""Reading prediction and reference files (our JSONL and LLaVA-Med's files) and pairing them by question id.

The formats are specified in `medclm_jax/eval/score.py`'s docstring. Every problem raises `ScoreInputError`
naming the file, the line (or array index), the field, and what to do.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

ANSWER_TYPES = ("open", "closed", "report")


class ScoreInputError(ValueError):
    """A prediction/reference file or record is unusable; the message says where and what to do."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One generated output. `text` is the full generation (possibly `Reasoning: ... Answer: ...`).
    `answer_only`: score `text` as is for the VQA metrics (LLaVA-Med predictions) instead of the text after the
    last `Answer:`."""

    id: str
    text: str
    answer_only: bool = False


@dataclasses.dataclass(frozen=True)
class Reference:
    """One question's ground truth. `answer_type` is "open", "closed", "report", or "ignored" (a LLaVA-Med type
    its script skips). `box` is normalized xyxy; `image_size` is (width, height) in pixels."""

    id: str
    answer: str
    answer_type: str
    question: str = ""
    box: tuple[float, float, float, float] | None = None
    organ: str | None = None
    modality: str | None = None
    stage: str | None = None
    domain: str | None = None
    image_size: tuple[int, int] | None = None


def _iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) for a JSONL file or a JSON array file; location is `file:line` / `file[index]`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScoreInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScoreInputError(f"{path}: is a folder; pass the JSONL file inside it") from None
    except UnicodeDecodeError as e:
        raise ScoreInputError(f"{path}: not UTF-8 text ({e}); predictions/references are JSON Lines") from None
    except OSError as e:
        raise ScoreInputError(f"{path}: cannot read it ({e.strerror or e}); check the path and its "
                              "permissions") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScoreInputError(f"{path}: invalid JSON array ({e})") from None
        except RecursionError:
            raise ScoreInputError(f"{path}: JSON nested too deeply; expected an array of flat objects") from None
        for i, rec in enumerate(data):
            yield f"{path}[{i}]", rec
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScoreInputError(f"{path}:{n}: invalid JSON ({e.msg}); write one JSON object per line") from None
        except RecursionError:
            raise ScoreInputError(f"{path}:{n}: JSON nested too deeply; write one flat JSON object per line") from None
        yield f"{path}:{n}", rec


def _need(rec: Any, key: str, where: str, what: str) -> Any:
    if not isinstance(rec, dict):
        raise ScoreInputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if key not in rec or rec[key] is None:
        raise ScoreInputError(f"{where}: missing field {key!r} ({what}); present: {sorted(rec)}")
    return rec[key]


def _text(v: Any, where: str, key: str) -> str:
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    raise ScoreInputError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")


def prediction_from_record(rec: Any, where: str = "record") -> Prediction:
    """Our `{"id", "prediction"}` or LLaVA-Med's `{"question_id", "text"}` -> Prediction."""
    if isinstance(rec, dict) and "question_id" in rec and "prediction" not in rec:
        text = _text(_need(rec, "text", where, "LLaVA-Med prediction text"), where, "text")
        return Prediction(str(rec["question_id"]), text, answer_only=True)
    pid = _need(rec, "id", where, "the question id, as in the reference file")
    text = _text(_need(rec, "prediction", where, "the generated text"), where, "prediction")
    return Prediction(str(pid), text)


def _box(v: Any, where: str) -> tuple[float, float, float, float] | None:
    if v is None:
        return None
    if not (isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(x, (int, float)) for x in v)):
        raise ScoreInputError(
            f"{where}: field 'box' must be 4 numbers [x1, y1, x2, y2] normalized to [0, 1], got {v!r}")
    x1, y1, x2, y2 = (float(x) for x in v)
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ScoreInputError(
            f"{where}: field 'box' {v!r} is not a normalized xyxy box with x1 < x2, y1 < y2 in [0, 1]")
    return (x1, y1, x2, y2)


def _size(v: Any, where: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)):
        raise ScoreInputError(f"{where}: field 'image_size' must be [width, height] in pixels, got {v!r}")
    return (int(v[0]), int(v[1]))


def _label(rec: dict, key: str) -> str | None:
    v = rec.get(key)
    return None if v is None or str(v).strip() == "" else str(v).strip()


def reference_from_record(rec: Any, where: str = "record") -> Reference:
    """Our reference record or a LLaVA-Med `test.json` entry -> Reference."""
    if isinstance(rec, dict) and ("conversations" in rec or "conversatons" in rec):
        # LLaVA-Med: the answer is the second turn; "conversatons" is a typo the released script also accepts.
        turns = rec.get("conversations", rec.get("conversatons"))
        if not (isinstance(turns, list) and len(turns) >= 2 and isinstance(turns[1], dict) and "value" in turns[1]):
            raise ScoreInputError(f"{where}: 'conversations' needs at least two turns with 'value' (question, answer)")
        rid = _need(rec, "id", where, "the question id")
        question = str(turns[0].get("value", "")) if isinstance(turns[0], dict) else ""
        kind = str(rec.get("answer_type", "CLOSED"))  # the fixed script defaults a missing type to CLOSED
        kind = {"OPEN": "open", "CLOSED": "closed"}.get(kind, "ignored")  # exact, case-sensitive, as released
        return Reference(str(rid), _text(turns[1]["value"], where, "conversations[1].value"), kind,
                         question=question.replace("<image>", "").strip(),
                         organ=_label(rec, "image_organ") or _label(rec, "organ"),
                         modality=_label(rec, "modality"))
    rid = _need(rec, "id", where, "the question id")
    answer = _text(_need(rec, "answer", where, "the reference answer"), where, "answer")
    kind = str(_need(rec, "answer_type", where, "open, closed or report")).strip().lower()
    if kind not in ANSWER_TYPES:
        raise ScoreInputError(f"{where}: field 'answer_type' is {rec['answer_type']!r}; use one of {ANSWER_TYPES}")
    return Reference(
        str(rid), answer, kind, question=str(rec.get("question") or ""), box=_box(rec.get("box"), where),
        organ=_label(rec, "organ"), modality=_label(rec, "modality"), stage=_label(rec, "stage"),
        domain=_label(rec, "domain"), image_size=_size(rec.get("image_size"), where),
    )


def read_predictions(path: str | Path) -> list[Prediction]:
    """All predictions in a JSONL (or JSON array) file, ours or LLaVA-Med's, in file order."""
    return [prediction_from_record(rec, where) for where, rec in _iter_records(Path(path))]


def read_references(path: str | Path) -> list[Reference]:
    """All references in a JSONL file of ours or a LLaVA-Med `test.json` array, in file order."""
    return [reference_from_record(rec, where) for where, rec in _iter_records(Path(path))]


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({i for i in ids if i in seen or seen.add(i)})


def pair(predictions: Sequence[Prediction], references: Sequence[Reference], *, allow_missing: bool = False,
         pred_name: str = "predictions", ref_name: str = "references") -> tuple[list[Prediction], int]:
    """Predictions reordered to match `references` by id -> (aligned predictions, number missing).

    Duplicate ids on either side and predictions whose id is not a reference raise. A reference without a
    prediction raises unless `allow_missing`, in which case it gets an empty prediction (scored 0) and is counted.
    """
    for name, ids in ((pred_name, [p.id for p in predictions]), (ref_name, [r.id for r in references])):
        dup = _duplicates(ids)
        if dup:
            raise ScoreInputError(f"{name}: {len(dup)} duplicated id(s), e.g. {dup[:5]}; ids must be unique")
    by_id = {p.id: p for p in predictions}
    ref_ids = {r.id for r in references}
    extra = [p.id for p in predictions if p.id not in ref_ids]
    if extra:
        raise ScoreInputError(
            f"{pred_name}: {len(extra)} of {len(predictions)} prediction id(s) are not in {ref_name} "
            f"(e.g. {extra[:5]}); predictions and references must come from the same split")
    missing = [r.id for r in references if r.id not in by_id]
    if missing and not allow_missing:
        raise ScoreInputError(
            f"{pred_name}: no prediction for {len(missing)} of {len(references)} reference id(s) (e.g. {missing[:5]}); "
            "generate them, or pass allow_missing (--allow-missing) to score them as empty and count them")
    aligned = [by_id.get(r.id, Prediction(r.id, "")) for r in references]
    return aligned, len(missing)
