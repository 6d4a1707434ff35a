"""Throughput and memory of the training input pipeline (`medclm_jax/data/pipeline.py`), beside what a train step
consumes.

Prints one table: examples/s of the pipeline alone (`TrainStream.next_local`: plan, read, view, tokenize, collate;
no device transfer) at three model image sizes, with 0, 1 and 2 Grain worker processes; the seconds to the first
batch (worker start-up, paid once per stream, not per window); the peak resident memory of the pipeline's
processes (main + workers, sampled every 20 ms); and the examples/s a `small` forward+backward step consumes (a
plain jitted `value_and_grad`, no optimizer) on batches from the pipeline. The pipeline should deliver at least
3x what the step consumes.

Sizes: `small` (64 px, PaliGemma resize, prompt layout of a model trained here), 448 px (`paligemma_3b_448`'s
image side and bicubic resize) and 896 px (`medgemma_4b`'s side and bilinear resize, with Gemma 3's 258 image
placeholders in the text). The text side uses a tokenizer trained on the data for all three (the pipeline's cost
is the image's; a pretrained tokenizer costs the same per token).

Usage::

    python benchmarks/input.py                      # phantom data (-n images), all sizes, 0/1/2 workers
    python benchmarks/input.py --data DIR --sizes 64 --workers 0,2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHANTOM_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "data",
                              "phantom.py")
SIZES = {64: ("small", "paligemma", 0), 448: ("paligemma_3b_448", "paligemma", 0), 896: ("medgemma_4b", "gemma3", 256)}


def build_phantom(workdir: str, n: int) -> str:
    from data_gen import phantom
    from data_gen.build import run_build
    from medclm_jax.config_file import load_config

    raw, out = os.path.join(workdir, "phantom"), os.path.join(workdir, "dataset")
    phantom.write_phantom(raw, n, seed=0)
    run_build(load_config(f"{PHANTOM_CONFIG}:root={raw}"), out, workers=1, overwrite=True, progress=False)
    return out


class PeakMemory:
    """Peak of the summed resident memory of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval, self.peak, self.peak_main = psutil.Process(), interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                total = main + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                continue
            self.peak, self.peak_main = max(self.peak, total), max(self.peak_main, main)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_pre(size: int, tok: Any, domains: dict[str, int], max_len: int):
    from medclm_jax.data import prompts, views
    from medclm_jax.data.assemble import Preprocess

    _, family, image_tokens = SIZES[size]
    placeholder = (5, *([4] * image_tokens), 6) if image_tokens else ()  # trained tokenizer's <soi> <image> <eoi>
    settings = prompts.PromptSettings("trained", max_len + len(placeholder), image_placeholder=placeholder)
    return Preprocess(tok, views.ViewSettings(size, family), settings, domains)


