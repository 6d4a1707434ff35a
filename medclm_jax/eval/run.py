"""Evaluating a checkpoint: every example of a task -> generated text -> a predictions JSONL that survives an
interruption -> the metrics of `medclm score`, overall and per stage / domain / answer type / modality / organ.

    gen = generate.Generator.load(checkpoint, generate.GenerateOptions(batch_size=16))
    task = record_task(data_dir, "test", gen.image_size, gen.cfg.family)          # or benchmark_task(...)
    result = evaluate(task, gen, out_dir, limit=None, progress=True)               # result.metrics

Tasks. `record_task`: every record of a split of our build in all three stages, record-major (the validation
stream's order, `data/assemble.validation_examples`; Easy shows the box drawn, as in training; any stage of any
record, whatever its pool). Prompts are encoded without their targets, so an example whose target would not fit a
training `max_len` is still evaluated (the validation stream would drop it). `benchmark_task`: the test questions
of VQA-RAD, SLAKE, PathVQA or PMC-VQA through `eval/benchmarks` (image files read with PIL, squashed to the model's
size like our records; PMC-VQA's options appended to the question).

Files in OUT:
  run.json            what decides the predictions: the task (data or benchmark, split) and `Generator.describe()`
                      (checkpoint, prompt format, max_len, decoding). A rerun with other settings is refused
                      (`overwrite` starts over), so one predictions file never mixes two settings.
  predictions.jsonl   one JSON object per example, in task order (`prediction_line`):
                        id, question, prediction (the generated text), reasoning, answer, box ([x1, y1, x2, y2]
                        normalized, or null), box_form, box_error, stage, domain, and the task's own fields
                        (records: image_id, record, split; benchmarks: dataset, split, image, question_type),
                        reference (the example's line of references.jsonl: answer, answer_type, box, organ,
                        modality, stage, domain, image_size), scores (the per-question numbers `medclm score`
                        averages: llava_med, strict, grounding, organ, format), and error where the example could
                        not be asked (`prompt_too_long`: empty prediction, scored as such).
                      `medclm score` reads it as is (`id`, `prediction`).
  references.jsonl    the reference of every line (`eval/score.py`'s format).
  metrics.json        {"run": settings, counts and timing, "metrics": `score.score`'s nested dict} over the first
                      `limit` examples (all by default): then the same numbers as `medclm score --pred
                      predictions.jsonl --ref references.jsonl --json`, flattened.
  report.html         the same numbers as tables, the training run's curves, and the best, worst and random scored
                      examples with their images and boxes: one self-contained page (`eval/html_report.py`).

Resume. Examples go in fixed global batches (b covers examples [b G, (b + 1) G)), whatever `limit` is, so a row's
batch and position never change. Each batch's lines are appended with one write and flushed; a rerun skips the
batches whose examples are all in the file, regenerates the others and writes only the missing lines. A line cut
by the interruption is dropped first (a warning says so). Greedy decoding of a row does not depend on the other
rows, and sampling is seeded per batch, so an interrupted run completed later (or a `limit` run extended) gives the
file of an uninterrupted run; the file is rewritten in task order at the end in any case. Examples whose record
cannot be read are skipped and counted with `on_error="skip"` (retried by every rerun), raised otherwise.

Several processes: each builds its own rows of every batch; process 0 alone reads and writes the files, decides
which batches are pending (broadcast to the others) and receives every process's lines.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from medclm_jax.data import assemble, prompts, views
from medclm_jax.data.source import RecordSource, load_dataset_info
from medclm_jax.eval import cot, grounding, html_report
from medclm_jax.eval import score as score_lib
from medclm_jax.eval.benchmarks import BenchmarkError, load_benchmark, reference_record
from medclm_jax.eval.generate import Generator, model_input
from medclm_jax.eval.records import Prediction, reference_from_record
from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError

log = logging.getLogger(__name__)

RUN, PREDICTIONS, REFERENCES, METRICS = "run.json", "predictions.jsonl", "references.jsonl", "metrics.json"
REPORT = "report.html"
OUR_FILES = (RUN, PREDICTIONS, REFERENCES, METRICS, REPORT)
EXTRACTED = "images"  # a benchmark's embedded images, written out (PathVQA's parquet copy)
_UNSCORED_ORGANS = ("", "unknown", schema.NO_ORGAN)


class EvalError(ValueError):
    """The output folder or its files do not fit this evaluation; the message says which file and what to do."""


@dataclasses.dataclass(frozen=True)
class Query:
    """One example to ask.

    Attributes:
      id: unique in the task.
      question: the question as the prompt gets it.
      image: float32[S, S, 3] in [-1, 1], the model's input.
      reference: the example's reference record (`eval/score.py`'s format).
      info: fields copied into the prediction line (stage, domain, where the example comes from).
    """

    id: str
    question: str
    image: np.ndarray
    reference: dict[str, Any]
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """What to evaluate: `ids` in order, `make(i)` builds example i (raises RecordError when it cannot), and
    `describe` identifies the task in run.json (no count: `limit` may change between runs)."""

    name: str
    ids: Sequence[str]
    make: Callable[[int], Query]
    describe: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """`metrics`: `score.score`'s nested dict (None on processes other than 0); `run`: metrics.json's run part."""

    out_dir: str
    metrics: Optional[dict[str, Any]]
    run: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Tasks.


def answer_type(record: Mapping[str, Any], stage: str, answer: str) -> str:
    """The record's `{stage}/answer_type`, or (records written before the key existed) `closed` for a yes/no
    answer, else `open`."""
    key = schema.answer_type_key(stage)
    if key in record and record[key]:
        return schema.text(record, key).strip().lower()
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


def record_task(data_dir: str, split: str, image_size: int, family: str, *, on_error: str = "raise") -> Task:
    """Every record of `split` of a `medclm-data build` in the three stages (module docstring).

    Ids are `{split}/{record index}/{stage}`; the reference is the stage's answer (whitespace normalized as in
    training targets), its answer type, the lesion box (None for a negative record), organ, modality and domain.
    """
    info = load_dataset_info(data_dir)
    domain_ids = views.domain_vocabulary(info)
    source = RecordSource(data_dir, split, on_error=on_error)
    examples = assemble.validation_examples(len(source), "all")
    settings = views.ViewSettings(image_size, family)
    ids = [f"{split}/{int(r)}/{schema.STAGES[int(s)]}" for r, s in examples]
    last: dict[int, Any] = {}  # a record's three stages are adjacent: read it once

    def make(i: int) -> Query:
        index, stage = int(examples[i][0]), schema.STAGES[int(examples[i][1])]
        if index not in last:
            last.clear()
            last[index] = source.read(index)
        record = last[index]
        view = views.make_view(record, stage, settings, domain_ids=domain_ids, example_id=index, check_pool=False,
                               where=f"record {index} of split {split!r}")
        answer = view.target.text[slice(*view.target.answer)]
        organ = schema.text(record, schema.LESION_ORGAN)
        reference = {
            "id": ids[i], "question": view.question, "answer": answer,
            "answer_type": answer_type(record, stage, answer),
            "box": None if view.box is None else [round(float(v), 6) for v in view.box],
            "organ": None if organ.strip().lower() in _UNSCORED_ORGANS else organ,
            "modality": schema.text(record, schema.IMAGE_MODALITY), "stage": stage, "domain": view.domain,
            "image_size": [int(record[schema.IMAGE_WIDTH][0]), int(record[schema.IMAGE_HEIGHT][0])],
        }
        info_ = {"stage": stage, "domain": view.domain, "image_id": schema.text(record, schema.IMAGE_ID),
                 "record": index, "split": split}
        return Query(ids[i], view.question, view.image, reference, info_)

    return Task(f"{split} split", ids, make, {"kind": "records", "data": os.path.abspath(data_dir), "split": split})


def read_image_file(path: str) -> np.ndarray:
    """An image file (PNG, JPEG, ...) -> uint8[H, W] or [H, W, 3]; 16-bit and float images are min-max stretched.

    Raises:
      RecordError(reason='bad_image'): naming the file.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                a = np.asarray(im, np.float64)
                lo, hi = float(a.min()), float(a.max())
                return np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) / (hi - lo) * 255).astype(
                    np.uint8)
            return np.asarray(im.convert("L" if im.mode in ("L", "LA", "1") else "RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise RecordError(f"cannot read the image ({e})", path=path, reason="bad_image") from None


def benchmark_question(question: str, choices: Sequence[str]) -> str:
    """The question, with multiple-choice options (PMC-VQA) on lines after it as `A: ...`."""
    if not choices:
        return question
    return question + "\n" + "\n".join(f"{'ABCD'[k]}: {c}" for k, c in enumerate(choices))


def benchmark_task(name: str, root: str, split: str, image_size: int, family: str,
                   extract_dir: str | None = None) -> Task:
    """The `split` questions of a public benchmark (`eval/benchmarks.LOADERS`); ids are the loader's.

    `extract_dir`: where a benchmark whose images are embedded in its files (PathVQA's Hugging Face parquet copy)
    has them written, a folder of ours (`medclm eval` passes `<out>/images`), never the benchmark's own.

    VQA-RAD is loaded with its train split too when `split` is test, so the train/test image overlap (its known
    leak) is reported in `describe['overlap']`.
    """
    splits = (split,) if name != "vqa_rad" or split == "train" else ("train", split)
    extra = {"image_dir": extract_dir} if name == "pathvqa" and extract_dir else {}
    bench = load_benchmark(name, root, splits=splits, **extra)
    items = bench.split(split)
    if not items:
        raise BenchmarkError(f"{name}: no {split!r} questions under {root}")
    describe = {"kind": "benchmark", "benchmark": name, "root": os.path.abspath(root), "split": split}
    if bench.overlap is not None:
        describe["overlap"] = bench.overlap.summary()

    def make(i: int) -> Query:
        item = items[i]
        image = model_input(read_image_file(item.image_path), image_size, family)
        reference = reference_record(item)
        info = {"stage": None, "domain": None, "dataset": item.dataset, "split": item.split,
                "image": os.path.relpath(item.image_path, os.path.abspath(root)), "question_type": item.question_type}
        return Query(item.id, benchmark_question(item.question, item.choices), image, reference, info)

    return Task(f"{name} {split}", [i.id for i in items], make, describe)


# ---------------------------------------------------------------------------------------------------------------
# One example's line.


def parse_output(text: str, box_form: str = "auto", image_size: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """The generated text's parts: `reasoning` (text before the last `Answer:`, without `Reasoning:`; "" when there
    is no `Answer:`), `answer` (what the VQA metrics score), `box` (the box the text commits to, normalized xyxy, or
    None), `box_form` (how it was read, "none" when absent) and `box_error` ("" when fine)."""
    reasoning, final = cot.split_reasoning_answer(text)
    parsed = grounding.parse_box(text, box_form, image_size)
    return {"reasoning": reasoning if final is not None else "", "answer": cot.extract_answer(text),
            "box": None if parsed.box is None else [round(v, 6) for v in parsed.box], "box_form": parsed.form,
            "box_error": parsed.error}


def question_scores(text: str, reference: Mapping[str, Any], box_form: str = "auto") -> dict[str, Any]:
    """The per-question numbers `medclm score` averages for this example (the same function computes both)."""
    ref = reference_from_record(dict(reference), str(reference.get("id")))
    # pylint: disable-next=protected-access
    item = score_lib._per_item(Prediction(ref.id, text), ref, box_form)
    return {k: v for k, v in item.items() if k not in ("ref", "report", "empty")}


def prediction_line(query: Query, text: Optional[str], error: Optional[str] = None,
                    box_form: str = "auto") -> dict[str, Any]:
    """The predictions.jsonl object of one example (module docstring); `text` None = not generated (`error`)."""
    text = text or ""
    line = {"id": query.id, "question": query.question, "prediction": text,
            **parse_output(text, box_form, query.reference.get("image_size")), **query.info,
            "reference": query.reference, "scores": question_scores(text, query.reference, box_form)}
    if error:
        line["error"] = error
    return line


# ---------------------------------------------------------------------------------------------------------------
# The output folder.


def _json_roundtrip(x: Any) -> Any:
    return json.loads(json.dumps(x))


def prepare_out_dir(out_dir: str, identity: Mapping[str, Any], overwrite: bool = False) -> bool:
    """Makes `out_dir` ready for this evaluation and writes run.json; returns True when it continues an earlier
    run of the same settings.

    Raises:
      EvalError: `out_dir` is a file, a folder holding other files, or an evaluation with other settings (without
        `overwrite`, which removes only the files an evaluation writes).
    """
    entries = claim_out_dir(out_dir)
    foreign = [e for e in entries if e not in OUR_FILES + (EXTRACTED,)]
    identity = _json_roundtrip(dict(identity))
    resumed = False
    if RUN in entries:
        try:
            with open(os.path.join(out_dir, RUN), encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{os.path.join(out_dir, RUN)}: unreadable ({e}); pass --overwrite to start over") \
                from None
        if overwrite:
            for name in OUR_FILES:
                if os.path.exists(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
            log.info("%s: removed the earlier evaluation's files (--overwrite)", out_dir)
        elif saved != identity:
            diff = _differences(saved, identity)
            raise EvalError(f"--out {out_dir}: holds an evaluation with other settings ({'; '.join(diff[:4])}); "
                            "pass --overwrite to start over, or choose another --out")
        else:
            resumed = True
    if foreign:
        log.info("%s: leaving %s alone", out_dir, ", ".join(foreign))
    _write_json(os.path.join(out_dir, RUN), identity)
    return resumed


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"]


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_predictions(path: str, known_ids: Optional[set] = None) -> dict[str, dict[str, Any]]:
    """The lines of an evaluation's predictions.jsonl by id; a last line cut by an interruption is removed from
    the file first (with a warning).

    Raises:
      EvalError: a line that is not one of ours, a duplicate id, or an id not in `known_ids`.
    """
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: the last line was cut by an interruption (%d bytes); removing it, its batch is generated "
                    "again", path, len(data) - cut)
        os.truncate(path, cut)
        data = data[:cut]
    entries: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{n}: not JSON ({e.msg}); the file was changed by something else: pass "
                            "--overwrite to start over") from None
        if not isinstance(rec, dict) or not {"id", "prediction", "reference"} <= set(rec):
            raise EvalError(f"{path}:{n}: not a line of `medclm eval` (needs id, prediction, reference); pass "
                            "--overwrite to start over")
        if known_ids is not None and rec["id"] not in known_ids:
            raise EvalError(f"{path}:{n}: id {rec['id']!r} is not an example of this evaluation; pass --overwrite "
                            "to start over, or choose another --out")
        if rec["id"] in entries:
            raise EvalError(f"{path}:{n}: id {rec['id']!r} appears twice; pass --overwrite to start over")
        entries[rec["id"]] = rec
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Several processes.


def _broadcast(mask: np.ndarray) -> np.ndarray:
    """Process 0's `mask` on every process."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return np.asarray(multihost_utils.broadcast_one_to_all(mask))


def _gather(items: list) -> list:
    """Every process's JSON-able `items`, concatenated in process order (on every process)."""
    if jax.process_count() == 1:
        return items
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    raw = json.dumps(items).encode()
    size = int(np.max(multihost_utils.process_allgather(np.array([len(raw)], np.int64))))
    parts = multihost_utils.process_allgather(np.frombuffer(raw.ljust(size), np.uint8))
    return [x for part in np.asarray(parts) for x in json.loads(bytes(part).decode())]


# ---------------------------------------------------------------------------------------------------------------
# The evaluation.


def claim_out_dir(out_dir: str) -> list[str]:
    """Creates `out_dir` or accepts it if it is empty or holds an evaluation of ours (its `run.json`); returns its
    entries. Called before anything is written there (a benchmark's extracted images included).

    Raises:
      EvalError: `out_dir` is a file, or a folder holding other files.
    """
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise EvalError(f"--out {out_dir}: is a file; choose a folder")
    os.makedirs(out_dir, exist_ok=True)
    entries = sorted(os.listdir(out_dir))
    if [e for e in entries if e != EXTRACTED] and RUN not in entries:
        raise EvalError(f"--out {out_dir}: the folder is not empty and holds no {RUN} ({', '.join(entries[:3])}"
                        f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder")
    return entries


def evaluate(task: Task, generator: Generator, out_dir: str, *, limit: Optional[int] = None, on_error: str = "raise",
             box_form: str = "auto", overwrite: bool = False, progress: bool = False) -> EvalResult:
    """Generates the missing predictions of `task`'s first `limit` examples (all by default) into `out_dir`, then
    scores every one of them (module docstring).

    Raises:
      EvalError: `out_dir` does not fit (`prepare_out_dir`, `read_predictions`).
      RecordError: an example that cannot be built, with `on_error="raise"`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit}: must be >= 0")
    lead = jax.process_index() == 0
    pred_path = os.path.join(out_dir, PREDICTIONS)
    identity = {"task": task.describe, "generation": generator.describe()}
    done: dict[str, dict] = {}
    if lead:
        resumed = prepare_out_dir(out_dir, identity, overwrite)
        done = read_predictions(pred_path, set(task.ids))
        if resumed and done:
            log.info("%s: %d predictions already there; generating the rest", pred_path, len(done))
    n = len(task.ids) if limit is None else min(limit, len(task.ids))
    g, b_local, p = generator.batch_size, generator.local_batch, jax.process_index()
    batches = math.ceil(n / g)
    mask = np.array([any(task.ids[j] not in done for j in range(b * g, min(n, (b + 1) * g)))
                     for b in range(batches)], bool)
    pending = np.flatnonzero(_broadcast(mask)).tolist()
    skipped: collections.Counter = collections.Counter()

    def build(b: int) -> list[Optional[tuple[Optional[Query], Optional[dict], Optional[str]]]]:
        """This process's slots of batch b: (query, row, error); None past the end."""
        slots: list = []
        for j in range(b * g + p * b_local, b * g + (p + 1) * b_local):
            if j >= n:
                slots.append(None)
                continue
            try:
                query = task.make(j)
            except RecordError as e:
                if on_error == "raise":
                    raise
                skipped[e.reason] += 1
                log.warning("skipping %s: %s", task.ids[j], e)
                slots.append(None)
                continue
            try:
                slots.append((query, generator.prompt_row(query.question, query.image, where=query.id), None))
            except prompts.TooLong as e:
                slots.append((query, None, e.reason))
        return slots

    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    start, generated = time.perf_counter(), 0
    bar = tqdm(total=n, initial=n - sum(min(n, (b + 1) * g) - b * g for b in pending), unit="ex", desc="eval",
               disable=not (progress and lead), file=sys.stderr)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, open(pred_path, "a", encoding="utf-8") as out:
            future = pool.submit(build, pending[0]) if pending else None
            for k, b in enumerate(pending):
                slots = future.result()
                if k + 1 < len(pending):
                    future = pool.submit(build, pending[k + 1])  # reads the next batch while this one decodes
                texts = generator.generate([s[1] if s else None for s in slots], step=b)
                lines = [prediction_line(s[0], t, s[2], box_form) for s, t in zip(slots, texts) if s is not None]
                lines = _gather(lines)
                if lead:
                    new = [line for line in lines if line["id"] not in done]
                    out.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in new))
                    out.flush()
                    os.fsync(out.fileno())
                    done.update((line["id"], line) for line in new)
                    generated += len(new)
                bar.update(min(n, (b + 1) * g) - b * g)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    n_skipped = sum(_gather([sum(skipped.values())]))
    if not lead:
        return EvalResult(out_dir, None, {})

    # ------------------------------------------------------------------------- the complete file, scored
    order = {i: k for k, i in enumerate(task.ids)}
    entries = sorted(done.values(), key=lambda e: order[e["id"]])
    if [e["id"] for e in entries] != list(done):  # `done` is in file order
        _rewrite_jsonl(pred_path, entries)
    scored = [e for e in entries if order[e["id"]] < n]
    refs = [reference_from_record(e["reference"], f"{pred_path} id {e['id']}") for e in scored]
    metrics = score_lib.score([Prediction(e["id"], e["prediction"]) for e in scored], refs, box_form=box_form)
    # Every line's reference, so `medclm score` pairs the two files even when `limit` scores fewer than they hold.
    _rewrite_jsonl(os.path.join(out_dir, REFERENCES), [e["reference"] for e in entries])
    errors = collections.Counter(e["error"] for e in scored if e.get("error"))
    run = {**_json_roundtrip(identity), "name": task.name, "n_examples": n, "n_total": len(task.ids),
           "limit": limit, "n_scored": len(scored), "n_skipped": n_skipped, "skipped": dict(skipped),
           "not_generated": dict(errors), "generated_now": generated, "seconds": round(seconds, 3),
           "examples_per_second": round(generated / seconds, 3) if generated and seconds > 0 else None,
           "batch_size": g, "devices": jax.device_count(), "box_form": box_form}
    _write_json(os.path.join(out_dir, METRICS), {"run": run, "metrics": metrics})
    html_report.write_report(os.path.join(out_dir, REPORT), {"run": run, "metrics": metrics}, scored)
    return EvalResult(out_dir, metrics, run)


def _rewrite_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, path)
