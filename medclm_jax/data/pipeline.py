"""The training and validation input streams: records -> curriculum-mixed, tokenized batches -> global jax.Arrays.

    catalog = catalog_for(source, domains, cache=workdir + "/catalog-train.npz")
    cstate = curriculum.init(ccfg, catalog.records(), domains=domains)
    stream = TrainStream(source, catalog, pre, ccfg, cstate, InputOptions(batch_size=32), mesh=mesh)
    for step in ...:
        batch = next(stream)                   # DeviceBatch: .arrays (global jax.Arrays), .host (numpy), .step
        ...                                    # train; cstate = curriculum.update(...)
        stream.set_curriculum(cstate)          # read at the next window's planning
    save(stream.get_state(), cstate.to_json())   # restore: TrainStream(..., cstate); stream.set_state(saved)

Training stream, per process (`jax.process_index()` p of P, local batch B = global batch / P):
  1. plan (main process, `data/plan.py`): window w = steps [w U, (w + 1) U), U = `curriculum.update_every`. The
     scheduler state is read once per window (the snapshot) and the window's slots are drawn from it: per step the
     scheduler's probabilities, `curriculum.draw` for (domain, stage), then the next record of that (domain, pool)'s
     seeded per-epoch permutation, this process's positions of it (the per-process slice).
  2. make (Grain: `MapDataset.range(start, ...)` of steps -> `.map(TrainBatches)` -> `.to_iter_dataset` ->
     `.mp_prefetch` when `workers` > 0): read, view, tokenize, collate one step's B rows (`data/assemble.py`).
     One Grain element is one step's local batch, so batches do not depend on the number of workers.
  3. global arrays: `jax.make_array_from_process_local_data` on the mesh's batch sharding (`sharding.shard_batch`:
     the `batch` rule's axes, `data` and `fsdp`); `example_id` stays on the host. Images travel as uint8 (workers
     to this process, host to devices) and are scaled to [-1, 1] on the devices, bit for bit the host's values.
Workers are started once (spawned: seconds each) and live as long as the iterator, so they cannot see scheduler
updates; plans reach them through a `PlanBoard` (files in /dev/shm). The plan of window w + `plan_ahead` is made
at the first step of window w, so workers never wait at a window boundary; the mix of window w is therefore read
from the scheduler state set before step (w - plan_ahead) U: staleness below (plan_ahead + 1) U steps, bounded by
config (`plan_ahead=0`: the state set before the window's first step; workers then idle at each window start).

Determinism and checkpoints: the batches are a pure function of (seed, step, scheduler snapshots), whatever the
number of workers or threads. `get_state()` (a JSON-able dict) holds the next step, the draw counters at the start
of its window and the snapshots of the windows already planned; `set_state` rebuilds those plans and restarts
Grain at that step, so a restored run continues with the identical batches (Grain's own iterator state is not
needed: the dataset is a range of steps). The trainer must call `set_curriculum` at the same points in both runs.

Dropped examples never change the batch composition: a slot whose example fails becomes a padding row (weight 0),
counted by reason in `stats()` and in each batch's `counts`; records the catalog could not use are never planned
(`stats()['unusable:...']`).

Validation (`ValStream`): every record of the split in all three stages (`stages='all'`, the default; `'pool'`:
the stages its pool trains), record-major and unshuffled, in fixed batches with padding rows at the end, sliced
per process so each example is in exactly one process's batch once and every process runs the same number of
batches. 'all' by default because evaluation wants the three stages on the same images (the effect of the box
and of the reasoning, domain by domain) and Hard on every image (the task the model is deployed for).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from medclm_jax.data import assemble, plan
from medclm_jax.data.assemble import Preprocess, TrainBatches, ValBatches
from medclm_jax.data.plan import Catalog, PlanBoard, Planner
from medclm_jax.model import sharding
from medclm_jax.train import curriculum

log = logging.getLogger(__name__)

HOST_KEYS = ("example_id",)  # batch keys that stay numpy on the host; the rest become global arrays
STATE_FORMAT = "medclm-train-stream"
_UNBOUNDED = 2 ** 40  # steps in the training range (Grain needs a length)
_MIN_SHM_BYTES = 1 << 16


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How the streams run (the config's `input` section).

    Attributes:
      batch_size: the global batch; each of the P processes makes batch_size / P rows.
      seed: the stream's seed (draws and pool permutations).
      workers: Grain worker processes (`mp_prefetch`); 0 = batches are made in this process.
      threads: batches made concurrently per process (Grain `ReadOptions.num_threads`).
      buffer: batches buffered per process (`prefetch_buffer_size` and `per_worker_buffer_size`).
      plan_ahead: windows planned ahead of the one being consumed (the module docstring).
      on_error: 'raise' at a bad record (the message names shard and byte offset) or 'skip' it (counted).
    """

    batch_size: int
    seed: int = 0
    workers: int = 0
    threads: int = 1
    buffer: int = 2
    plan_ahead: int = 1
    on_error: str = "raise"

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 0 or self.threads < 0 or self.buffer < 1 or self.plan_ahead < 0:
            raise ValueError(f"InputOptions: need batch_size >= 1, workers/threads/plan_ahead >= 0, buffer >= 1; "
                             f"got {self}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"InputOptions.on_error={self.on_error!r}: expected 'raise' or 'skip'")

    def local_batch(self, process_count: int) -> int:
        if self.batch_size % process_count:
            raise ValueError(f"input.batch_size {self.batch_size} is not divisible by the {process_count} processes")
        return self.batch_size // process_count


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """One process's batch: `arrays` in `data/batch.py`'s contract, `counts` of its slots (`data/assemble.py`)."""

    step: int
    arrays: dict[str, np.ndarray]
    counts: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class DeviceBatch:
    """`arrays`: global jax.Arrays [global batch, ...] on the mesh's batch sharding; `host`: this process's rows of
    `HOST_KEYS` and of `stage`, `domain`, `weight` (for host-side logging), numpy."""

    step: int
    arrays: dict[str, jax.Array]
    host: dict[str, np.ndarray]
    counts: Mapping[str, int]


def host_batch(element: Mapping[str, Any]) -> HostBatch:
    """A Grain element as the contract's host batch (uint8 pixels -> float32 in [-1, 1])."""
    arrays = dict(element["batch"], image=assemble.from_pixels(element["batch"]["image"]))
    return HostBatch(int(element["step"]), arrays, element["counts"])


@functools.lru_cache(maxsize=8)
def _device_pixels(out: jax.sharding.Sharding):
    table = assemble.PIXEL_VALUES
    return jax.jit(lambda pixels: jnp.asarray(table)[pixels.astype(jnp.int32)], out_shardings=out)


def device_batch(element: Mapping[str, Any], mesh: jax.sharding.Mesh,
                 rules: sharding.Rules = sharding.DEFAULT_RULES) -> DeviceBatch:
    """Global arrays from every process's local rows (`sharding.shard_batch`); the image crosses to the devices
    as uint8 and is scaled there (the host table, gathered: the same float32 values as `host_batch`)."""
    arrays = element["batch"]
    device = sharding.shard_batch({k: v for k, v in arrays.items() if k not in HOST_KEYS}, mesh, rules)
    device["image"] = _device_pixels(sharding.batch_sharding(mesh, rules))(device["image"])
    host = {k: arrays[k] for k in (*HOST_KEYS, "stage", "domain", "weight")}
    return DeviceBatch(int(element["step"]), device, host, element["counts"])


def _grain_ready() -> None:
    # Grain's worker processes read absl flags; outside an absl app they must be marked parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _iterate(ds: grain.MapDataset, options: InputOptions) -> grain.DatasetIterator:
    _grain_ready()
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=options.threads, prefetch_buffer_size=options.buffer))
    if options.workers:
        # Images go through shared memory; the small arrays (text, masks, ids) are cheaper pickled.
        it = grain.experimental.WithOptionsIterDataset(it, grain.experimental.DatasetOptions(
            min_shm_size=_MIN_SHM_BYTES))
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.workers,
                                                         per_worker_buffer_size=options.buffer))
    return iter(it)


