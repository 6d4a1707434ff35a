"""Evaluation throughput: answers per second of greedy generation with the KV cache against without it.

`medclm eval` answers each batch with `model.vlm.generate`: one prefill of image + prompt, then one decoder step
per new token against the KV cache (`model/decode.py`). The package has no cache-free path, so the baseline here
is the naive one, written in this script: every new token re-runs the model's full forward (`VLM.__call__`:
image encoder, projector, decoder over image + prompt + the tokens generated so far) and takes the argmax at the
last position. Both sides get the same weights, images and prompts, decode the same number of new tokens (end
ids ignored, so every row runs to the end, as the slowest row of an eval batch does), and the script asserts
they write the same tokens.

The model is `--preset` (`small`) with random weights drawn by numpy: normal, 2/sqrt(first dimension) for matrices.
At 1/sqrt the small model's greedy answer repeats one token, which a decoder ignoring its cache would write too;
at 2/sqrt each answer varies, so the token check means something (the weights do not change the cost). Prompts
are `--prompt-len` real tokens, PaliGemma's layout: image + prompt a fully visible prefix, the generated tokens
causal. Each side is compiled and run once untimed per batch size (the baseline compiles one
program per sequence length, all in the warm-up), then timed `--reps` times interleaved (cache, no cache, cache,
...) so load from other work falls on both; the table holds medians. examples/s = batch / seconds per batch.
Reading images and scoring answers (host work, the same on both sides) are not timed.

Usage::

    python benchmarks/eval.py                                 # small preset, batch 1 and 8, 32 new tokens
    python benchmarks/eval.py --batches 1,8 --reps 7 --markdown benchmarks/results/eval.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medclm_jax.model import presets, vlm  # noqa: E402  (after the path line: runs from a checkout)


def random_params(cfg: vlm.VLMConfig, seed: int = 0, scale: float = 2.0) -> dict[str, Any]:
    """{'params': ...} drawn by numpy: normal, scaled by scale/sqrt(first dim) for matrices, 0.1 for vectors."""
    abstract = nn.meta.unbox(jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0))))["params"]
    rng = np.random.default_rng(seed)
    return {"params": jax.tree.map(lambda a: jnp.asarray((rng.standard_normal(a.shape) * (
        scale / np.sqrt(a.shape[0]) if len(a.shape) > 1 else 0.1)).astype(a.dtype)), abstract)}


def prompt_batch(cfg: vlm.VLMConfig, batch: int, prompt_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images and `prompt_len`-token prompts (<bos> then ordinary ids), no padding, mask_ar 0 (prefix)."""
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    text = rng.integers(cfg.bos_token_id + 5, cfg.text.vocab_size, (batch, prompt_len)).astype(np.int32)
    text[:, 0] = cfg.bos_token_id
    ones = np.ones((batch, prompt_len), np.int32)
    return {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32), "text": text,
            "mask_ar": np.zeros_like(ones), "mask_input": ones, "mask_loss": np.zeros_like(ones)}


def with_cache(cfg: vlm.VLMConfig, params: Any, batch: dict[str, np.ndarray], new_tokens: int) -> np.ndarray:
    """int32[B, new_tokens]: `vlm.generate` (prefill + KV-cache steps), greedy, end ids ignored."""
    out = vlm.generate(cfg, params, batch, max_new_tokens=new_tokens, eos_id=())
    return np.asarray(jax.block_until_ready(out.tokens))


def no_cache_step(cfg: vlm.VLMConfig) -> Callable:
    """jit(params, image, text, mask_ar) -> int32[B]: the full forward over the whole sequence, argmax at the end."""
    model = vlm.VLM(cfg)

    @jax.jit
    def step(params, image, text, mask_ar):
        ones = jnp.ones_like(text)
        logits = model.apply(params, {"image": image, "text": text, "mask_ar": mask_ar, "mask_input": ones,
                                      "mask_loss": ones})
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    return step


