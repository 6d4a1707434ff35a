"""A local process pool: one task per shard, a progress bar, and resume (finished shards are skipped).

Stopping: when the build is interrupted (Ctrl-C, or SIGTERM, which the command turns into the same
`KeyboardInterrupt`), every worker is terminated before the exception leaves `run_shards`, so no worker outlives
the build. Workers ignore SIGINT (the terminal sends it to the whole process group; the parent decides), die on
SIGTERM, and on Linux ask the kernel to send them SIGTERM when the parent dies, so even `kill -9` of the parent
leaves none behind. A worker stopped mid-shard leaves only hidden temp files (`medclm_jax.records.shards`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, Optional

from data_gen.pipeline import convert_image
from data_gen.runners.shards import ShardSpec, finish_shard, source_roots

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_GRACE_S = 5.0  # how long a terminated worker may take before it is killed


def process_shard(out_dir: str, spec: ShardSpec, cfg, class_vocab: dict[str, list[str]]) -> dict[str, Any]:
    """Converts every image of one shard and writes it. Runs in a worker process."""
    from data_gen import synth
    from data_gen.synth import usage

    synthesizer = synth.get_synthesizer(cfg.synth)
    t0 = time.perf_counter()
    results = [convert_image(item, cfg, class_vocab, synthesizer) for item in spec.items]
    summary = finish_shard(out_dir, spec, results, source_roots(cfg), usage.backend_counters(synthesizer))
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _worker_init(parent_pid: Optional[int]) -> None:
    """Signals in a worker: SIGTERM kills it (a forked worker inherits the parent's handler, which would turn it
    into an exception the pool reports and survives), SIGINT is the parent's to handle, and the parent's death
    sends SIGTERM (Linux)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent's stop still applies
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def stop_workers(workers: list) -> None:
    """Terminates `workers` (multiprocessing processes), kills any that outlive the grace period, reaps all."""
    for p in workers:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def run_shards(out_dir: str, specs: list[ShardSpec], cfg, class_vocab: dict[str, list[str]], workers: int = 1,
               progress: bool = True) -> None:
    """Processes `specs` (the unfinished shards) with `workers` processes (1: in this process)."""
    from tqdm import tqdm

    total_images = sum(len(s.items) for s in specs)
    bar = tqdm(total=total_images, unit="img", desc="build", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1 or not specs:
            for spec in specs:
                process_shard(out_dir, spec, cfg, class_vocab)
                bar.update(len(spec.items))
            return
        # fork is cheap, and safe while the parent runs no threads (data_gen never imports jax). A parent that did
        # import jax (a notebook, the demo after training) has XLA threads: forking it can deadlock, so use
        # forkserver there, and spawn where neither exists.
        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods and "jax" not in sys.modules:
            method = "fork"
        else:
            method = "forkserver" if "forkserver" in methods else "spawn"
        ctx = multiprocessing.get_context(method)
        # The pool's processes, found as the children that appear while it starts (the public way to reach them).
        before = set(multiprocessing.active_children())
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                      initargs=(os.getpid() if method == "fork" else None,))
        try:
            futures = {pool.submit(process_shard, out_dir, s, cfg, class_vocab): s for s in specs}
            for fut in concurrent.futures.as_completed(futures):
                fut.result()  # a programming error in a worker surfaces here; bad inputs are rejects, not errors
                bar.update(len(futures[fut].items))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            stop_workers([p for p in multiprocessing.active_children() if p not in before])
            raise
        pool.shutdown(wait=True)
    finally:
        bar.close()
