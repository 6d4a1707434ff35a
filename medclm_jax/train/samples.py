"""A few validation examples answered by the model being trained, greedy, at every evaluation: what it writes.

    samples = ValSamples(config, model_cfg, pre, mesh)         # reads the examples (process 0)
    record = samples(state.params, step)                       # a `samples` log line; also logged in short

The examples are fixed for the run: the first `eval_samples` records of the validation split, record k in stage
k mod 3 (Easy, Medium, Hard in turn), each as `medclm eval` asks it (`eval.run.record_task`: the stage's view, the
Easy image with its box drawn). The prompt is the training layout (`pre.prompt`: the tokenizer and prompt format
the model trains on, `data.max_len` tokens), the answer is decoded greedily with the KV-cache decoder
(`eval.generate.Generator`, `eval_sample_tokens` new tokens at most) and read by the evaluation's own parsers
(`eval.run.parse_output`: `cot.extract_answer`, `grounding.parse_box`); the IoU is `grounding.question_scores`'s
(0 for a missing or malformed box) when the reference has a box, else None.

Cost: one generate call of the smallest batch that divides over the mesh (`generate.batch_unit`) and gives
process 0 `eval_samples` rows (the other rows are padding), compiled at the first evaluation and reused after
(same shapes, same shardings). Process 0 asks all the examples; the others pass padding rows, as every process
must take part. An example that cannot be asked (an unreadable record, a prompt longer than `data.max_len`) is
left out with a warning.

The log line (`metrics.jsonl`, process 0):
  {"kind": "samples", "step": N, "examples": [{"example_id" (record index in the split), "stage", "question",
   "generated" (the decoded text), "answer", "reference_answer", "box" (normalized xyxy or null), "reference_box",
   "iou"}]}
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import ml_collections

from medclm_jax.data.assemble import Preprocess
from medclm_jax.eval import grounding
from medclm_jax.eval.generate import GenerateOptions, Generator, batch_unit
from medclm_jax.eval.run import Query, parse_output, record_task
from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError

log = logging.getLogger(__name__)


def pick(num_ids: int, n: int) -> list[int]:
    """Indices into `record_task`'s ids (record-major, the three stages of a record adjacent): record k in stage
    k mod 3, for the first n records there are."""
    stages = len(schema.STAGES)
    return [stages * k + k % stages for k in range(min(n, num_ids // stages))]


class ValSamples:
    """The run's sample examples and the generator that answers them (module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, model_cfg: Any, pre: Preprocess, mesh: jax.sharding.Mesh):
        n = int(config.eval_samples)
        unit = batch_unit(mesh)
        options = GenerateOptions(batch_size=unit * math.ceil(n * jax.process_count() / unit),  # process 0's local
                                  max_new_tokens=int(config.eval_sample_tokens))                # rows hold them all
        self.generator = Generator(model_cfg, None, pre.tokenizer, pre.prompt, mesh, options)
        self.queries: list[Query] = []
        self.rows: list[dict] = []
        if jax.process_index() == 0:
            task = record_task(config.data.dir, config.data.val_split, model_cfg.vision.image_size, model_cfg.family,
                               on_error=config.data.on_error)
            for i in pick(len(task.ids), n):
                try:
                    query = task.make(i)
                    row = self.generator.prompt_row(query.question, query.image, where=query.id)
                except RecordError as e:  # an unreadable record, or a prompt longer than data.max_len
                    log.warning("sample %s left out: %s", task.ids[i], e)
                    continue
                self.queries.append(query)
                self.rows.append(row)

    def __call__(self, params: Any, step: int) -> dict[str, Any]:
        """The `samples` log line of the model `params` after `step` steps (every process must call it)."""
        self.generator.params = {"params": params}
        try:
            texts = self.generator.generate(self.rows)
        finally:
            self.generator.params = None  # the train step donates these buffers next
        examples = [example_line(q, t) for q, t in zip(self.queries, texts)]
        for e in examples:
            log.info("sample after step %d, %s #%d: %r -> answer %r (reference %r)%s", step, e["stage"],
                     e["example_id"], _short(e["question"]), _short(e["answer"]), _short(e["reference_answer"]),
                     "" if e["iou"] is None else f", IoU {e['iou']:.2f}")
        return {"kind": "samples", "step": int(step), "examples": examples}


def example_line(query: Query, text: str) -> dict[str, Any]:
    """One example of the log line: the generated text parsed as `medclm eval` parses it, scored against the
    reference."""
    ref = query.reference
    parsed = parse_output(text, "auto", ref.get("image_size"))
    iou = None
    if ref.get("box") is not None:
        iou = grounding.question_scores(text, ref["box"], "auto", ref.get("image_size"))["iou"]
    return {"example_id": int(query.info["record"]), "stage": query.info["stage"], "question": query.question,
            "generated": text, "answer": parsed["answer"], "reference_answer": ref["answer"], "box": parsed["box"],
            "reference_box": ref.get("box"), "iou": iou}


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
