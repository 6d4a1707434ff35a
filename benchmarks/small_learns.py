"""Does the ``small`` preset learn the phantom data in minutes on a 2-core CPU? (the model issue's claim)

A check of the model half only, not the trainer: no curriculum scheduler, no Grain pipeline, no Easy stage
(Easy needs the box drawn on the image, which belongs to the training input pipeline). It:

1. writes the phantom dataset and builds it with ``configs/data/phantom.py`` (or reads ``--data DIR``);
2. trains a tokenizer on the train split's text (``medclm_jax.model.tokenizer.train_tokenizer``);
3. makes two examples per train record with the training targets of ``medclm_jax.data.targets``: Medium (image,
   Medium question -> ``Reasoning: <cot> Answer: <answer>``) and Hard (image, Hard question -> ``Answer:
   <answer>``), PaliGemma layout (``<bos> question \\n`` prefix with full attention, the target causal, one
   token-mean loss over the whole target: the curriculum's span-weighted loss belongs to the trainer);
4. trains ``--preset`` (``small``) from scratch with AdamW (warm-up + cosine) for ``--minutes`` or ``--steps``;
5. greedy-decodes every train example and every val example and prints the loss curve and the exact-match rate
   of the answer as the metrics read it (``eval.cot.extract_answer``: the text after the last ``Answer:``;
   ``eval.vqa_strict.exact_match``), on train (memorized?) and val (unseen images; a small model on 40 records is
   not expected to generalize much).

Usage::

    python benchmarks/small_learns.py                 # the --minutes budget (5)
    python benchmarks/small_learns.py --steps 50      # quick look
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medclm_jax import records  # noqa: E402
from medclm_jax.data import targets  # noqa: E402
from medclm_jax.eval import cot, vqa_strict  # noqa: E402
from medclm_jax.model import presets, sharding, tokenizer, vlm  # noqa: E402
from medclm_jax.records import schema  # noqa: E402

PHANTOM_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "data",
                              "phantom.py")
STAGES = ("medium", "hard")  # Easy needs the box drawn on the image (the input pipeline's job)


def build_phantom(workdir: str, n: int) -> str:
    from data_gen import phantom
    from data_gen.build import run_build
    from medclm_jax.config_file import load_config

    raw, out = os.path.join(workdir, "phantom"), os.path.join(workdir, "dataset")
    phantom.write_phantom(raw, n, seed=0)
    run_build(load_config(f"{PHANTOM_CONFIG}:root={raw}"), out, workers=1, overwrite=True, progress=False)
    return out


def read_split(data_dir: str, split: str) -> list[dict[str, Any]]:
    out = []
    for shard in records.list_shards(data_dir, split):
        out += [records.decode_example(r) for r in records.read_tfrecord(shard)]
    return out


def examples(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(image bytes, prompt, target, answer) per record and stage in `STAGES` (see the module docstring)."""
    out = []
    for rec in recs:
        img = rec[schema.IMAGE_ENCODED][0]
        for stage in STAGES:
            target = targets.record_target(rec, stage)
            out.append({"image": img, "prompt": schema.text(rec, schema.question_key(stage)),
                        "target": target.text, "answer": target.text[slice(*target.answer)]})
    return out


def load_image(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.float32) / 127.5 - 1.0


def encode(cfg: vlm.VLMConfig, tok: tokenizer.Tokenizer, exs: list[dict[str, Any]], text_len: int,
           with_target: bool) -> dict[str, np.ndarray]:
    """The batch contract; with_target=False gives prompt-only rows for decoding (right-padded)."""
    n = len(exs)
    text = np.full((n, text_len), cfg.pad_token_id, np.int32)
    mask_ar, mask_loss, mask_input = (np.zeros((n, text_len), np.int32) for _ in range(3))
    for i, ex in enumerate(exs):
        prefix = tok.encode(ex["prompt"] + "\n", add_bos=True)
        suffix = tok.encode(ex["target"], add_eos=True) if with_target else []
        ids = (prefix + suffix)[:text_len]
        text[i, :len(ids)] = ids
        mask_input[i, :len(ids)] = 1
        mask_ar[i, len(prefix):len(ids)] = 1
        mask_loss[i, len(prefix):len(ids)] = 1
    images = np.stack([load_image(ex["image"], cfg.vision.image_size) for ex in exs])
    return {"image": images, "text": text, "mask_ar": mask_ar, "mask_loss": mask_loss, "mask_input": mask_input}


