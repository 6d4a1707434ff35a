"""Peak host memory of `medclm convert --from-hf` against loading the whole checkpoint first.

The model issue asks that converting a 4B model never hold two full copies in host memory. This script writes
a synthetic Hugging Face PaliGemma checkpoint (random bf16 weights, ``--params`` millions of them, written with
our own exporter, so transformers and torch are not needed), then runs, each in a fresh process:

- ``imports``: Python with everything the conversion imports, after reading the config (the floor every row
  includes);
- ``medclm convert``: our lazy per-tensor import into an Orbax checkpoint;
- ``load all first``: the usual way, ``safetensors.numpy.load_file`` on every shard, then the same
  conversion, and Orbax's save of the numpy tree it returns (one full copy in the loaded dict, one in the param
  tree, and the numpy save's staging);
- ``load all first, same save path as ours``: the same, but saved as ``medclm convert`` saves (the tree moved
  to jax arrays leaf by leaf, ``convert.to_jax_leafwise``, whose save stages one copy instead of about two).

The last three rows separate the two effects: ``load all first`` against ``... same save path`` is the save path
alone; ``... same save path`` against ``medclm convert`` is loading everything first alone.

Each prints its own peak resident set (``VmHWM``); the table gives it in MiB and, above the imports floor, in
units of the checkpoint's size. File pages a process maps and touches count towards its resident set, so a
reader that memory-maps the whole checkpoint and keeps the mapping shows it here. The Orbax write itself stages
a copy of the arrays it writes; the ``import only`` row stops before it (``convert.load_hf``).

Usage::

    python benchmarks/convert_memory.py                 # ~1000M params, ~1.9 GB checkpoint
    python benchmarks/convert_memory.py --params 250
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The floor: the imports, and the config read (transformers' config classes; they also import torch where it is
# installed). VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork + exec.
IMPORTS = "import sys; sys.path.insert(0, {root!r}); import jax, numpy, ml_dtypes, orbax.checkpoint; " \
          "from medclm_jax.model import checkpoint, convert, safetensors_io; " \
          "convert.vlm_config_from_hf(convert.read_hf_config({hf!r})); "
PEAK = "; print('PEAK_KIB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"

RUNS = {
    "imports": "pass",
    "import only (load_hf)": "convert.load_hf({hf!r}, param_dtype='bfloat16', dtype='bfloat16')",
    "medclm convert": "from medclm_jax.commands import convert as command; "
                      "command.main(['--from-hf', {hf!r}, '--to', {out!r}, '--overwrite'])",
    "load all first": (
        "import glob, safetensors.numpy as stn; tensors = {{}}; "
        "[tensors.update(stn.load_file(f)) for f in sorted(glob.glob({hf!r} + '/*.safetensors'))]; "
        "cfg = convert.vlm_config_from_hf(convert.read_hf_config({hf!r}), param_dtype='bfloat16', "
        "dtype='bfloat16', scan_layers=True); "
        "params = convert.hf_to_vlm_params(tensors.__getitem__, list(tensors), cfg); "
        "checkpoint.save_checkpoint({out!r}, cfg, params, overwrite=True)"),
}
# The same load, then our save path (only the last statement differs from the row above).
RUNS["load all first, same save path as ours"] = RUNS["load all first"].replace(
    "checkpoint.save_checkpoint(", "params = convert.to_jax_leafwise(params); checkpoint.save_checkpoint(")


def synthetic_config(millions: int):
    """A PaliGemma-layout config of roughly ``millions`` M params (small vision tower, wide decoder)."""
    from medclm_jax.model import presets
    from medclm_jax.model.gemma import GemmaConfig
    from medclm_jax.model.siglip import SiglipConfig

    base = presets.get_model_config("small")
    width, mlp, vocab = 1024, 8192, 32768
    per_layer = width * (2 * 8 * 128 + 2 * 128) + 3 * width * mlp
    depth = max(1, round((millions * 1e6 - vocab * width) / per_layer))
    return dataclasses.replace(
        base, vision=SiglipConfig(image_size=224, patch_size=14, width=384, depth=4, mlp_dim=1536, num_heads=6,
                                  param_dtype="bfloat16"),
        text=GemmaConfig(vocab_size=vocab, width=width, depth=depth, mlp_dim=mlp, num_heads=8, num_kv_heads=1,
                         head_dim=128, param_dtype="bfloat16"))


def write_checkpoint(cfg, hf_dir: str) -> int:
    """Random bf16 weights in the Hub layout via our exporter; returns the bytes written."""
    import jax
    import ml_dtypes

    from medclm_jax.model import convert, sharding, vlm

    shapes = sharding.unbox(jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0))))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape, np.float32)).astype(ml_dtypes.bfloat16),
                          shapes)
    files = convert.export_hf(params, cfg, hf_dir, max_shard_bytes=256 << 20)
    return sum(os.path.getsize(os.path.join(hf_dir, f)) for f in files if f.endswith(".safetensors"))


def peak_mib(code: str, hf: str, out: str) -> tuple[float, float]:
    script = IMPORTS.format(root=ROOT, hf=hf) + RUNS[code].format(hf=hf, out=out) + PEAK
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{code}: failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(lines[-1].split()[1]) / 1024, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, default=1000, help="checkpoint size in millions of parameters")
    args = p.parse_args(argv)
    cfg = synthetic_config(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        hf, out = os.path.join(tmp, "hf"), os.path.join(tmp, "ours")
        size = write_checkpoint(cfg, hf) / 2**20
        rows = {name: peak_mib(name, hf, out) for name in RUNS}
    floor = rows["imports"][0]
    print(f"\ncheckpoint: {size:,.0f} MiB of bf16 safetensors (text depth {cfg.text.depth}, width "
          f"{cfg.text.width}, vocab {cfg.text.vocab_size}; {int(np.ceil(size / 256))} files)")
    print("| run | peak RSS MiB | above imports MiB | x checkpoint size | seconds |")
    print("|---|---|---|---|---|")
    for name, (mib, sec) in rows.items():
        extra = mib - floor
        print(f"| {name} | {mib:,.0f} | {extra:,.0f} | {extra / size:.2f} | {sec:.1f} |")
    x = {name: (mib - floor) / size for name, (mib, _) in rows.items()}
    same = x["load all first, same save path as ours"]
    print(f"\nsave path alone (load all first: numpy tree vs ours): {x['load all first']:.2f} -> {same:.2f}; "
          f"loading everything first alone (same save path): {same:.2f} vs {x['medclm convert']:.2f} "
          f"({same / x['medclm convert']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
