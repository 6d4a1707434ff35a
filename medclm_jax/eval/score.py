"""One scoring entry point: predictions + references -> nested metrics dict and a printed table.

Used by `medclm score` (`medclm_jax/commands/score.py`), and by training validation / `medclm eval` with
in-memory records.

## File formats

**Our predictions** (JSON Lines, one object per line):

    {"id": "vqa_rad/test/42", "question": "Is there a nodule?", "prediction": "Reasoning: ... Answer: yes"}

`id` (string or number, matched as a string) and `prediction` (the generated text) are required; `question` is
informational. The VQA metrics score the text after the last `Answer:` when there is one, else the whole text;
boxes are parsed from the whole text (`grounding.py`); format adherence and organ agreement read the reasoning.

**Our references** (JSON Lines):

    {"id": "vqa_rad/test/42", "question": "...", "answer": "yes", "answer_type": "closed",
     "box": [0.25, 0.33, 0.58, 0.67], "organ": "lung", "modality": "xray", "stage": "medium",
     "domain": "nodule_xray", "image_size": [1024, 1024]}

Required: `id`, `answer`, `answer_type` (`open`, `closed`, or `report` for report generation, scored by the
report metrics only). Optional: `question`, `box` (normalized xyxy; enables grounding), `organ` (host organ;
enables organ agreement and the per-organ breakdown), `modality`, `stage`, `domain` (breakdowns), `image_size`
`[w, h]` in pixels (needed to read pixel boxes).

**LLaVA-Med's files** are read as released: references as its `test.json` (a JSON array of
`{"id", "conversations": [{"from": "human", "value": "<image>\\nquestion"}, {"from": "gpt", "value": answer}],
"answer_type": "OPEN" | "CLOSED"}`), predictions as its answer JSONL (`{"question_id", "prompt", "text", ...}`).
Their `text` is scored as is (no `Answer:` extraction), so the convention's numbers match its script bit for bit.
Records are paired by id (LLaVA-Med's script pairs by order and asserts equal ids, which is the same result).

## Output

`score()` returns a nested dict; every score is a percentage in [0, 100] (CIDEr-D x100 too), every key starting
with `n` is a count. `flatten()` joins keys with "/" for the JSON file, e.g. `llava_med/open_recall`,
`strict/token_f1`, `by_modality/ct/llava_med/closed_accuracy`. Sections (present when the data allows):

- `counts`: `n`, `n_open`, `n_closed`, `n_report`, `n_ignored` (LLaVA-Med types its script skips),
  `n_missing_predictions` (scored as empty), `n_empty_predictions` (blank text, missing ones included).
- `llava_med`: the convention (`llava_med.py`). `strict`: the strict variants (`vqa_strict.py`), open+closed.
- `grounding`: `mean_iou`, `acc_at_0.5`, `n`, `n_missing`, `n_malformed` over references with a `box`.
- `organ`: `agreement` over references with a scorable `organ` whose prediction has a reasoning part.
- `format`: `reasoning_answer`, `answer` adherence rates over our predictions (not LLaVA-Med's).
- `report`: `bleu_1..4`, `sentence_bleu_1..4`, `rouge_l`, `cider_d` over `report` references (`report.py`).
- `by_answer_type/{open,closed}` and `by_modality|by_organ|by_stage|by_domain/<label>`: the same sections for
  each subset.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from medclm_jax.eval import cot, grounding, llava_med, report, vqa_strict
from medclm_jax.eval.records import Prediction, Reference, pair, prediction_from_record, reference_from_record

BREAKDOWNS = ("modality", "organ", "stage", "domain")


def _vqa_answer(p: Prediction) -> str:
    return p.text if p.answer_only else cot.extract_answer(p.text)


def _per_item(p: Prediction, r: Reference, box_form: str) -> dict[str, Any]:
    """Every per-question score for one (prediction, reference) pair."""
    out: dict[str, Any] = {"ref": r, "empty": not p.text.strip()}
    answer = _vqa_answer(p)
    if r.answer_type in ("open", "closed"):
        out["llava_med"] = llava_med.question_scores(answer, r.answer, r.answer_type)
        out["strict"] = vqa_strict.question_scores(answer, r.answer, r.answer_type)
    elif r.answer_type == "report":
        out["report"] = (answer, r.answer)
    if r.box is not None:
        out["grounding"] = grounding.question_scores(p.text, r.box, box_form, r.image_size)
    reasoning, final = cot.split_reasoning_answer(p.text)
    if r.organ is not None and final is not None and reasoning:
        named = cot.names_organ(reasoning, r.organ)
        if named is not None:
            out["organ"] = float(named)
    if not p.answer_only:
        out["format"] = cot.format_adherence(p.text)
    return out


def _sections(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The metric sections for one subset of per-question results."""
    out: dict[str, Any] = {}
    vqa = [i for i in items if "llava_med" in i]
    if vqa:
        out["llava_med"] = llava_med.summarize(i["llava_med"] for i in vqa)
        out["strict"] = vqa_strict.summarize([i["strict"] for i in vqa])
    boxed = [i["grounding"] for i in items if "grounding" in i]
    if boxed:
        out["grounding"] = grounding.summarize(boxed)
    organ = [i["organ"] for i in items if "organ" in i]
    if organ:
        out["organ"] = {"agreement": 100.0 * sum(organ) / len(organ), "n": len(organ)}
    fmt = [i["format"] for i in items if "format" in i]
    if fmt:
        out["format"] = {k: 100.0 * sum(f[k] for f in fmt) / len(fmt) for k in ("reasoning_answer", "answer")}
        out["format"]["n"] = len(fmt)
    reports = [i["report"] for i in items if "report" in i]
    if reports:
        scores = report.report_scores([h for h, _ in reports], [r for _, r in reports])
        out["report"] = {k: 100.0 * v for k, v in scores.items()}
        out["report"]["n"] = len(reports)
    return out