def loss_fn(model: vlm.VLM, params: Any, batch: dict[str, Any]) -> jax.Array:
    logits = model.apply({"params": params}, batch)[:, :-1].astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["text"][:, 1:])
    mask = batch["mask_loss"][:, 1:].astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def exact_match(cfg, params, tok, exs, text_len: int, max_new: int, batch_size: int = 16) -> float:
    """Greedy decoding scored as the metrics score it: the answer after the last `Answer:`, strict exact match."""
    hits = 0.0
    for start in range(0, len(exs), batch_size):
        chunk = exs[start:start + batch_size]
        batch = encode(cfg, tok, chunk, text_len, with_target=False)
        out = vlm.generate(cfg, {"params": params}, batch, max_new_tokens=max_new)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        for ex, row, n in zip(chunk, tokens, lengths):
            hits += vqa_strict.exact_match(cot.extract_answer(tok.decode(row[:n].tolist())), ex["answer"])
    return hits / max(len(exs), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a built dataset (default: build the phantom data in a temp dir)")
    p.add_argument("--preset", default="small", help="model preset trained from scratch (tiny for a smoke test)")
    p.add_argument("-n", type=int, default=48, help="phantom images when building")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of --minutes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cfg = presets.get_model_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = args.data or build_phantom(tmp, args.n)
        train_recs, val_recs = read_split(data, "train"), read_split(data, "val")
        train, val = examples(train_recs), examples(val_recs)
        tok = tokenizer.train_tokenizer((s for ex in train for s in (ex["prompt"], ex["target"])),
                                        cfg.text.vocab_size, os.path.join(tmp, "tokenizer"))
        full = encode(cfg, tok, train, args.text_len, with_target=True)
        truncated = int(np.sum(full["mask_input"].sum(1) == args.text_len))
        print(f"data: {len(train_recs)} train / {len(val_recs)} val records -> {len(train)} / {len(val)} examples "
              f"(Medium + Hard); {truncated} truncated at {args.text_len} tokens; set-up {time.perf_counter() - t0:.1f}s")

        model = vlm.VLM(cfg)
        params = sharding.unbox(jax.jit(model.init)(jax.random.key(args.seed),
                                                    {k: jnp.asarray(v[:1]) for k, v in full.items()}))["params"]
        total = args.steps or 100_000
        warmup = min(50, total // 10 + 1)
        # decay over --steps (past the warm-up, so `--steps 1` works), else a guess at the steps --minutes allows
        decay = max(args.steps, warmup + 1) if args.steps else max(int(args.minutes * 60 * 2), 100)
        schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, decay)
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
        opt_state = opt.init(params)

        @jax.jit
        def step(params, opt_state, batch):
            loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        rng = np.random.default_rng(args.seed)
        order: list[int] = []
        t_train, losses, i = time.perf_counter(), [], 0
        while (i < args.steps) if args.steps else (time.perf_counter() - t_train < args.minutes * 60):
            if len(order) < args.batch:
                order += list(rng.permutation(len(train)))
            idx, order = order[:args.batch], order[args.batch:]
            params, opt_state, loss = step(params, opt_state, {k: jnp.asarray(v[idx]) for k, v in full.items()})
            losses.append(float(loss))
            i += 1
            if i == 1 or i % 50 == 0:
                print(f"  step {i:5d}  {time.perf_counter() - t_train:7.1f}s  loss {np.mean(losses[-50:]):.4f}")
        train_s = time.perf_counter() - t_train
        max_new = int(max(len(tok.encode(ex["target"])) for ex in train)) + 8
        em_train = exact_match(cfg, params, tok, train, args.text_len, max_new)
        em_val = exact_match(cfg, params, tok, val, args.text_len, max_new) if val else float("nan")
    print(f"\n{args.preset} preset: {i} steps of batch {args.batch} in {train_s:.0f}s ({i / train_s:.2f} steps/s); "
          f"loss {np.mean(losses[:10]):.3f} (first 10) -> {np.mean(losses[-10:]):.3f} (last 10)")
    print(f"greedy answer exact match (eval.cot + vqa_strict): train {100 * em_train:.1f}%  "
          f"val {100 * em_val:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
