"""A local process pool: one task per shard, a progress bar, and resume (finished shards are skipped)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time
from typing import Any

from data_gen.pipeline import convert_image
from data_gen.runners.shards import ShardSpec, finish_shard


def process_shard(out_dir: str, spec: ShardSpec, cfg, class_vocab: dict[str, list[str]]) -> dict[str, Any]:
    """Converts every image of one shard and writes it. Runs in a worker process."""
    from data_gen import synth

    synthesizer = synth.get_synthesizer(cfg.synth)
    t0 = time.perf_counter()
    results = [convert_image(item, cfg, class_vocab, synthesizer) for item in spec.items]
    summary = finish_shard(out_dir, spec, results)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def run_shards(out_dir: str, specs: list[ShardSpec], cfg, class_vocab: dict[str, list[str]], workers: int = 1,
               progress: bool = True) -> None:
    """Processes `specs` (the unfinished shards) with `workers` processes (1: in this process)."""
    from tqdm import tqdm

    total_images = sum(len(s.items) for s in specs)
    bar = tqdm(total=total_images, unit="img", desc="build", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1:
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
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(process_shard, out_dir, s, cfg, class_vocab): s for s in specs}
            for fut in concurrent.futures.as_completed(futures):
                fut.result()  # a programming error in a worker surfaces here; bad inputs are rejects, not errors
                bar.update(len(futures[fut].items))
    finally:
        bar.close()
