"""Model throughput: our Flax VLM against the same architecture in Hugging Face PyTorch; MFU on a GPU.

CPU mode (default) builds the ``small`` preset, builds transformers' ``PaliGemmaForConditionalGeneration`` from
the equivalent config, copies its weights into ours (so both run the same model; the logit difference is
printed as a check), and measures at the same batch and length:

- forward + backward tokens/s (loss = token-mean cross-entropy on the answer; gradients for every weight, no
  optimizer update), with our compile time and HF's first (warm-up) step reported separately;
- decode tokens/s: our jitted prefill + KV-cache loop (``vlm.generate``) against HF ``generate``
  (greedy, a fixed number of new tokens, EOS ignored by both), prefill included in both;
- model FLOPs per token (``medclm_jax.model.flops``) beside the throughput;
- the machine's ceiling: fp32 GFLOP/s of one ``[batch*positions, width] x [width, mlp]`` product in XLA and
  torch, and the step time the model's FLOPs would take at the better of the two. ``HF s/step`` over that
  floor is the largest speed-up any implementation could show over HF on this machine.

Both sides do the same work: the same weights, batch, dtype and loss, and the language-model head at the same
positions. Our model computes logits only at the ``text`` positions (``VLM.__call__``), so HF is called with
``logits_to_keep`` = the text length; without it HF also projects PaliGemma's image prefix onto the vocabulary,
which the loss never reads (+14% training FLOPs for ``paligemma_3b_224`` at 128 text tokens). Both are warmed
up the same way (a first call: our compile, HF's warm-up step; then one untimed call each) and timed
interleaved (``ours, HF, ours, HF, ...``; medians), so noise from other work on a shared machine falls on both.
``--sweep 1,2,8`` adds a table of fwd+bwd at several batch sizes. On a machine shared with other work, pin the
run to one core (``taskset -c 1 python benchmarks/model.py``): both sides then run single-threaded (torch and
XLA size their thread pools from the affinity mask), where with two threads on busy cores torch's per-op thread
barriers stall whenever another process holds a core, and its times swing widely between runs
(``benchmarks/results/notes.md``).

GPU mode (``--gpu``) runs ``paligemma_3b_224`` (random init, bf16 compute) on one device, as HF does, and
reports forward+backward tokens/s and MFU against ``--peak-flops`` per device (default: H200 bf16 dense 989
TFLOP/s), plus cached decoding tokens/s. Unless ``--no-hf``, it first runs the same model in HF PyTorch (fp32
params, bf16 autocast, one GPU) in a child process and prints the two side by side. ``--all-devices`` adds a
separate row of ours sharded (FSDP) over every local device, the same global batch; it is not compared with
HF. Memory rows say what each side measures: XLA's compiled temporaries (activations and scratch; no params or
gradients), and the allocator's peak on each side (JAX ``peak_bytes_in_use``, torch ``max_memory_allocated``,
both including params and gradients). ``benchmarks/device_model.sh`` is the prepared GPU run;
``benchmarks/results/`` keeps the JSON of runs on an H200. torch is never imported by the package itself (this
script is not production code).

Usage::

    python benchmarks/model.py                       # CPU table, small preset
    python benchmarks/model.py --sweep 1,2,8         # plus fwd+bwd by batch size
    python benchmarks/model.py --gpu --batch 16 --text-len 128
    python benchmarks/model.py --gpu --all-devices   # plus ours sharded over every local GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medclm_jax.model import flops, presets, sharding, vlm  # noqa: E402

H200_BF16_DENSE = 989e12


# ------------------------------------------------------------------------------------------------------------
# Shared pieces.
# ------------------------------------------------------------------------------------------------------------

def make_batch(cfg: vlm.VLMConfig, batch_size: int, text_len: int, prompt_len: int, seed: int = 0
               ) -> dict[str, np.ndarray]:
    """A full (unpadded) batch: ``prompt_len`` prefix tokens, then the answer (the loss span).

    PaliGemma: the image is a prefix outside ``text``; the prompt attends bidirectionally. Gemma 3: ``text``
    is ``<bos>``, the image placeholders (258 for MedGemma, in addition to ``text_len``), then the rest of the
    prompt and the answer, all causal (Gemma 3's own layout). The loss span is the last ``text_len -
    prompt_len`` positions either way; ``prompt_len == text_len`` gives a prompt-only batch (for decoding).
    """
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    length = text_positions(cfg, text_len)
    text = rng.integers(7, cfg.text.vocab_size, size=(batch_size, length)).astype(np.int32)
    special = [i for i in (cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id) if i is not None]
    text[np.isin(text, special)] = 7  # Gemma 3 counts image placeholders: none by chance
    text[:, 0] = cfg.bos_token_id
    mask_ar = np.zeros((batch_size, length), np.int32)
    mask_ar[:, length - (text_len - prompt_len):] = 1
    mask_loss = mask_ar.copy()
    if cfg.family == "gemma3":
        placeholders = vlm.image_placeholder_ids(cfg)
        text[:, 1:1 + len(placeholders)] = placeholders
        mask_ar[:] = 1
    return {"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32), "text": text,
            "mask_ar": mask_ar, "mask_loss": mask_loss, "mask_input": np.ones_like(text)}


def text_positions(cfg: vlm.VLMConfig, text_len: int) -> int:
    """Length of ``text`` in a benchmark batch: ``text_len`` text tokens, plus Gemma 3's image placeholders."""
    return text_len + (len(vlm.image_placeholder_ids(cfg)) if cfg.family == "gemma3" else 0)


def train_flops_per_text_token(cfg: vlm.VLMConfig, text_len: int) -> tuple[flops.FlopCount, float]:
    """The model's FLOP count for a batch row, and fwd+bwd FLOPs per *text* token (image tokens, in the prefix
    or at Gemma 3's placeholders, are not counted as tokens but their FLOPs are)."""
    total = text_positions(cfg, text_len)
    count = flops.model_flops(cfg, total)
    return count, count.train_per_token * total / text_len


def loss_fn(model: vlm.VLM, params: Any, batch: dict[str, Any]) -> jax.Array:
    """Token-mean next-token cross-entropy over ``mask_loss`` (the answer)."""
    logits = model.apply({"params": params}, batch)[:, :-1].astype(jnp.float32)
    targets = batch["text"][:, 1:]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    mask = batch["mask_loss"][:, 1:].astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def time_calls(fn, steps: int, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` (which must block until its result is ready)."""
    return time_interleaved({"fn": fn}, steps, warmup)["fn"]


def time_interleaved(fns: dict[str, Any], steps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, called round-robin (``a b a b ...``) so that noise from
    other work on the machine falls on all of them alike rather than on whichever ran during it; each is
    first called ``warmup`` times untimed (the same for every side)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def ours_train_step(model: vlm.VLM, params: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Our compiled forward+backward as a blocking zero-argument step, and its compile time, loss, memory."""
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(model, p, b)))
    t0 = time.perf_counter()
    compiled = grad_fn.lower(params, batch).compile()
    info = {"compile_s": time.perf_counter() - t0}
    info["loss"] = float(jax.block_until_ready(compiled(params, batch))[0])  # first run: allocations
    memory = compiled.memory_analysis()
    if memory is not None and getattr(memory, "temp_size_in_bytes", None) is not None:
        info["temp_gib"] = memory.temp_size_in_bytes / 2**30  # activations and scratch; no params, no grads
    return (lambda: jax.block_until_ready(compiled(params, batch))), info


def ours_train(model: vlm.VLM, params: Any, batch: dict[str, Any], steps: int) -> dict[str, float]:
    """Compile time and seconds per forward+backward step of our model."""
    step, info = ours_train_step(model, params, batch)
    return info | {"step_s": time_calls(step, steps)}


def ours_decode_run(cfg: vlm.VLMConfig, variables: Any, batch: dict[str, Any], new_tokens: int
                    ) -> tuple[Any, dict[str, Any]]:
    """Our prefill + KV-cache decoding as a blocking zero-argument call; its first (compiling) call's time and
    the tokens it generated."""
    def run():
        out = vlm.generate(cfg, variables, batch, max_new_tokens=new_tokens, eos_id=())  # () = never stop
        return jax.block_until_ready(out)
    t0 = time.perf_counter()
    out = run()
    return run, {"first_s": time.perf_counter() - t0, "tokens": np.asarray(out.tokens)}


def ours_decode(cfg: vlm.VLMConfig, variables: Any, batch: dict[str, Any], new_tokens: int, steps: int
                ) -> dict[str, Any]:
    """First-call (compile) and steady-state seconds of our prefill + KV-cache decoding."""
    run, info = ours_decode_run(cfg, variables, batch, new_tokens)
    return info | {"step_s": time_calls(run, steps)}


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_table(rows: list[tuple[str, ...]],
                header: tuple[str, ...] = ("measure", "ours (JAX)", "HF (PyTorch)", "ours / HF")) -> None:
    """Prints a Markdown table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


# ------------------------------------------------------------------------------------------------------------
# CPU: ours vs transformers.
# ------------------------------------------------------------------------------------------------------------

def hf_model_for(cfg: vlm.VLMConfig, seed: int = 0, device: str = "cpu"):
    """transformers' model for ``cfg`` (random init, fp32, transformers' default SDPA attention), built on
    ``device``."""
    import torch
    import transformers

    from medclm_jax.model import convert

    torch.manual_seed(seed)
    hf_cfg = convert.vlm_config_to_hf(cfg)
    hf_cfg.pop("architectures", None)
    model_type = hf_cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **hf_cfg)
    cls = (transformers.PaliGemmaForConditionalGeneration if cfg.family == "paligemma"
           else transformers.Gemma3ForConditionalGeneration)
    with torch.device(device):
        return cls(config).float()


def params_from_hf(cfg: vlm.VLMConfig, model) -> Any:
    from medclm_jax.model import convert

    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return jax.tree.map(jnp.asarray, convert.hf_to_vlm_params(state.__getitem__, list(state), cfg))


def hf_train_step(model, inputs: dict[str, Any], batch: dict[str, np.ndarray], device: str = "cpu",
                  autocast: Any = None) -> tuple[Any, dict[str, float]]:
    """HF's forward+backward (same loss as ``loss_fn``) as a zero-argument step that waits for the device,
    and its first step's time; ``autocast`` (e.g. ``torch.bfloat16``) runs the forward under torch autocast.

    ``logits_to_keep`` = the text length: HF applies the LM head only at the last ``T`` positions, the ``text``
    positions where ours computes logits (PaliGemma's image prefix comes first; Gemma 3 has no prefix).
    """
    import contextlib

    import torch

    model.train()
    tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    targets = torch.from_numpy(batch["text"][:, 1:].astype(np.int64)).to(device)
    mask = torch.from_numpy(batch["mask_loss"][:, 1:].astype(np.float32)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    text_len = batch["text"].shape[1]

    def step():
        with torch.autocast(device, dtype=autocast) if autocast else contextlib.nullcontext():
            logits = model(**tensors, logits_to_keep=text_len).logits
        if logits.shape[1] != text_len:
            raise RuntimeError(f"HF computed logits at {logits.shape[1]} positions, ours at {text_len}")
        logits = logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").reshape(targets.shape)
        loss = (nll * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        return float(loss.detach())

    t0 = time.perf_counter()
    loss = step()
    return step, {"first_s": time.perf_counter() - t0, "loss": loss}


def matmul_peak(m: int, k: int, n: int, steps: int) -> dict[str, float]:
    """fp32 GFLOP/s of one ``[m, k] @ [k, n]`` product in XLA and in torch: the machine's ceiling for a model
    made of such products (with the same threads the benchmark uses)."""
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    mm = jax.jit(jnp.matmul)
    mm(ja, jb).block_until_ready()
    reps = 10  # several products per timed call: each is only a few ms
    t = time_interleaved({"xla": lambda: [mm(ja, jb).block_until_ready() for _ in range(reps)],
                          "torch": lambda: [ta @ tb for _ in range(reps)]}, max(steps, 5))
    return {name: 2 * m * k * n * reps / sec / 1e9 for name, sec in t.items()}


def hf_decode_run(model, inputs: dict[str, Any], new_tokens: int) -> tuple[Any, dict[str, Any]]:
    """HF ``generate`` (greedy, exactly ``new_tokens`` new tokens) as a zero-argument call, its first call's
    time and the tokens it generated."""
    import torch

    model.eval()
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    prompt_len = tensors["input_ids"].shape[1]

    def run():
        with torch.no_grad():
            return model.generate(**tensors, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)
    t0 = time.perf_counter()
    out = run()
    return run, {"first_s": time.perf_counter() - t0, "tokens": out[:, prompt_len:].numpy()}


def cpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    cfg = presets.get_model_config(args.preset)
    model = vlm.VLM(cfg)
    count, per_token = train_flops_per_text_token(cfg, args.text_len)
    gflop = per_token / 1e9
    results: dict[str, Any] = {"preset": args.preset, "batch": args.batch, "text_len": args.text_len,
                               "seq_len": count.seq_len, "train_flops_per_token": per_token,
                               "threads": {"torch": None, "jax_devices": jax.device_count()}}
    hf = None
    if not args.no_hf:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        results["threads"]["torch"] = torch.get_num_threads()
        hf = hf_model_for(cfg)
        params = params_from_hf(cfg, hf)
    else:
        params = sharding.unbox(jax.jit(model.init)(jax.random.key(0), {k: jnp.asarray(v) for k, v in
                                                                        vlm.dummy_batch(cfg).items()}))["params"]

    def train_pair(batch_size: int) -> dict[str, Any]:
        """Ours and HF forward+backward at one batch size, timed interleaved."""
        batch = make_batch(cfg, batch_size, args.text_len, args.prompt_len)
        ours_step, ours_info = ours_train_step(model, params, {k: jnp.asarray(v) for k, v in batch.items()})
        fns = {"ours": ours_step}
        hf_info: dict[str, Any] = {}
        if hf is not None:
            fns["hf"], hf_info = hf_train_step(hf, vlm.hf_inputs(cfg, batch), batch)
        t = time_interleaved(fns, args.steps)
        tokens = batch_size * args.text_len
        out = {"batch": batch_size, "ours": ours_info | {"step_s": t["ours"], "tokens_per_s": tokens / t["ours"]}}
        if hf is not None:
            out["hf"] = hf_info | {"step_s": t["hf"], "tokens_per_s": tokens / t["hf"]}
        return out

    main_run = train_pair(args.batch)
    ours, theirs = main_run["ours"], main_run.get("hf", {})
    results["ours"], results["hf"] = dict(ours), dict(theirs)
    sweep = [train_pair(b) if b != args.batch else main_run for b in args.sweep]
    if sweep:
        results["sweep"] = sweep

    dec_batch = make_batch(cfg, args.decode_batch, args.decode_prompt_len, args.decode_prompt_len, seed=1)
    dec_fns = {}
    dec_fns["ours"], ours_dec = ours_decode_run(cfg, {"params": params}, dec_batch, args.new_tokens)
    theirs_dec: dict[str, Any] = {}
    if hf is not None:
        import torch
        batch = make_batch(cfg, args.batch, args.text_len, args.prompt_len)
        inputs = vlm.hf_inputs(cfg, batch)
        with torch.no_grad():
            hf.eval()
            hf_logits = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()},
                           logits_to_keep=batch["text"].shape[1]).logits  # as in the timed step
        ours_logits = np.asarray(jax.jit(model.apply)({"params": params}, {k: jnp.asarray(v) for k, v in
                                                                           batch.items()}))
        results["max_abs_logit_diff"] = float(np.max(np.abs(hf_logits.numpy() - ours_logits)))
        dec_fns["hf"], theirs_dec = hf_decode_run(hf, vlm.hf_inputs(cfg, dec_batch), args.new_tokens)
        results["greedy_token_agreement"] = float(np.mean(ours_dec["tokens"] == theirs_dec["tokens"]))
    dec_t = time_interleaved(dec_fns, args.steps)
    dec_tokens = args.decode_batch * args.new_tokens
    ours_dps = dec_tokens / dec_t["ours"]
    hf_dps = dec_tokens / dec_t["hf"] if "hf" in dec_t else None
    results["ours"].update(decode_first_s=ours_dec["first_s"], decode_step_s=dec_t["ours"])
    if hf is not None:
        results["hf"].update(decode_first_s=theirs_dec["first_s"], decode_step_s=dec_t["hf"])

    # The machine's ceiling: the model is almost all [positions, width] x [width, mlp]-sized fp32 products.
    peak = None
    if hf is not None:
        peak = matmul_peak(args.batch * count.seq_len, cfg.text.width, cfg.text.mlp_dim, args.steps)
        results["matmul_peak_gflops"] = peak

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"
    ours_tps, hf_tps = ours["tokens_per_s"], theirs.get("tokens_per_s")
    results.update(ours_train_tokens_per_s=ours_tps, hf_train_tokens_per_s=hf_tps,
                   ours_decode_tokens_per_s=ours_dps, hf_decode_tokens_per_s=hf_dps)
    print(f"\npreset={args.preset}  batch={args.batch}  text_len={args.text_len} (+{cfg.num_image_tokens} image "
          f"tokens = {count.seq_len} decoder positions)  devices={jax.devices()[0].platform} x{jax.device_count()}"
          f"  torch threads={results['threads']['torch']}  LM head at the {args.text_len} text positions on both "
          f"sides  (medians of {args.steps} interleaved calls after 1 untimed warm-up)")
    rows = [
        ("fwd+bwd tokens/s (text tokens)", fmt(ours_tps), fmt(hf_tps), ratio(ours_tps, hf_tps)),
        ("fwd+bwd s/step (median)", fmt(ours["step_s"], 3), fmt(theirs.get("step_s"), 3),
         ratio(theirs.get("step_s"), ours["step_s"])),
        ("compile s (ours) / first step s (HF)", fmt(ours["compile_s"], 2), fmt(theirs.get("first_s"), 2), ""),
        ("model GFLOP/token (fwd+bwd)", f"{gflop:.3f}", f"{gflop:.3f}", ""),
        ("achieved GFLOP/s", fmt(ours_tps * gflop), fmt(hf_tps * gflop if hf_tps else None), ""),
    ]
    if peak is not None:
        m, k, n = args.batch * count.seq_len, cfg.text.width, cfg.text.mlp_dim
        best = max(peak.values())
        floor_s = args.batch * args.text_len * per_token / (best * 1e9)
        rows += [
            (f"fp32 matmul GFLOP/s ([{m},{k}]x[{k},{n}])", fmt(peak["xla"]), fmt(peak["torch"]), ""),
            ("fwd+bwd s/step if all FLOPs ran at the best matmul rate", fmt(floor_s, 3), "",
             f"{theirs['step_s'] / floor_s:.2f}x max"),
        ]
    rows += [
        (f"decode tokens/s (B={args.decode_batch}, {args.new_tokens} new)", fmt(ours_dps), fmt(hf_dps),
         ratio(ours_dps, hf_dps)),
        ("decode first call s (compile / warm-up)", fmt(ours_dec["first_s"], 2),
         fmt(theirs_dec.get("first_s"), 2), ""),
    ]
    print_table(rows)
    if "max_abs_logit_diff" in results:
        print(f"check: same weights, max |logit diff| = {results['max_abs_logit_diff']:.2e}; greedy tokens agree "
              f"{100 * results['greedy_token_agreement']:.0f}%; losses {ours['loss']:.4f} vs {theirs['loss']:.4f}")
    if sweep:
        print("\nfwd+bwd by batch size (same text length; each row timed interleaved):")
        print_table([(str(r["batch"]), fmt(r["ours"]["tokens_per_s"]), fmt(r.get("hf", {}).get("tokens_per_s")),
                      ratio(r["ours"]["tokens_per_s"], r.get("hf", {}).get("tokens_per_s"))) for r in sweep],
                    header=("batch", "ours tokens/s", "HF tokens/s", "ours / HF"))
    return results


# ------------------------------------------------------------------------------------------------------------
# GPU: paligemma_3b_224 in bf16, MFU.
# ------------------------------------------------------------------------------------------------------------

def hf_gpu_worker(args: argparse.Namespace) -> dict[str, Any]:
    """HF PyTorch fwd+bwd of the same preset on one GPU: fp32 params, bf16 autocast (the usual HF recipe).

    Run in a child process (``--hf-worker``) before JAX touches the GPU, so the two frameworks' allocators
    never share the card.
    """
    import torch
    import transformers

    cfg = presets.get_model_config(args.preset)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try this code path without a GPU
    t0 = time.perf_counter()
    model = hf_model_for(cfg, device=dev)
    init_s = time.perf_counter() - t0
    batch = make_batch(cfg, args.batch, args.text_len, args.prompt_len)
    step, info = hf_train_step(model, vlm.hf_inputs(cfg, batch), batch, device=dev, autocast=torch.bfloat16)
    return {"init_s": init_s, "first_s": info["first_s"], "step_s": time_calls(step, args.steps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__}


def hf_gpu_baseline(args: argparse.Namespace) -> dict[str, Any] | None:
    """Runs :func:`hf_gpu_worker` in a child process; None (with the reason printed) if it fails."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--gpu", "--hf-worker", "--preset", args.preset,
               "--batch", str(args.batch), "--text-len", str(args.text_len), "--prompt-len", str(args.prompt_len),
               "--steps", str(args.steps), "--json", out.name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"HF baseline failed (rc={proc.returncode}); its last output:\n{proc.stderr[-2000:]}")
            return None
        with open(out.name) as f:
            return json.load(f)


def ours_gpu_train(cfg: vlm.VLMConfig, args: argparse.Namespace, devices: list[Any]) -> dict[str, Any]:
    """Our fwd+bwd on ``devices`` (params and batch FSDP-sharded over them; one device = no sharding): init
    time, the step's times and compiled temporaries, and the params (for decoding) and mesh."""
    model = vlm.VLM(cfg)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices=devices)
    t0 = time.perf_counter()
    init_batch = {k: jnp.asarray(v) for k, v in vlm.dummy_batch(cfg, 1, 8).items()}
    params = sharding.sharded_init(model.init, jax.random.key(0), init_batch, mesh=mesh)["params"]
    jax.block_until_ready(params)
    init_s = time.perf_counter() - t0
    batch = sharding.shard_batch(make_batch(cfg, args.batch, args.text_len, args.prompt_len), mesh)
    with sharding.mesh_rules(mesh):
        train = ours_train(model, params, batch, args.steps)
    return train | {"init_s": init_s, "params": params, "mesh": mesh, "devices": len(devices)}


def allocator_peak_gib(device: Any) -> float | None:
    """The JAX allocator's peak bytes in use on ``device`` so far (GiB; None where the backend keeps no
    statistics, e.g. CPU): like torch's ``max_memory_allocated``, params and gradients included."""
    stats = device.memory_stats()
    peak = (stats or {}).get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def gpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    hf = None if args.no_hf else hf_gpu_baseline(args)  # first: before JAX allocates the GPU
    cfg = presets.get_model_config(args.preset, dtype="bfloat16", param_dtype=args.param_dtype,
                                   scan_layers=True, remat_policy=args.remat)
    count, per_token = train_flops_per_text_token(cfg, args.text_len)
    tokens = args.batch * args.text_len
    device = jax.devices()[0].device_kind

    # Ours on one device, as HF runs: the comparison.
    ours = ours_gpu_train(cfg, args, jax.devices()[:1])
    peak_gib = allocator_peak_gib(jax.devices()[0])  # before decoding, so it is the training step's peak
    params, mesh = ours.pop("params"), ours.pop("mesh")
    n_params = sum(x.size for x in jax.tree.leaves(params))
    with sharding.mesh_rules(mesh):
        dec_batch = make_batch(cfg, args.decode_batch, args.decode_prompt_len, args.decode_prompt_len, seed=1)
        dec = ours_decode(cfg, {"params": params}, dec_batch, args.new_tokens, args.steps)
    del params
    tps = tokens / ours["step_s"]
    mfu = flops.mfu(tps, per_token, args.peak_flops, 1)
    dps = args.decode_batch * args.new_tokens / dec["step_s"]

    # Optionally ours sharded over every local device: a separate row, not compared with HF's one GPU.
    sharded = None
    if args.all_devices:
        if args.batch % jax.device_count():
            raise ValueError(f"--all-devices: --batch {args.batch} does not split over {jax.device_count()} devices")
        sharded = ours_gpu_train(cfg, args, jax.devices())
        del sharded["params"], sharded["mesh"]
        sharded["tokens_per_s"] = tokens / sharded["step_s"]
        sharded["mfu"] = flops.mfu(sharded["tokens_per_s"], per_token, args.peak_flops, sharded["devices"])

    print(f"\npreset={args.preset} ({n_params / 1e9:.2f}B params, {args.param_dtype} params, bf16 compute, remat="
          f"{args.remat})  batch={args.batch}  text_len={args.text_len} (+{cfg.num_image_tokens} image tokens; "
          f"LM head at the {args.text_len} text positions on both sides)  {device} x1 (of {jax.device_count()})  "
          f"init {ours['init_s']:.1f}s  (medians of {args.steps} calls after 1 untimed warm-up)")
    hf_tps = tokens / hf["step_s"] if hf else None
    mfu_label = f"MFU (peak {args.peak_flops / 1e12:g} TFLOP/s per device)"
    rows = [
        ("fwd+bwd tokens/s (text tokens)", fmt(tps), fmt(hf_tps), f"{tps / hf_tps:.2f}x" if hf else ""),
        ("fwd+bwd decoder positions/s", fmt(args.batch * count.seq_len / ours["step_s"]),
         fmt(args.batch * count.seq_len / hf["step_s"]) if hf else "-", ""),
        ("fwd+bwd s/step (median)", fmt(ours["step_s"], 4), fmt(hf["step_s"], 4) if hf else "-",
         f"{hf['step_s'] / ours['step_s']:.2f}x" if hf else ""),
        ("compile s (ours) / first step s (HF)", fmt(ours["compile_s"], 1), fmt(hf["first_s"], 1) if hf else "-", ""),
        ("model GFLOP/text token (fwd+bwd)", fmt(per_token / 1e9, 2), fmt(per_token / 1e9, 2) if hf else "-", ""),
        (mfu_label, f"{100 * mfu:.1f}%",
         f"{100 * flops.mfu(hf_tps, per_token, args.peak_flops, 1):.1f}%" if hf else "-", ""),
        ("memory GiB: XLA temp bytes (compiled; no params, no grads)",
         fmt(ours.get("temp_gib"), 2), "-", ""),
        ("memory GiB: allocator peak (JAX peak_bytes_in_use / torch max_memory_allocated)", fmt(peak_gib, 2), fmt(hf.get("peak_gib"), 2) if hf else "-", ""),
        (f"decode tokens/s (B={args.decode_batch}, {args.new_tokens} new; ours only)", fmt(dps), "-", ""),
    ]
    if sharded is not None:
        rows.append((f"fwd+bwd tokens/s, ours FSDP over {sharded['devices']} devices (MFU per device; not vs HF)",
                     f"{fmt(sharded['tokens_per_s'])} ({100 * sharded['mfu']:.1f}%)", "-", ""))
    hf_header = f"HF (PyTorch {hf['torch']}, bf16 autocast, 1 device)" if hf else "HF (--no-hf)"
    print_table(rows, header=("measure", "ours (JAX, 1 device)", hf_header, "ours / HF"))
    return {"hf": hf, "preset": args.preset, "device": device, "devices": 1, "n_params": int(n_params),
            "init_s": ours["init_s"], "tokens_per_s": tps, "mfu": mfu, "decode_tokens_per_s": dps,
            "peak_gib": peak_gib, "hf_logits_to_keep": args.text_len, "train_flops_per_token": per_token,
            **{f"train_{k}": v for k, v in ours.items() if k != "init_s"},
            "sharded": sharded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="paligemma_3b_224 in bf16 on the accelerator: tokens/s, MFU")
    p.add_argument("--preset", default=None, help="model preset (default: small on CPU, paligemma_3b_224 on GPU)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 8 CPU, 16 GPU)")
    p.add_argument("--text-len", type=int, default=None, help="text tokens per example (default 64 CPU, 128 GPU)")
    p.add_argument("--prompt-len", type=int, default=16, help="prefix tokens of the training text")
    p.add_argument("--steps", type=int, default=7, help="timed repetitions (median reported)")
    p.add_argument("--decode-batch", type=int, default=4)
    p.add_argument("--decode-prompt-len", type=int, default=16, help="text prompt tokens (plus the image)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row")
    p.add_argument("--sweep", default="", help="CPU mode: also time fwd+bwd at these batch sizes, e.g. 1,2,4,8")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--peak-flops", type=float, default=H200_BF16_DENSE, help="peak FLOP/s per device, for MFU")
    p.add_argument("--param-dtype", default="float32", help="GPU mode: parameter dtype (compute is bf16)")
    p.add_argument("--remat", default="minimal", choices=["none", "minimal", "full"], help="GPU mode remat")
    p.add_argument("--all-devices", action="store_true",
                   help="GPU mode: also run ours FSDP-sharded over every local device (a separate row)")
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)  # GPU mode's HF child process
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    args.preset = args.preset or ("paligemma_3b_224" if args.gpu else "small")
    args.batch = args.batch or (16 if args.gpu else 8)
    args.text_len = args.text_len or (128 if args.gpu else 64)
    args.sweep = [int(b) for b in args.sweep.split(",") if b.strip()]
    if not 0 < args.prompt_len < args.text_len:
        p.error("--prompt-len must be between 1 and --text-len - 1")
    if args.hf_worker:
        results = hf_gpu_worker(args)
    else:
        results = gpu_benchmark(args) if args.gpu else cpu_benchmark(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
