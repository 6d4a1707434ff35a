"""What a Grain worker runs: the slots of one step (or one validation batch) -> records -> views -> tokens -> one
host batch in `data/batch.py`'s contract.

    pre = Preprocess(tokenizer, ViewSettings(...), PromptSettings(...), domain_ids)
    TrainBatches(source, pre, board, window_steps=U)(step)   # the plan's slots of `step` (`data/plan.py`)
    ValBatches(source, pre, examples, batch_size=B)(b)       # local validation batch b

Each returns one element: {"step": int64, "batch": {key: array[B, ...]}, "counts": {name: n}, "errors": {reason:
first message}}. The batch always has B rows in slot order, so a dropped example never shrinks a batch or shifts
another example: its slot becomes a padding row. `batch` is the contract's except `image`, which travels as
uint8[B, S, S, 3] pixels (`to_pixels`; a quarter of float32's bytes through shared memory) and becomes float32 in
[-1, 1] where it is consumed (`from_pixels` on the host, or the same table on the devices): exactly the values
`images.to_model_range` gives, since the model's pixels are uint8 before that scaling.

Dropped examples, counted by reason in `counts` as `dropped:{reason}` (`prompts.outcome`'s names):
  - an unreadable record (CRC, truncation, undecodable, schema; `RecordSource.read` names shard and byte offset)
    and a record whose view fails (`bad_image`, `bad_box`, `empty_question`, `wrong_pool`, ...): raised with
    `on_error="raise"` (the message names the shard and the record's byte offset), dropped with `"skip"`;
  - an example that does not fit `max_len` (`prompts.TooLong`: `answer_truncated`, `prompt_too_long`,
    `no_room_for_reasoning`): always dropped, never trained on a cut answer; a config matter, not corruption.
Kept examples count `kept` and, where the reasoning was cut to fit, `reasoning_truncated`.

The padding row (`Preprocess.padding_row`): `weight` 0, `example_id` -1, `mask_loss` and `span` 0, no box, a black
image and the prompt of an empty question, so the row is well formed for the model (Gemma 3's image placeholders
are in it) and made from nothing but the settings: the same in every process, so batches stay a pure function of
the plan. Its `stage` and `domain` are the slot's (0 where unknown); with weight 0 they count nowhere.

Pure numpy + PIL (no jax): runs in Grain worker processes, which receive these objects pickled.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from medclm_jax.data import batch as batch_lib
from medclm_jax.data import images, prompts, views
from medclm_jax.data.plan import PlanBoard
from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError

Slot = tuple[int, int, int]  # (record index or -1 for padding, stage id, domain id)
PIXEL_VALUES = images.to_model_range(np.arange(256, dtype=np.uint8))  # float32[256]: uint8 pixel -> model value


def to_pixels(image: np.ndarray) -> np.ndarray:
    """float32 model image in [-1, 1] (from `images.to_model_range`) -> its uint8 pixels, exactly.

    (x + 1) * 127.5 is within 1e-4 of the pixel k, so truncating (x * 127.5 + 128) gives k (two passes, in place).
    """
    x = np.multiply(image, np.float32(127.5), dtype=np.float32)
    x += np.float32(128.0)
    return x.astype(np.uint8)


def from_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]: `images.to_model_range` itself (the devices use `PIXEL_VALUES`)."""
    return images.to_model_range(pixels)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Record + stage -> one row of the batch: `views.make_view`, then `prompts.encode`.

    Attributes:
      tokenizer: `model.tokenizer.Tokenizer` (pickled to the workers).
      view: image size, resize family, loc-token rendering.
      prompt: the sequence layout and `max_len`.
      domain_ids: `views.domain_vocabulary(dataset_info)`.
    """

    tokenizer: Any
    view: views.ViewSettings
    prompt: prompts.PromptSettings
    domain_ids: Mapping[str, int]

    def row(self, record: Mapping[str, Any], stage: str, example_id: int, *, check_pool: bool = True,
            where: str = "") -> tuple[dict[str, np.ndarray], prompts.Tokens]:
        """One example's arrays. Raises RecordError (view) or prompts.TooLong (does not fit `max_len`)."""
        view = views.make_view(record, stage, self.view, domain_ids=self.domain_ids, example_id=example_id,
                               check_pool=check_pool, where=where)
        tokens = prompts.encode(self.tokenizer, self.prompt, view.question, view.target, where=where)
        return batch_lib.example_row(view, tokens), tokens

    def padding_row(self, stage_id: int = 0, domain_id: int = 0) -> dict[str, np.ndarray]:
        """The row that stands in for a dropped example or fills a short batch (module docstring)."""
        tokens = prompts.encode_prompt(self.tokenizer, self.prompt, "")
        s, zeros = self.view.image_size, np.zeros(self.prompt.max_len, np.int32)
        return {"image": np.full((s, s, 3), -1.0, np.float32), "text": tokens.text, "mask_ar": tokens.mask_ar,
                "mask_input": tokens.mask_input, "mask_loss": zeros, "span": zeros, "stage": np.int32(stage_id),
                "domain": np.int32(domain_id), "example_id": np.int32(-1), "box": np.zeros(4, np.float32),
                "has_box": np.int32(0), "weight": np.float32(0.0)}


