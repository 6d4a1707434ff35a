"""Which record, at which stage, fills each slot of each training step: the plan of the training stream.

    catalog = Catalog.scan(source, domains)                # (domain, pool) of every record of the split
    planner = Planner(catalog, curriculum_cfg, seed=0, batch_size=B, process_index=p, process_count=P)
    plan, counts = planner.plan(window, counts, scheduler_state)   # WindowPlan: int[U, B] records and stages

The plan is decided in the main process, where the scheduler lives, and handed to the Grain workers (`PlanBoard`),
which only read records and make views (`data/assemble.py`). Workers start once (seconds each, spawned) and never
see the scheduler's updates; what they get is a finished plan per window of `update_every` steps.

Catalog. The plan must know each record's `domain` and `curriculum/pool`, which live inside the records, so
`Catalog.scan` reads the split once (decoding each record, in a thread pool) and keeps
int32[N] domain ids (`views.domain_vocabulary` order, the scheduler's too) and int8[N] pool ids (`POOL_IDS`).
`pipeline.catalog_for` caches it in a file and splits the scan over hosts. A record that cannot be read, or has an
unknown domain or pool, gets -1 and is counted by reason in `unusable` (or raises, `on_error="raise"`): it is
never planned, so it cannot change the batches.

The stream (one process p of P, local batch B, window w = steps [w U, (w + 1) U)):
  1. per step s: `curriculum.probabilities(cfg, snapshot, s)` with the scheduler state snapshot of the window, then
     `curriculum.draw(probs, seed, s, B, p)` gives each slot its (domain d, stage); the stage names the pool
     (Easy/Medium: `easy_medium`, Hard: `hard`: a Hard slot always gets a hard-pool record of the same domain);
  2. the slot takes the next record of the (d, pool) stream: this process's draw number k from it (`counts[d,
     pool]`, carried from window to window) is global position g = k P + p of that pool's stream; epoch
     e = g // n and the record is `members[perm_e[g % n]]`, perm_e a seeded permutation of the pool's n records.
Why positions rather than sampling with replacement: every record of a pool is used once per epoch of that pool
(a small medical dataset should not see one image twice in a batch while another waits), and position g belongs
to process g mod P alone, so the processes' slices of an epoch are disjoint and cover the pool whatever their
pace (a pool with fewer records than processes still serves all of them). The cost is the counter state: int[D, 2]
per process, part of the iterator state. Everything is a pure function of (seed, step, snapshot, counts), with
numpy's `Generator.random` as the only randomness (argsort of uniforms is the permutation: its stream is one numpy
keeps stable, unlike `Generator.permutation`'s).

Pure numpy (no jax): the planner runs in the main process, `PlanBoard.get` in Grain workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError
from medclm_jax.train import curriculum

POOL_IDS = {pool: i for i, pool in enumerate(schema.POOLS)}  # easy_medium 0, hard 1
STAGE_POOL = np.array([POOL_IDS["hard" if s == "hard" else "easy_medium"] for s in schema.STAGES], np.int64)
_PERMUTATION_TAG = 0x6D65646F  # keeps the pool permutations' seeds apart from `curriculum.draw`'s
_SCAN_CHUNK = 4096


class PlanError(RuntimeError):
    """The scheduler and the catalog disagree (it drew a (domain, stage) the catalog has no record for)."""


# ---------------------------------------------------------------------------------------------------------------
# The catalog.


@dataclasses.dataclass(frozen=True, eq=False)
class Catalog:
    """(domain, pool) of every record of a split.

    Attributes:
      domains: the domain vocabulary (`views.domain_vocabulary` order); ids index it.
      domain: int32[N] domain id per record of the split; -1 = unusable.
      pool: int8[N] pool id (`POOL_IDS`) per record; -1 = unusable.
      unusable: reason -> records left out of the plan (unreadable, unknown domain or pool).
      fingerprint: the split's identity when scanned (shard names and sizes, record count, vocabulary).
    """

    domains: tuple[str, ...]
    domain: np.ndarray
    pool: np.ndarray
    unusable: Mapping[str, int]
    fingerprint: str

    @classmethod
    def scan(cls, source: Any, domains: Sequence[str], *, indices: Optional[Sequence[int]] = None,
             on_error: str = "raise", threads: int = 8) -> "Catalog":
        """Reads records `indices` (default all) of `source` (a `RecordSource`) and notes their domain and pool.

        Records not in `indices` are -1 and not counted (`merge` puts the parts of several scanners together).
        Raises the first RecordError (naming shard and byte offset) with `on_error="raise"`.
        """
        ids = {d: i for i, d in enumerate(domains)}
        n = len(source)
        todo = np.arange(n) if indices is None else np.asarray(indices, np.int64)

        def one(i: int) -> tuple[int, int, str]:
            try:
                record = source.read(int(i))
                domain = schema.text(record, schema.DOMAIN)
                if domain not in ids:
                    raise RecordError(f"record {i}: domain {domain!r} is not in the vocabulary of dataset_info.json",
                                      field=schema.DOMAIN, reason="unknown_domain")
                pool = schema.text(record, schema.CURRICULUM_POOL)
                schema.pool_stages(pool)  # raises reason='bad_pool'
                return ids[domain], POOL_IDS[pool], ""
            except RecordError as e:
                if on_error == "raise":
                    raise
                return -1, -1, e.reason

        domain = np.full(n, -1, np.int32)
        pool = np.full(n, -1, np.int8)
        unusable: collections.Counter = collections.Counter()
        executor = concurrent.futures.ThreadPoolExecutor(max(1, threads))
        try:
            for start in range(0, len(todo), _SCAN_CHUNK):  # bounded futures; the first error stops the scan
                chunk = todo[start:start + _SCAN_CHUNK].tolist()
                for i, (d, p, reason) in zip(chunk, executor.map(one, chunk)):
                    domain[i], pool[i] = d, p
                    if reason:
                        unusable[reason] += 1
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return cls(tuple(domains), domain, pool, dict(unusable), fingerprint(source, domains))

    @classmethod
    def merge(cls, parts: Sequence["Catalog"]) -> "Catalog":
        """One catalog from scans of disjoint index sets of the same split."""
        first = parts[0]
        if any(p.fingerprint != first.fingerprint for p in parts):
            raise ValueError("Catalog.merge: the parts were scanned from different splits or vocabularies")
        domain, pool = first.domain.copy(), first.pool.copy()
        unusable: collections.Counter = collections.Counter(first.unusable)
        for p in parts[1:]:
            seen = p.domain >= 0
            domain[seen], pool[seen] = p.domain[seen], p.pool[seen]
            unusable.update(p.unusable)
        return cls(first.domains, domain, pool, dict(unusable), first.fingerprint)

    def members(self) -> dict[tuple[int, int], np.ndarray]:
        """(domain id, pool id) -> int64[n] record indices, ascending (the pool streams' base order)."""
        key = self.domain.astype(np.int64) * len(POOL_IDS) + self.pool
        order = np.argsort(key, kind="stable")
        keys, starts = np.unique(key[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        return {(int(k) // len(POOL_IDS), int(k) % len(POOL_IDS)): order[a:b].astype(np.int64)
                for k, a, b in zip(keys, starts, bounds) if k >= 0}

    def records(self) -> dict[str, dict[str, int]]:
        """{domain: {stage: records}}: the scheduler's `records` argument (`curriculum.init`), from what is usable."""
        out = {d: {s: 0 for s in schema.STAGES} for d in self.domains}
        for (d, p), idx in self.members().items():
            for stage in schema.POOL_STAGES[schema.POOLS[p]]:
                out[self.domains[d]][stage] = len(idx)
        return {d: c for d, c in out.items() if any(c.values())}

    def save(self, path: str) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, domain=self.domain, pool=self.pool, meta=np.frombuffer(json.dumps(
                {"domains": list(self.domains), "unusable": dict(self.unusable),
                 "fingerprint": self.fingerprint}).encode(), np.uint8))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Catalog":
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(tuple(meta["domains"]), z["domain"], z["pool"], meta["unusable"], meta["fingerprint"])


def fingerprint(source: Any, domains: Sequence[str]) -> str:
    """What a catalog describes: the split's shard names and sizes, its record count and the vocabulary."""
    h = hashlib.sha256(json.dumps([source.split, len(source), list(domains)]).encode())
    for path in source.shard_paths:
        h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}".encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------------------
# Pool streams and the planner.


def epoch_permutation(seed: int, domain: int, pool: int, epoch: int, n: int) -> np.ndarray:
    """int64[n]: the order of a (domain, pool) stream's n records in one epoch."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), _PERMUTATION_TAG, int(domain), int(pool), int(epoch)])))
    return np.argsort(rng.random(n), kind="stable")


def stream_position(k: int, process_index: int, process_count: int, n: int) -> tuple[int, int]:
    """(epoch, index in that epoch's permutation) of a process's k-th draw from a stream of n records."""
    return divmod(int(k) * process_count + process_index, n)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """The slots of one window of `update_every` steps for one process.

    Attributes:
      window: w; the steps are `first_step + [0, U)`, `first_step = w U`.
      record: int64[U, B] record index in the split (the batch's `example_id`).
      stage: int32[U, B] stage id (`views.STAGE_IDS`).
      domain: int32[U, B] domain id.
    """

    window: int
    first_step: int
    record: np.ndarray
    stage: np.ndarray
    domain: np.ndarray

    def slots(self, step: int) -> list[tuple[int, int, int]]:
        """(record, stage id, domain id) of each slot of `step`."""
        u = step - self.first_step
        if not 0 <= u < len(self.record):
            raise IndexError(f"step {step} is not in window {self.window} (steps {self.first_step}.."
                             f"{self.first_step + len(self.record) - 1})")
        return list(zip(self.record[u].tolist(), self.stage[u].tolist(), self.domain[u].tolist()))


class Planner:
    """Plans windows for one process (the module docstring has the rule).

    Args:
      catalog: the split's catalog; its `domains` must be the scheduler state's.
      cfg: the curriculum config (`update_every` sets the window).
      seed: the stream's seed.
      batch_size: this process's rows per step.
      process_index, process_count: this process among the data-loading processes.
    """

    def __init__(self, catalog: Catalog, cfg: curriculum.CurriculumConfig, *, seed: int, batch_size: int,
                 process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.catalog, self.cfg, self.seed = catalog, cfg, int(seed)
        self.batch_size, self.process_index, self.process_count = batch_size, process_index, process_count
        self.window_steps = cfg.update_every
        self._members = catalog.members()
        self._perms: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # (d, pool) -> (epoch, permutation)

    def zero_counts(self) -> np.ndarray:
        return np.zeros((len(self.catalog.domains), len(POOL_IDS)), np.int64)

    def check(self, state: curriculum.CurriculumState) -> None:
        """Refuses a scheduler state whose domains differ from the catalog's, or that can draw an empty pool."""
        if tuple(state.domains) != tuple(self.catalog.domains):
            raise PlanError(f"the scheduler's domains {list(state.domains)} are not the catalog's "
                            f"{list(self.catalog.domains)}: init the scheduler with "
                            "domains=list(views.domain_vocabulary(info))")
        for d, name in enumerate(state.domains):
            for s, stage in enumerate(schema.STAGES):
                if state.records[d, s] > 0 and (d, int(STAGE_POOL[s])) not in self._members:
                    raise PlanError(f"the scheduler counts {state.records[d, s]} {stage} records of domain {name!r} "
                                    f"but the catalog has none usable ({dict(self.catalog.unusable)} unusable): "
                                    "init the scheduler with `catalog.records()`")

    def record(self, domain: int, pool: int, k: int) -> int:
        """This process's k-th record of the (domain, pool) stream."""
        members = self._members.get((domain, pool))
        if members is None:
            raise PlanError(f"the scheduler drew domain {self.catalog.domains[domain]!r} from pool "
                            f"{schema.POOLS[pool]!r}, which has no usable record; init it with `catalog.records()`")
        epoch, at = stream_position(k, self.process_index, self.process_count, len(members))
        cached = self._perms.get((domain, pool))
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_permutation(self.seed, domain, pool, epoch, len(members)))
            self._perms[(domain, pool)] = cached
        return int(members[cached[1][at]])

    def plan(self, window: int, counts: np.ndarray,
             state: curriculum.CurriculumState) -> tuple[WindowPlan, np.ndarray]:
        """The plan of `window` from the draw counts at its start and the scheduler snapshot; the counts after it."""
        u, b = self.window_steps, self.batch_size
        counts = np.array(counts, np.int64, copy=True)
        record = np.zeros((u, b), np.int64)
        stage = np.zeros((u, b), np.int32)
        domain = np.zeros((u, b), np.int32)
        for i in range(u):
            step = window * u + i
            probs = curriculum.probabilities(self.cfg, state, step)
            domain[i], stage[i] = curriculum.draw(probs, self.seed, step, b, self.process_index)
            for j in range(b):
                d, pool = int(domain[i, j]), int(STAGE_POOL[stage[i, j]])
                record[i, j] = self.record(d, pool, counts[d, pool])
                counts[d, pool] += 1
        return WindowPlan(window, window * u, record, stage, domain), counts


# ---------------------------------------------------------------------------------------------------------------
# The board: plans from the main process to the workers.


class BoardClosed(RuntimeError):
    """The stream that published the plans was closed (or its process died) while a worker waited for one."""


class PlanBoard:
    """Window plans published by the main process, read by whoever makes the batches.

    In-process (`shared=False`): a dict and a condition variable. For Grain worker processes (`shared=True`):
    also one `.npz` file per window in a private temporary folder (in /dev/shm where there is one), written under a
    temporary name and renamed, so a reader sees a whole plan or none; a worker that needs a window not yet
    published waits for it (the main process publishes `plan_ahead` windows ahead, so normally it never waits).
    Pickling keeps the folder and drops the in-memory plans. A waiting worker gives up (`BoardClosed`) when the
    folder is removed (`close`) or the process that made the board is no longer its parent.
    """

    def __init__(self, shared: bool = False):
        self.shared = shared
        self.owner = os.getpid()
        self.directory = tempfile.mkdtemp(prefix="medclm-plan-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                          else None) if shared else ""
        self._plans: dict[int, WindowPlan] = {}
        self._cond = threading.Condition()
        self._closed = False

    def _path(self, window: int) -> str:
        return os.path.join(self.directory, f"plan-{window:010d}.npz")

    def publish(self, plan: WindowPlan) -> None:
        if self.shared:
            tmp = self._path(plan.window) + ".tmp"
            with open(tmp, "wb") as f:
                np.savez(f, window=plan.window, first_step=plan.first_step, record=plan.record, stage=plan.stage,
                         domain=plan.domain)
            os.replace(tmp, self._path(plan.window))
        with self._cond:
            self._plans[plan.window] = plan
            self._cond.notify_all()

    def get(self, window: int) -> WindowPlan:
        with self._cond:
            plan = self._plans.get(window)
            if plan is not None:
                return plan
            if not self.shared or os.getpid() == self.owner:
                while window not in self._plans:
                    if self._closed:
                        raise BoardClosed(f"the stream was closed before window {window} was planned")
                    self._cond.wait(timeout=1.0)
                return self._plans[window]
        plan = self._wait_for_file(window)
        with self._cond:
            for old in [w for w in self._plans if w < window - 1]:
                del self._plans[old]
            self._plans[window] = plan
        return plan

    def _wait_for_file(self, window: int) -> WindowPlan:
        path, pause = self._path(window), 0.001
        while True:
            try:
                with np.load(path) as z:
                    return WindowPlan(int(z["window"]), int(z["first_step"]), z["record"], z["stage"], z["domain"])
            except FileNotFoundError:
                if not os.path.isdir(self.directory) or os.getppid() != self.owner:
                    raise BoardClosed(f"the stream that plans window {window} is gone ({self.directory})") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def retire(self, before: int) -> None:
        """Forgets the plans of windows < `before` (every batch of them has been consumed)."""
        with self._cond:
            for w in [w for w in self._plans if w < before]:
                del self._plans[w]
                if self.shared:
                    try:
                        os.remove(self._path(w))
                    except FileNotFoundError:
                        pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._plans.clear()
            self._cond.notify_all()
        if self.shared and os.getpid() == self.owner:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"shared": self.shared, "owner": self.owner, "directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._plans, self._cond, self._closed = {}, threading.Condition(), False
