"""Loaders for the public medical VQA benchmarks, each in its release layout, yielding `BenchmarkItem`s.

    from medclm_jax.eval.benchmarks import load_benchmark
    bench = load_benchmark("vqa_rad", "/data/VQA_RAD")      # Benchmark(name, items, overlap)
    test = bench.split("test")

Layouts, fields and conventions are documented in each module (`vqa_rad.py`, `slake.py`, `pathvqa.py`,
`pmc_vqa.py`). `reference_record(item)` writes an item as a line of our reference JSONL for `medclm score`.
"""

from __future__ import annotations

from pathlib import Path

from medclm_jax.eval.benchmarks.items import (Benchmark, BenchmarkError, BenchmarkItem, ImageOverlap,
                                              image_overlap, reference_record)
from medclm_jax.eval.benchmarks.pathvqa import load_pathvqa
from medclm_jax.eval.benchmarks.pmc_vqa import load_pmc_vqa
from medclm_jax.eval.benchmarks.slake import load_slake
from medclm_jax.eval.benchmarks.vqa_rad import load_vqa_rad

LOADERS = {"vqa_rad": load_vqa_rad, "slake": load_slake, "pathvqa": load_pathvqa, "pmc_vqa": load_pmc_vqa}


def load_benchmark(name: str, root: str | Path, **kwargs) -> Benchmark:
    """Load benchmark `name` (a key of `LOADERS`) from `root`; kwargs go to its loader (splits, ...)."""
    if name not in LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name](root, **kwargs)


__all__ = ["Benchmark", "BenchmarkError", "BenchmarkItem", "ImageOverlap", "LOADERS", "image_overlap",
           "load_benchmark", "load_pathvqa", "load_pmc_vqa", "load_slake", "load_vqa_rad", "reference_record"]