def _where(source: Any, index: int) -> str:
    path, offset, _ = source.locate(index)
    return f"{os.path.basename(path)} record {index} of split {source.split!r} (frame at byte offset {offset})"


def assemble(source: Any, pre: Preprocess, slots: Sequence[Slot], *, check_pool: bool, on_error: str,
             step: int) -> dict[str, Any]:
    """The element for `slots` (module docstring); records wanted by several slots are read once."""
    counts: collections.Counter = collections.Counter()
    errors: dict[str, str] = {}
    records: dict[int, Any] = {}
    rows = []
    pad: Optional[dict[str, np.ndarray]] = None
    for index, stage_id, domain_id in slots:
        row = None
        if index >= 0:
            try:
                if index not in records:
                    try:
                        records[index] = source.read(index)
                    except RecordError as e:
                        records[index] = e
                if isinstance(records[index], RecordError):
                    raise records[index]
                row, tokens = pre.row(records[index], schema.STAGES[stage_id], index, check_pool=check_pool,
                                      where=_where(source, index))
                counts.update(prompts.outcome(tokens))
            except RecordError as e:
                if on_error == "raise" and not isinstance(e, prompts.TooLong):
                    raise
                counts.update(prompts.outcome(error=e))
                errors.setdefault(e.reason, str(e))
        if row is None:
            if pad is None:
                pad = pre.padding_row()
            row = dict(pad, stage=np.int32(stage_id), domain=np.int32(max(domain_id, 0)))
            counts["padding"] += 1
        rows.append(row)
    counts["examples"] += len(slots)
    batch = {key: np.stack([np.asarray(r[key], dtype) for r in rows])
             for key, (dtype, _) in batch_lib.SPEC.items() if key != "image"}
    batch["image"] = np.stack([to_pixels(r["image"]) for r in rows])
    return {"step": np.int64(step), "batch": batch, "counts": dict(counts), "errors": errors}


class TrainBatches:
    """Step -> the element of its planned slots (the map function of the training stream; picklable).

    Args:
      source: the train split's `RecordSource`.
      pre: `Preprocess`.
      board: where the main process publishes window plans (`plan.PlanBoard`).
      window_steps: U, steps per window (`curriculum.update_every`).
      on_error: 'raise' | 'skip' (module docstring).
    """

    def __init__(self, source: Any, pre: Preprocess, board: PlanBoard, *, window_steps: int, on_error: str):
        self.source, self.pre, self.board = source, pre, board
        self.window_steps, self.on_error = window_steps, on_error

    def __call__(self, step: int) -> dict[str, Any]:
        step = int(step)
        slots = self.board.get(step // self.window_steps).slots(step)
        return assemble(self.source, self.pre, slots, check_pool=True, on_error=self.on_error, step=step)


def validation_examples(num_records: int, stages: str, pools: Optional[np.ndarray] = None) -> np.ndarray:
    """int64[E, 2] (record, stage id) pairs of a validation pass, record-major (a record's views are adjacent,
    so it is read once).

    Args:
      num_records: records in the split.
      stages: 'all' = every record in the three stages; 'pool' = each record in the stages its pool trains
        (Easy and Medium for `easy_medium`, Hard for `hard`), needs `pools`.
      pools: int8[N] pool ids (`Catalog.pool`; -1 = unusable, left out) for `stages='pool'`.
    """
    if stages == "all":
        records = np.repeat(np.arange(num_records, dtype=np.int64), len(schema.STAGES))
        return np.stack([records, np.tile(np.arange(len(schema.STAGES)), num_records)], axis=1)
    if stages != "pool":
        raise ValueError(f"validation stages {stages!r}: expected 'all' or 'pool'")
    if pools is None:
        raise ValueError("validation stages 'pool' needs the split's catalog (its pools)")
    pairs = [(i, views.STAGE_IDS[s]) for i, p in enumerate(pools.tolist()) if p >= 0
             for s in schema.POOL_STAGES[schema.POOLS[p]]]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


class ValBatches:
    """Local validation batch b -> its element (picklable).

    Global batch b holds examples [b G, (b + 1) G) of `examples` (G = B x process_count); process p takes rows
    [p B, (p + 1) B) of it. Every process has the same number of batches (`len`), the last ones padded, so a
    collective eval step runs in lockstep; each example is in exactly one process's batch once.
    """

    def __init__(self, source: Any, pre: Preprocess, examples: np.ndarray, *, batch_size: int, process_index: int,
                 process_count: int, check_pool: bool, on_error: str):
        self.source, self.pre, self.examples = source, pre, np.asarray(examples, np.int64)
        self.batch_size, self.process_index, self.process_count = batch_size, process_index, process_count
        self.check_pool, self.on_error = check_pool, on_error

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / (self.batch_size * self.process_count))

    def slots(self, b: int) -> list[Slot]:
        start = b * self.batch_size * self.process_count + self.process_index * self.batch_size
        part = self.examples[start:start + self.batch_size].tolist()
        return [(int(i), int(s), 0) for i, s in part] + [(-1, 0, 0)] * (self.batch_size - len(part))

    def __call__(self, b: int) -> dict[str, Any]:
        return assemble(self.source, self.pre, self.slots(int(b)), check_pool=self.check_pool,
                        on_error=self.on_error, step=int(b))