def pipeline_rate(source, catalog, pre, workers: int, batch: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Examples/s over `steps` batches after the first; seconds to the first batch; peak memory."""
    from medclm_jax.data import pipeline
    from medclm_jax.train import curriculum

    cfg = curriculum.CurriculumConfig(policy="uniform", update_every=10)
    state = curriculum.init(cfg, catalog.records(), domains=list(catalog.domains))
    options = pipeline.InputOptions(batch_size=batch, seed=seed, workers=workers, threads=1, buffer=2)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        with pipeline.TrainStream(source, catalog, pre, cfg, state, options, process_index=0,
                                  process_count=1) as stream:
            stream.next_local()
            t1 = time.perf_counter()
            for _ in range(steps):
                stream.next_local()
            t2 = time.perf_counter()
    return {"examples_per_s": steps * batch / (t2 - t1), "first_batch_s": t1 - t0,
            "peak_rss_gib": mem.peak / 2**30, "peak_rss_main_gib": mem.peak_main / 2**30}


def step_rate(preset: str, source, catalog, tok: Any, batch: int, max_len: int, steps: int) -> dict[str, float]:
    """Examples/s of a jitted forward+backward of `preset` on pipeline batches (median step time)."""
    import jax
    import jax.numpy as jnp

    from medclm_jax.data import batch as batch_lib
    from medclm_jax.data import pipeline
    from medclm_jax.model import presets, sharding, vlm
    from medclm_jax.train import curriculum

    from medclm_jax.data import prompts, views
    from medclm_jax.data.assemble import Preprocess

    cfg = presets.get_model_config(preset)
    model = vlm.VLM(cfg)
    settings = prompts.settings_for_model(cfg, tok, max_len=max_len, pretrained=False)
    pre = Preprocess(tok, views.ViewSettings(cfg.vision.image_size, cfg.family), settings,
                     {d: i for i, d in enumerate(catalog.domains)})
    ccfg = curriculum.CurriculumConfig(policy="uniform", update_every=10)
    state = curriculum.init(ccfg, catalog.records(), domains=list(catalog.domains))
    with pipeline.TrainStream(source, catalog, pre, ccfg, state, pipeline.InputOptions(batch_size=batch),
                              process_index=0, process_count=1) as stream:
        batches = [{k: jnp.asarray(stream.next_local().arrays[k]) for k in batch_lib.MODEL_KEYS}
                   for _ in range(2)]
    params = sharding.unbox(jax.jit(model.init)(jax.random.key(0), batches[0]))["params"]

    def loss_fn(p, b):
        logits = model.apply({"params": p}, b)[:, :-1].astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), b["text"][:, 1:, None], axis=-1)[..., 0]
        mask = b["mask_loss"][:, 1:].astype(jnp.float32)
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    grad = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(grad(params, batches[0]))
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, batches[i % 2]))
        times.append(time.perf_counter() - t0)
    return {"examples_per_s": batch / float(np.median(times)), "step_s": float(np.median(times))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a build output folder (default: build the phantom data)")
    p.add_argument("-n", type=int, default=40, help="phantom images when --data is not given")
    p.add_argument("--sizes", default="64,448,896")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed batches per configuration")
    p.add_argument("--max-len", type=int, default=192)
    p.add_argument("--preset", default="small", help="the model whose train step is timed ('' to skip)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    with tempfile.TemporaryDirectory(prefix="medclm-input-bench-") as work:
        return run(args, work)


def run(args: argparse.Namespace, work: str) -> int:
    from medclm_jax.data import pipeline, views
    from medclm_jax.data.source import RecordSource, load_dataset_info
    from medclm_jax.model import presets
    from medclm_jax.model import tokenizer as T

    data = args.data or build_phantom(work, args.n)
    info = load_dataset_info(data)
    domains = views.domain_vocabulary(info)
    source = RecordSource(data, "train")
    texts = (v[0].decode() for r in source.iter_records() for k, v in r.items()
             if k.endswith(("/question", "/cot", "/answer")))
    vocab = presets.get_model_config(args.preset).text.vocab_size if args.preset else 4096
    tok = T.train_tokenizer(texts, vocab_size=vocab, out_dir=os.path.join(work, "tok"))
    t0 = time.perf_counter()
    catalog = pipeline.catalog_for(source, list(domains))
    catalog_s = time.perf_counter() - t0
    print(f"data: {data} ({len(source)} train records, catalog scan {catalog_s:.2f} s); batch {args.batch}, "
          f"{args.steps} timed batches; {os.cpu_count()} CPUs")

    results: dict[str, Any] = {"records": len(source), "batch": args.batch, "catalog_s": catalog_s, "rows": []}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        pre = make_pre(size, tok, domains, args.max_len)
        for workers in [int(w) for w in args.workers.split(",") if w]:
            r = pipeline_rate(source, catalog, pre, workers, args.batch, args.steps)
            results["rows"].append({"size": size, "model": SIZES[size][0], "workers": workers, **r})
            print(f"  {size} px, {workers} workers: {r['examples_per_s']:.1f} ex/s", flush=True)
    if args.preset:
        results["step"] = step_rate(args.preset, source, catalog, tok, args.batch, args.max_len,
                                    max(3, args.steps // 2))

    step = results.get("step")
    print(f"\n| image size (model) | workers | pipeline ex/s | first batch s | peak RSS GiB (main + workers) |"
          f"{' x step |' if step else ''}")
    print(f"|---|---|---|---|---|{'---|' if step else ''}")
    for r in results["rows"]:
        ratio = f" {r['examples_per_s'] / step['examples_per_s']:.1f}x |" if step and r["size"] == 64 else \
            (" - |" if step else "")
        print(f"| {r['size']} px ({r['model']}) | {r['workers']} | {r['examples_per_s']:.1f} | "
              f"{r['first_batch_s']:.2f} | {r['peak_rss_gib']:.2f} ({r['peak_rss_main_gib']:.2f} main) |{ratio}")
    if step:
        print(f"\n`{args.preset}` jitted fwd+bwd, batch {args.batch}, text {args.max_len}: "
              f"{step['step_s']:.3f} s/step = {step['examples_per_s']:.1f} ex/s consumed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