def without_cache(step: Callable, params: Any, batch: dict[str, np.ndarray], new_tokens: int) -> np.ndarray:
    """int32[B, new_tokens]: each token from a full forward over image + prompt + the tokens so far."""
    text, mask_ar = jnp.asarray(batch["text"]), jnp.asarray(batch["mask_ar"])
    image, b = jnp.asarray(batch["image"]), batch["text"].shape[0]
    out = []
    for _ in range(new_tokens):
        token = step(params, image, text, mask_ar)
        out.append(token)
        text = jnp.concatenate([text, token[:, None]], axis=1)
        mask_ar = jnp.concatenate([mask_ar, jnp.ones((b, 1), jnp.int32)], axis=1)  # generated tokens: causal
    return np.asarray(jax.block_until_ready(jnp.stack(out, axis=1)))


def measure(cfg: vlm.VLMConfig, params: Any, batch_size: int, prompt_len: int, new_tokens: int,
            reps: int) -> dict[str, Any]:
    """Median seconds per batch of each side (one untimed warm-up each, then `reps` interleaved runs)."""
    batch = prompt_batch(cfg, batch_size, prompt_len, seed=batch_size)
    step = no_cache_step(cfg)
    sides = {"cache": lambda: with_cache(cfg, params, batch, new_tokens),
             "no_cache": lambda: without_cache(step, params, batch, new_tokens)}
    tokens = {name: run() for name, run in sides.items()}  # warm-up: compiles
    if not np.array_equal(tokens["cache"], tokens["no_cache"]):
        rows = np.flatnonzero((tokens["cache"] != tokens["no_cache"]).any(axis=1)).tolist()
        raise AssertionError(f"batch {batch_size}: the cached and the cache-free decoding differ in rows {rows}:\n"
                             f"{tokens['cache']}\n{tokens['no_cache']}")
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {"batch": batch_size, "cache_s": med["cache"], "no_cache_s": med["no_cache"],
            "cache_ex_per_s": batch_size / med["cache"], "no_cache_ex_per_s": batch_size / med["no_cache"],
            "speedup": med["no_cache"] / med["cache"],
            "distinct_tokens": min(len(set(row)) for row in tokens["cache"].tolist())}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"`{args.preset}` preset, fp32, {args.prompt_len} prompt tokens + image, {args.new_tokens} new tokens "
             f"(greedy, end ids ignored); medians of {args.reps} interleaved runs after one untimed warm-up; "
             f"{jax.devices()[0].platform} x{jax.device_count()}", "",
             "| batch | KV cache s/batch | KV cache examples/s | no cache s/batch | no cache examples/s "
             "| cache / no cache (examples/s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['cache_s']:.3f} | {r['cache_ex_per_s']:.2f} | {r['no_cache_s']:.3f} | "
                     f"{r['no_cache_ex_per_s']:.2f} | {r['speedup']:.2f}x |")
    base = rows[0]
    for r in rows[1:]:
        lines.append(f"\nbatch {r['batch']} against batch {base['batch']}: KV cache "
                     f"{r['cache_ex_per_s'] / base['cache_ex_per_s']:.2f}x the examples/s, no cache "
                     f"{r['no_cache_ex_per_s'] / base['no_cache_ex_per_s']:.2f}x")
    distinct = ", ".join(str(r["distinct_tokens"]) for r in rows)
    lines.append(f"\nthe two sides wrote the same tokens in every row (the least varied answer has {distinct} distinct "
                 "token ids, per batch size)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens beside the image (default 32)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer (default 32)")
    p.add_argument("--reps", type=int, default=5, help="timed runs of each side per batch size (default 5)")
    p.add_argument("--markdown", default=None, help="also write the table, with date, machine and load, here")
    args = p.parse_args(argv)
    cfg = presets.get_model_config(args.preset)
    if cfg.family != "paligemma":
        p.error(f"--preset {args.preset}: the prompt layout here is PaliGemma's (image as prefix); pick one of "
                "tiny, small, paligemma_*")
    params = random_params(cfg)
    start_load = os.getloadavg()
    rows = [measure(cfg, params, int(b), args.prompt_len, args.new_tokens, args.reps)
            for b in args.batches.split(",")]
    text = table(rows, args)
    print(text)
    if args.markdown:
        end_load = os.getloadavg()
        header = (f"# Evaluation throughput: KV cache against no cache\n\n"
                  f"`python benchmarks/eval.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                  f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine "
                  f"{cpu_name()}, {os.cpu_count()} CPUs (shared with other jobs); load average "
                  f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in start_load)} at the start, "
                  f"{' '.join(f'{x:.2f}' for x in end_load)} at the end\n\n")
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