class _Tally:
    """Counts over the batches handed out, and a warning at each reason's first drop."""

    def __init__(self, base: Mapping[str, int]):
        self.counts: collections.Counter = collections.Counter(base)

    def add(self, element: Mapping[str, Any]) -> None:
        for reason, message in element["errors"].items():
            if self.counts[f"dropped:{reason}"] == 0:
                log.warning("dropping examples (first of reason %r; replaced by weight-0 padding rows): %s",
                            reason, message)
        self.counts.update(element["counts"])


# ---------------------------------------------------------------------------------------------------------------
# The catalog, shared over hosts.


def catalog_for(source: Any, domains: Sequence[str], *, cache: Optional[str] = None, on_error: str = "raise",
                threads: int = 8) -> Catalog:
    """The split's catalog: read from `cache` when it describes this split, else scanned (and written there).

    With several processes each scans every P-th record and the parts are exchanged
    (`multihost_utils.process_allgather`), so the scan costs every host 1/P of the split.
    """
    p, n = jax.process_index(), jax.process_count()
    cached = Catalog.load(cache) if cache and os.path.isfile(cache) else None
    valid = cached is not None and cached.fingerprint == plan.fingerprint(source, domains)
    if n > 1:  # every host must take the same path: the scan below is collective
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        valid = bool(np.all(multihost_utils.process_allgather(np.array([valid]))))
    if valid:
        return cached
    if cached is not None:
        log.warning("catalog cache %s describes another split or vocabulary (or not on every host); scanning "
                    "again", cache)
    part = Catalog.scan(source, domains, indices=range(p, len(source), n), on_error=on_error, threads=threads)
    if n == 1:
        catalog = part
    else:
        domain = multihost_utils.process_allgather(part.domain)
        pool = multihost_utils.process_allgather(part.pool)
        raw = json.dumps(part.unusable).encode()
        size = int(np.max(multihost_utils.process_allgather(np.array([len(raw)], np.int64))))
        texts = multihost_utils.process_allgather(np.frombuffer(raw.ljust(size), np.uint8))
        parts = [Catalog(part.domains, np.asarray(domain[i]), np.asarray(pool[i]),
                         json.loads(bytes(texts[i]).decode().strip()), part.fingerprint) for i in range(n)]
        catalog = Catalog.merge(parts)
    if cache and p == 0:
        catalog.save(cache)
    return catalog