def _key(label: str) -> str:
    return label.strip().lower().replace("/", "-")


def score(predictions: Sequence[Prediction], references: Sequence[Reference], *, box_form: str = "auto",
          allow_missing: bool = False) -> dict[str, Any]:
    """Score `predictions` against `references` (paired by id; see `records.pair` for the errors).

    Args:
      predictions: generated outputs (`records.Prediction`), any order.
      references: ground truth (`records.Reference`); defines the questions scored.
      box_form: how to read boxes in predictions (`grounding.FORMS`).
      allow_missing: score references without a prediction as empty (counted) instead of raising.

    Returns:
      The nested metrics dict described in the module docstring.
    """
    if box_form not in grounding.FORMS:
        raise ValueError(f"box_form must be one of {grounding.FORMS}, got {box_form!r}")
    aligned, n_missing = pair(predictions, references, allow_missing=allow_missing)
    items = [_per_item(p, r, box_form) for p, r in zip(aligned, references)]
    kinds = [r.answer_type for r in references]
    out: dict[str, Any] = {"counts": {
        "n": len(items), "n_open": kinds.count("open"), "n_closed": kinds.count("closed"),
        "n_report": kinds.count("report"), "n_ignored": kinds.count("ignored"),
        "n_missing_predictions": n_missing, "n_empty_predictions": sum(i["empty"] for i in items),
    }}
    out.update(_sections(items))
    by_type = {k: _sections([i for i in items if i["ref"].answer_type == k]) for k in ("open", "closed")}
    out["by_answer_type"] = {k: v for k, v in by_type.items() if v}
    for field in BREAKDOWNS:
        groups: dict[str, list] = {}
        for i in items:
            label = getattr(i["ref"], field)
            if label is not None:
                groups.setdefault(_key(label), []).append(i)
        if groups:
            out[f"by_{field}"] = {g: {"n": len(v), **_sections(v)} for g, v in sorted(groups.items())}
    return out


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat dict with "/"-joined keys (None values kept, so absent groups stay visible)."""
    flat: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "/"))
        else:
            flat[key] = v
    return flat


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table: the overall sections, then one row per subset with the headline numbers."""
    lines = []
    for section in ("counts", "llava_med", "strict", "grounding", "organ", "format", "report"):
        if section in metrics:
            lines.append(f"[{section}]")
            lines += [f"  {k:<22} {_fmt(v)}" for k, v in metrics[section].items()]
    cols = (("llava_med", "open_recall", "open_rec"), ("llava_med", "closed_accuracy", "closed_acc"),
            ("strict", "token_f1", "strict_f1"), ("strict", "closed_accuracy", "strict_closed"),
            ("grounding", "mean_iou", "mIoU"), ("grounding", "acc_at_0.5", "acc@0.5"))
    header = f"  {'subset':<28} {'n':>6} " + " ".join(f"{c[2]:>13}" for c in cols)
    rows: list[str] = []

    def row(name: str, sec: dict[str, Any], n: int) -> None:
        vals = [_fmt(sec.get(a, {}).get(b)) for a, b, _ in cols]
        rows.append(f"  {name[:28]:<28} {n:>6} " + " ".join(f"{v:>13}" for v in vals))

    for kind, sec in metrics.get("by_answer_type", {}).items():
        row(f"answer_type={kind}", sec, metrics["counts"][f"n_{kind}"])
    for field in BREAKDOWNS:
        for label, sec in metrics.get(f"by_{field}", {}).items():
            row(f"{field}={label}", sec, sec["n"])
    if rows:
        lines += ["[subsets]", header, *rows]
    return "\n".join(lines)


def score_records(pred_records: Iterable[dict], ref_records: Iterable[dict], **kwargs) -> dict[str, Any]:
    """`score` on plain dicts in the file formats above (for callers that hold records in memory)."""
    preds = [prediction_from_record(r, f"prediction {i}") for i, r in enumerate(pred_records)]
    refs = [reference_from_record(r, f"reference {i}") for i, r in enumerate(ref_records)]
    return score(preds, refs, **kwargs)
