"""The batch contract of the input pipeline: what one host's batch holds, `collate`, and `validate_batch`.

One dict of numpy arrays per host (B = per-host batch, S = the model's image side, T = `max_len`, fixed so the
train step compiles once):

  image       float32[B, S, S, 3]  pixels in [-1, 1]; Easy rows have the lesion box drawn (`views`).
  text        int32[B, T]          prompt + target ids, right-padded with the pad id (`prompts`).
  mask_ar     int32[B, T]          0 = fully visible prefix (image + prompt), 1 = causal; 1 on every target token.
  mask_input  int32[B, T]          1 = real token, 0 = padding (ones, then zeros).
  mask_loss   int32[B, T]          1 exactly on the target tokens; never on image placeholders or the prompt.
  span        int32[B, T]          0 none, 1 reasoning (`Reasoning: <cot>`), 2 answer (` Answer: <answer>` + the
                                   end token); `mask_loss == (span > 0)`; Hard rows have no 1.
  stage       int32[B]             0 easy, 1 medium, 2 hard (`views.STAGE_IDS`).
  domain      int32[B]             index of the record's `domain` in `views.domain_vocabulary(dataset_info)`.
  example_id  int32[B]             the pipeline's id of the record (its index in the split); -1 on padding rows.
                                   The host maps it back to `image/id` and the reference answer, which never
                                   travel with the batch.
  box         float32[B, 4]        ground-truth lesion box, normalized `[x1, y1, x2, y2]` (grounding metrics);
                                   zeros where `has_box` is 0.
  has_box     int32[B]             1 = the record has a box; 0 = a negative record (`no finding`) or padding.
  weight      float32[B]           1 = a real example, 0 = a padding row.

The first five are `model.vlm`'s contract (`vlm.validate_batch` accepts every batch `collate` makes).

Padding rows (a short last batch filled up to B): a copy of the first row with `weight` 0, `mask_loss` and `span`
0, `example_id` -1, `has_box` 0 and a zero box. Its tokens and image stay real, so the model sees a well-formed
row (Gemma 3's image placeholders are all there) and a loss that forgets `weight` still gets nothing from it.

Pure numpy (no jax): runs in Grain worker processes; `shard_batch` makes the global arrays on the devices.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medclm_jax.data.prompts import SPAN_ANSWER, SPAN_REASONING, Tokens
from medclm_jax.data.views import STAGE_IDS, View

# key -> (dtype, shape after the batch dimension; 'S' = image side, 'T' = text length)
SPEC: dict[str, tuple[type, tuple]] = {
    "image": (np.float32, ("S", "S", 3)),
    "text": (np.int32, ("T",)),
    "mask_ar": (np.int32, ("T",)),
    "mask_input": (np.int32, ("T",)),
    "mask_loss": (np.int32, ("T",)),
    "span": (np.int32, ("T",)),
    "stage": (np.int32, ()),
    "domain": (np.int32, ()),
    "example_id": (np.int32, ()),
    "box": (np.float32, (4,)),
    "has_box": (np.int32, ()),
    "weight": (np.float32, ()),
}
MODEL_KEYS = ("image", "text", "mask_ar", "mask_input", "mask_loss")  # what `model.vlm.VLM` reads


def example_row(view: View, tokens: Tokens) -> dict[str, np.ndarray]:
    """One example's arrays (the batch keys without the batch dimension)."""
    has_box = view.box is not None
    return {
        "image": np.asarray(view.image, np.float32),
        "text": tokens.text, "mask_ar": tokens.mask_ar, "mask_input": tokens.mask_input,
        "mask_loss": tokens.mask_loss, "span": tokens.span,
        "stage": np.int32(view.stage_id), "domain": np.int32(view.domain_id),
        "example_id": np.int32(view.example_id),
        "box": np.asarray(view.box if has_box else np.zeros(4), np.float32),
        "has_box": np.int32(has_box), "weight": np.float32(1.0),
    }