# ---------------------------------------------------------------------------------------------------------------
# Training.


class TrainStream:
    """The training stream of one process (module docstring). Iterating gives `DeviceBatch`es (needs `mesh`);
    `next_local()` gives the `HostBatch` without devices (inspection, benchmarks, tests).

    Args:
      source: the train split's `RecordSource` (its `on_error` applies at opening only; reads follow
        `options.on_error`).
      catalog: `catalog_for(source, domains)`.
      pre: `Preprocess` (tokenizer, view and prompt settings, domain ids).
      cfg: the curriculum config (`update_every` is the window).
      state: the scheduler state to plan the first windows with.
      options: `InputOptions`.
      mesh: the device mesh, for global arrays.
      process_index, process_count: default `jax.process_index()`, `jax.process_count()`.
      start_step: the first step (ignored after `set_state`).
    """

    def __init__(self, source: Any, catalog: Catalog, pre: Preprocess, cfg: curriculum.CurriculumConfig,
                 state: curriculum.CurriculumState, options: InputOptions, *, mesh: Optional[Any] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None, start_step: int = 0):
        self.source, self.catalog, self.pre, self.cfg, self.options, self.mesh = (
            source, catalog, pre, cfg, options, mesh)
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        self.batch_size = options.local_batch(self.process_count)
        self.window_steps = cfg.update_every
        self.planner = Planner(catalog, cfg, seed=options.seed, batch_size=self.batch_size,
                               process_index=self.process_index, process_count=self.process_count)
        self.planner.check(state)
        self._curriculum = state
        self._tally = _Tally({f"unusable:{k}": v for k, v in catalog.unusable.items()})
        self._it: Optional[grain.DatasetIterator] = None
        self._board: Optional[PlanBoard] = None
        self._reset(int(start_step), int(start_step) // self.window_steps, self.planner.zero_counts(), [])

    # -- the scheduler ------------------------------------------------------------------------------------------

    def set_curriculum(self, state: curriculum.CurriculumState) -> None:
        """The scheduler state the next window to be planned will use."""
        self.planner.check(state)
        self._curriculum = state

    # -- planning -----------------------------------------------------------------------------------------------
    # Pending windows: `_first_window` (the one of `_step`, or the one just finished) and the ones planned after
    # it; `_snapshots[i]` and `_ends[i]` are window `_first_window + i`'s scheduler snapshot and the draw counts
    # at its end; `_first_counts` the counts at the start of `_first_window`.

    def _reset(self, step: int, first_window: int, counts: np.ndarray,
               snapshots: Sequence[curriculum.CurriculumState]) -> None:
        """Starts over at `step` with the given pending windows (re-planned from `counts`)."""
        self.close()
        self._step, self._first_window = step, first_window
        self._first_counts = np.asarray(counts, np.int64)
        self._snapshots: list[curriculum.CurriculumState] = []
        self._ends: list[np.ndarray] = []
        self._board = PlanBoard(shared=self.options.workers > 0)
        for snapshot in snapshots:
            self._plan_next(snapshot)

    def _plan_next(self, snapshot: curriculum.CurriculumState) -> None:
        window = self._first_window + len(self._snapshots)
        planned, end = self.planner.plan(window, self._ends[-1] if self._ends else self._first_counts, snapshot)
        self._snapshots.append(snapshot)
        self._ends.append(end)
        self._board.publish(planned)

    def _advance(self) -> None:
        """Before step `_step`: forget the windows before its own; plan up to its window + plan_ahead."""
        window = self._step // self.window_steps
        while self._first_window < window and self._snapshots:
            self._first_counts = self._ends.pop(0)
            self._snapshots.pop(0)
            self._first_window += 1
        assert self._first_window == window or not self._snapshots, "a window was consumed before it was planned"
        self._first_window = window
        self._board.retire(window)
        while self._first_window + len(self._snapshots) <= window + self.options.plan_ahead:
            self._plan_next(self._curriculum)

    # -- iteration ----------------------------------------------------------------------------------------------

    def next_local(self) -> HostBatch:
        """This process's batch of the next step, numpy (the contract of `data/batch.py`)."""
        return host_batch(self._next_element())

    def _next_element(self) -> dict[str, Any]:
        self._advance()
        if self._it is None:
            fn = TrainBatches(self.source, self.pre, self._board, window_steps=self.window_steps,
                              on_error=self.options.on_error)
            self._it = _iterate(grain.MapDataset.range(self._step, self._step + _UNBOUNDED).map(fn), self.options)
        element = next(self._it)
        if int(element["step"]) != self._step:
            raise RuntimeError(f"the input pipeline returned step {int(element['step'])} for step {self._step}")
        self._tally.add(element)
        self._step += 1
        return element

    def __iter__(self) -> Iterator[DeviceBatch]:
        return self

    def __next__(self) -> DeviceBatch:
        if self.mesh is None:
            raise ValueError("TrainStream: global arrays need the mesh (TrainStream(..., mesh=mesh)); "
                             "next_local() gives the host batch")
        return device_batch(self._next_element(), self.mesh)

    @property
    def step(self) -> int:
        """The step of the next batch."""
        return self._step

    def stats(self) -> dict[str, int]:
        """Counts over the batches handed out: `examples`, `kept`, `padding`, `reasoning_truncated`, `dropped`,
        `dropped:{reason}`, and the catalog's `unusable:{reason}` (records never planned)."""
        return dict(self._tally.counts)

    # -- checkpoints --------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-able: what `set_state` needs to continue with the identical batches (save it with the checkpoint,
        per process)."""
        return {"format": STATE_FORMAT, "version": 1, "step": self._step, "seed": self.options.seed,
                "batch_size": self.batch_size, "process_index": self.process_index,
                "process_count": self.process_count, "window_steps": self.window_steps,
                "first_window": self._first_window, "counts": self._first_counts.tolist(),
                "snapshots": [s.to_json() for s in self._snapshots], "stats": self.stats()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a `get_state()` (of the same process, seed, batch and window)."""
        if state.get("format") != STATE_FORMAT or state.get("version") != 1:
            raise ValueError(f"not a version-1 {STATE_FORMAT} state: {state.get('format')!r} "
                             f"{state.get('version')!r}")
        want = {"seed": self.options.seed, "batch_size": self.batch_size, "process_index": self.process_index,
                "process_count": self.process_count, "window_steps": self.window_steps}
        diff = {k: (state.get(k), v) for k, v in want.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"the saved input state does not fit this stream: (saved, now) {diff}; restore with "
                             "the same input.seed, input.batch_size, curriculum.update_every and process count")
        snapshots = [curriculum.CurriculumState.from_json(s) for s in state["snapshots"]]
        for snapshot in snapshots:
            self.planner.check(snapshot)
        self._reset(int(state["step"]), int(state["first_window"]), np.asarray(state["counts"], np.int64),
                    snapshots)
        self._tally = _Tally(state.get("stats", {}))

    def close(self) -> None:
        """Stops the workers and removes the plans."""
        if getattr(self, "_board", None) is not None:
            self._board.close()
        if getattr(self, "_it", None) is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        self._it = None

    def __enter__(self) -> "TrainStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass


