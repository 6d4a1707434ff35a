"""The host side of the train metrics: read one step late, checked, summarized per window, written as JSONL.

The train step returns device arrays (`train.step`'s metrics). The trainer fetches step s's metrics after it has
dispatched step s + 1, so the host waits only for a step the devices have already finished while the next one
runs. What happens then (`check_finite`, the scheduler's update from `curriculum_inputs`, `Window.add`) is plain
numpy here.

A log line (`WORKDIR/metrics.jsonl`, one JSON object per line, written by process 0):
  train  {"kind": "train", "step": N, "loss", "ans", "cot", "z_loss"  (means over the window's steps),
          "loss/{stage}", "ans/{stage}", "cot/{stage}", "loss/{domain}/{stage}" (per-example means over the
          window), "mix/{stage}" (share of the window's examples), "examples", "lr", "grad_norm" (last step),
          "steps_per_s", "examples_per_s", "tokens_per_s", "mfu" (`train.mfu`; absent when the chip's peak is
          unknown), "curriculum/..." (`curriculum.summary`)}
  eval   {"kind": "eval", "step": N, "eval/loss", "eval/loss/{stage}", "eval/ans/{stage}", "eval/cot/{stage}",
          "eval/loss/{domain}/{stage}", "eval/examples"}
  samples {"kind": "samples", "step": N, "examples": [...]}  (`train.samples`: a few greedy-decoded validation
          examples, with each evaluation)
The same train and eval scalars go to TensorBoard event files (`train.tensorboard_log`).
`step` N counts the training steps done when the line's metrics were made (a train line ends with the step of
index N - 1; a checkpoint of step N continues with it).
Floats are the float32 values as Python floats, so a line read back holds the device's exact numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from medclm_jax.records.schema import STAGES

SCALARS = ("loss", "ans", "cot", "z_loss", "examples", "tokens", "grad_norm", "lr")
SUMS = ("sum_loss", "sum_ans", "sum_cot", "count")


class NonFiniteLoss(RuntimeError):
    """A training step produced a non-finite loss or gradient; the message names the step and the examples."""


class Pending:
    """One step's metrics, still on the devices until `host()` fetches them, with this process's example ids.

    Attributes:
      index: the 0-based step that made them.
      example_ids: int[B_local] this process's rows (`example_id`, -1 = padding).
    """

    def __init__(self, index: int, metrics: Mapping[str, Any], example_ids: np.ndarray):
        self.index, self.example_ids = int(index), np.asarray(example_ids)
        self._device, self._host = metrics, None

    def host(self) -> dict[str, np.ndarray]:
        if self._host is None:
            self._host, self._device = to_host(self._device), None
        return self._host

    def to_json(self) -> dict[str, Any]:
        """Exact (`to_json` of the metrics); saved with a checkpoint so a resumed run absorbs them in turn."""
        return {"index": self.index, "metrics": to_json(self.host()), "example_ids": self.example_ids.tolist()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Pending":
        out = cls(d["index"], {}, np.asarray(d["example_ids"], np.int32))
        out._host = from_json(d["metrics"])
        return out


def to_host(metrics: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Blocks until the step that made `metrics` is done; numpy copies (replicated arrays: every process)."""
    return {k: np.asarray(v) for k, v in jax.device_get(dict(metrics)).items()}