def collate(rows: Sequence[Mapping[str, np.ndarray]], batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Stacks `example_row`s into a batch of `batch_size` rows (default: as many as given), padding a short batch.

    Raises:
      ValueError: no rows, more rows than `batch_size`, or rows whose shapes disagree (named by key).
    """
    if not rows:
        raise ValueError("collate: no rows (a batch needs at least one real example to copy into its padding)")
    b = len(rows) if batch_size is None else batch_size
    if len(rows) > b:
        raise ValueError(f"collate: {len(rows)} rows for a batch of {b}")
    batch = {}
    for key, (dtype, _) in SPEC.items():
        try:
            batch[key] = np.stack([np.asarray(r[key], dtype) for r in rows])
        except KeyError:
            raise ValueError(f"collate: a row has no {key!r} (rows come from example_row)") from None
        except ValueError as e:
            shapes = sorted({np.shape(r[key]) for r in rows})
            raise ValueError(f"collate: rows disagree on the shape of {key!r}: {shapes}") from e
    n_pad = b - len(rows)
    if n_pad:
        pad = {k: np.repeat(v[:1], n_pad, axis=0) for k, v in batch.items()}
        for key in ("mask_loss", "span", "has_box", "box", "weight"):
            pad[key] = np.zeros_like(pad[key])
        pad["example_id"] = np.full_like(pad["example_id"], -1)
        batch = {k: np.concatenate([batch[k], pad[k]]) for k in batch}
    return batch


def _fail(key: str, message: str) -> None:
    raise ValueError(f"batch[{key!r}]: {message} (the contract: medclm_jax/data/batch.py)")


def _rows(mask: np.ndarray) -> str:
    return str(np.flatnonzero(mask)[:5].tolist())


def validate_batch(batch: Mapping[str, Any], *, image_size: int | None = None, max_len: int | None = None,
                   batch_size: int | None = None) -> None:
    """Host-side check of a batch against the contract above (run it on the first batch; jit cannot raise).

    Raises:
      ValueError: naming the key and what is wrong (missing/unknown key, dtype, shape, a value out of its range,
        or masks that contradict each other), with the first offending rows.
    """
    missing, unknown = sorted(set(SPEC) - set(batch)), sorted(set(batch) - set(SPEC))
    if missing or unknown:
        raise ValueError(f"batch: missing keys {missing}, unknown keys {unknown}; the contract has {list(SPEC)} "
                         f"(medclm_jax/data/batch.py)")
    b = np.shape(batch["weight"])[0] if np.ndim(batch["weight"]) else None
    t = np.shape(batch["text"])[-1] if np.ndim(batch["text"]) == 2 else None
    s = np.shape(batch["image"])[1] if np.ndim(batch["image"]) == 4 else None
    dims = {"S": image_size or s, "T": max_len or t}
    b = batch_size or b
    for key, (dtype, tail) in SPEC.items():
        value = batch[key]
        if not isinstance(value, np.ndarray):
            _fail(key, f"a {type(value).__name__}, expected a numpy array")
        if value.dtype != dtype:
            _fail(key, f"dtype {value.dtype}, expected {np.dtype(dtype).name}")
        want = (b, *(dims.get(d, d) for d in tail))
        if value.shape != want:
            _fail(key, f"shape {value.shape}, expected {want} (B, " + ", ".join(map(str, tail)) + ")")
    image = batch["image"]
    if not np.all(np.isfinite(image)) or image.min(initial=0) < -1 or image.max(initial=0) > 1:
        _fail("image", f"values in [{image.min():.3g}, {image.max():.3g}], expected finite values in [-1, 1]")
    for key in ("mask_ar", "mask_input", "mask_loss", "has_box"):
        bad = ~np.isin(batch[key], (0, 1))
        if bad.any():
            _fail(key, f"values other than 0/1 in rows {_rows(bad.reshape(b, -1).any(-1))}")
    if not np.isin(batch["weight"], (0.0, 1.0)).all():
        _fail("weight", "values other than 0/1")
    span, loss, inp, ar = (batch[k] for k in ("span", "mask_loss", "mask_input", "mask_ar"))
    if not np.isin(span, (0, SPAN_REASONING, SPAN_ANSWER)).all():
        _fail("span", "values other than 0 (none), 1 (reasoning), 2 (answer)")
    if (bad := ((span > 0) != (loss == 1)).any(-1)).any():
        _fail("span", f"not equal to mask_loss > 0 in rows {_rows(bad)}")
    if (bad := ((loss == 1) & (inp == 0)).any(-1)).any():
        _fail("mask_loss", f"on padding tokens in rows {_rows(bad)}")
    if (bad := ((loss == 1) & (ar == 0)).any(-1)).any():
        _fail("mask_ar", f"0 (prefix) on target tokens in rows {_rows(bad)}; targets are causal")
    if (bad := (np.diff(inp, axis=-1) > 0).any(-1)).any():
        _fail("mask_input", f"not right-padded (a 0 before a 1) in rows {_rows(bad)}")
    if not np.isin(batch["stage"], list(STAGE_IDS.values())).all():
        _fail("stage", f"values outside {list(STAGE_IDS.values())} ({STAGE_IDS})")
    if (batch["domain"] < 0).any():
        _fail("domain", "negative ids")
    real = batch["weight"] == 1
    if (bad := real & ~(span == SPAN_ANSWER).any(-1)).any():
        _fail("span", f"no answer token in real rows {_rows(bad)}")
    if (bad := real & (batch["stage"] == STAGE_IDS["hard"]) & (span == SPAN_REASONING).any(-1)).any():
        _fail("span", f"reasoning tokens in Hard rows {_rows(bad)}; Hard targets are answer-only")
    if (bad := ~real & ((loss != 0).any(-1) | (batch["example_id"] != -1))).any():
        _fail("weight", f"padding rows {_rows(bad)} must have mask_loss 0 and example_id -1")
    box, has = batch["box"], batch["has_box"] == 1
    ok = np.isfinite(box).all(-1) & (box >= 0).all(-1) & (box <= 1).all(-1) & (box[:, 0] < box[:, 2]) & (
        box[:, 1] < box[:, 3])
    if (bad := has & ~ok).any():
        _fail("box", f"not normalized xyxy in [0, 1] with x1 < x2, y1 < y2 in rows {_rows(bad)}")
    if (bad := ~has & (box != 0).any(-1)).any():
        _fail("box", f"non-zero where has_box is 0 in rows {_rows(bad)}")