# ---------------------------------------------------------------------------------------------------------------
# Validation.


class ValStream:
    """Every example of a split, in fixed batches (module docstring). Iterating gives `DeviceBatch`es (with
    `mesh`) or `HostBatch`es (without); each pass starts its own Grain iterator (and workers)."""

    def __init__(self, source: Any, pre: Preprocess, options: InputOptions, *, stages: str = "all",
                 catalog: Optional[Catalog] = None, mesh: Optional[Any] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        self.options, self.mesh = options, mesh
        p = jax.process_index() if process_index is None else process_index
        n = jax.process_count() if process_count is None else process_count
        examples = assemble.validation_examples(len(source), stages, None if catalog is None else catalog.pool)
        self.fn = ValBatches(source, pre, examples, batch_size=options.local_batch(n), process_index=p,
                             process_count=n, check_pool=stages == "pool", on_error=options.on_error)
        self._tally = _Tally({})

    def __len__(self) -> int:
        return len(self.fn)

    def __iter__(self) -> Iterator[Any]:
        it = _iterate(grain.MapDataset.range(len(self.fn)).map(self.fn), self.options)
        try:
            for element in it:
                self._tally.add(element)
                yield host_batch(element) if self.mesh is None else device_batch(element, self.mesh)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def stats(self) -> dict[str, int]:
        return dict(self._tally.counts)