def to_json(host: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """JSON-able and exact (float32 -> Python float -> float32 is the identity)."""
    return {k: {"dtype": v.dtype.name, "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in host.items()}


def from_json(d: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v["data"], v["dtype"]).reshape(v["shape"]) for k, v in d.items()}


def check_finite(step: int, host: Mapping[str, np.ndarray], example_ids: np.ndarray, row_offset: int = 0) -> None:
    """Raises NonFiniteLoss naming the step and the example ids (record indices in the train split) of this
    process's rows whose loss is not finite (all its rows when only the total or the gradient is).

    Args:
      host: one step's metrics (`to_host`).
      example_ids: int[B_local], this process's `example_id`s (-1 = padding row).
      row_offset: the first global row of this process's batch.
    """
    loss, norm = float(host["loss"]), float(host["grad_norm"])
    rows = np.asarray(host["loss_example"])[row_offset:row_offset + len(example_ids)]
    bad = ~np.isfinite(rows)
    if np.isfinite(loss) and np.isfinite(norm) and not bad.any():
        return
    ids = np.asarray(example_ids)
    named = ids[bad] if bad.any() else ids[ids >= 0]
    raise NonFiniteLoss(
        f"step {step}: non-finite training loss (loss {loss}, gradient norm {norm}); "
        f"{'examples with a non-finite loss' if bad.any() else 'examples of the batch'} (record index in the "
        f"train split): {sorted(int(i) for i in named)}. Nothing from this step on was saved; the newest "
        "checkpoint before it is intact. Inspect those records (`medclm inspect-batch --start INDEX`), or lower "
        "optim.lr and resume")


def curriculum_inputs(host: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean per-example loss f64[D, 3], 0 where no example; count f64[D, 3]): `curriculum.update`'s input."""
    total, count = host["sum_loss"].astype(np.float64), host["count"].astype(np.float64)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), count


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def stage_table(prefix: str, sums: Mapping[str, np.ndarray], domains: Sequence[str]) -> dict[str, float]:
    """Per-example means by stage, and loss by (domain, stage), from [D, 3] sums; cells without examples left out.

    Keys: `{prefix}loss/{stage}`, `{prefix}ans/{stage}`, `{prefix}cot/{stage}` (not for Hard), and
    `{prefix}loss/{domain}/{stage}`.
    """
    out: dict[str, float] = {}
    count = sums["count"]
    for name in ("loss", "ans", "cot"):
        by_stage = _mean(sums[f"sum_{name}"].sum(0), count.sum(0))
        out.update({f"{prefix}{name}/{s}": float(by_stage[i]) for i, s in enumerate(STAGES)
                    if count[:, i].sum() and not (name == "cot" and s == "hard")})  # Hard targets have no CoT
    cells = _mean(sums["sum_loss"], count)
    for d, domain in enumerate(domains):
        out.update({f"{prefix}loss/{domain}/{s}": float(cells[d, i]) for i, s in enumerate(STAGES) if count[d, i]})
    return out


class Window:
    """The train metrics of the steps since the last log line."""

    def __init__(self):
        self.steps = self.timed_steps = 0
        self.scalars = {k: 0.0 for k in SCALARS}
        self.timed = {"examples": 0.0, "tokens": 0.0}
        self.sums: dict[str, np.ndarray] = {}
        self.last: dict[str, float] = {}

    def add(self, host: Mapping[str, np.ndarray], *, timed: bool = True) -> None:
        """`timed=False`: a step this process did not run (a checkpoint's pending step, absorbed after a resume):
        its metrics count, its work stays out of the window's rates."""
        self.steps += 1
        for k in SCALARS:
            self.scalars[k] += float(host[k])
        if timed:
            self.timed_steps += 1
            for k in self.timed:
                self.timed[k] += float(host[k])
        for k in SUMS:
            self.sums[k] = self.sums.get(k, 0.0) + host[k].astype(np.float64)
        self.last = {"lr": float(host["lr"]), "grad_norm": float(host["grad_norm"])}

    def summary(self, step: int, seconds: float, domains: Sequence[str]) -> dict[str, Any]:
        """The log line's train fields (module docstring); `seconds` is the window's wall time. The rates count the
        timed steps only, and are left out when there are none (a run resumed at its last step)."""
        n = max(self.steps, 1)
        out = {k: self.scalars[k] / n for k in ("loss", "ans", "cot", "z_loss")}  # one step: its exact values
        out = {"kind": "train", "step": int(step), **out, **self.last, "examples": self.scalars["examples"]}
        if self.timed_steps:
            rate = 1.0 / max(seconds, 1e-9)
            out.update(steps_per_s=self.timed_steps * rate, examples_per_s=self.timed["examples"] * rate,
                       tokens_per_s=self.timed["tokens"] * rate)
        if self.sums:
            per_stage = self.sums["count"].sum(0)
            out.update({f"mix/{s}": float(per_stage[i] / max(per_stage.sum(), 1e-9)) for i, s in enumerate(STAGES)})
            out.update(stage_table("", self.sums, domains))
        return out


class JsonlLog:
    """Appends JSON lines to `path` (only on process 0; elsewhere a no-op)."""

    def __init__(self, path: str, *, active: bool = True):
        self.path, self.active = path, active

    def truncate_from(self, step: int) -> None:
        """Drops what a run resumed at checkpoint `step` writes again: train lines of steps >= `step` (the
        checkpoint's pending step is logged after it) and eval and samples lines of steps > `step` (those of
        `step` itself were made before its checkpoint)."""
        if not self.active or not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            records = [(line, json.loads(line)) for line in f if line.strip()]
        kept = [line for line, r in records if r.get("step", -1) < step + (r.get("kind") in ("eval", "samples"))]
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record), allow_nan=True) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The log's records, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
