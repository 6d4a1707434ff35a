"""Checks that need a GPU (skipped elsewhere). On a GPU machine: ``JAX_PLATFORMS=cuda pytest tests/model/test_gpu.py``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclm_jax.model.siglip import SiglipConfig, SiglipEncoder, use_cudnn_attention

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def test_attention_choice():
    assert use_cudnn_attention("cudnn", jnp.float32)
    assert not use_cudnn_attention("xla", jnp.bfloat16)
    assert use_cudnn_attention("auto", jnp.bfloat16) == (jax.default_backend() == "gpu")
    assert not use_cudnn_attention("auto", jnp.float32)
    with pytest.raises(ValueError, match="attention"):
        SiglipConfig(attention="flash")


# Tolerances for cuDNN vs XLA attention in bf16 (unit roundoff u = 2^-8: 8 significant bits). Both paths take
# scores and softmax in float32 and accumulate in float32, so the reduction lengths (72 per score, 256 keys per
# output) cost at most n * 2^-24 < 2e-5: negligible. They differ in where P is rounded to bf16 (XLA: the
# normalized p; cuDNN: exp(s - max) before dividing by the row sum): each term p_k v_k moves by <= 2u relative
# and sum_k p_k = 1, so an attention output moves by <= 2u max|v| whatever the number of keys, plus one bf16
# rounding each (<= 1 ulp apart). Rounding errors of random sign give a norm-relative difference of about u per
# layer; the rest of the block is the same bf16 program on both paths (gain ~1 through LayerNorm). On CPU, an
# emulation of that rounding order in place of the cuDNN call gave: outputs 1.2u norm-relative and at most 1 ulp
# of max|out| elementwise; gradients <= 3.9u norm-relative per parameter. Bounds: about 3x that (derived, not yet
# measured on a GPU: benchmarks/device_model.sh runs this file).
U_BF16 = 2.0 ** -8
OUT_NORM_TOL = 4 * U_BF16
OUT_ULPS = 2
GRAD_NORM_TOL = 12 * U_BF16


def _ulp_bf16(x: float) -> float:
    return 2.0 ** (np.floor(np.log2(x)) - 7)


@on_gpu
def test_siglip_cudnn_attention_matches_xla():
    # So400m's head size (72) in bf16, 256 patches.
    cfg = SiglipConfig(image_size=224, patch_size=14, width=144, depth=2, mlp_dim=288, num_heads=2,
                       dtype="bfloat16", attention="xla")
    image = jax.random.uniform(jax.random.key(0), (2, 224, 224, 3), minval=-1, maxval=1)
    params = SiglipEncoder(cfg).init(jax.random.key(1), image)
    # A fixed random read-out: mean(out ** 2) after the final LayerNorm is ~constant, its gradient only noise.
    readout = jax.random.normal(jax.random.key(2), (2, 256, cfg.width))

    def run(attention):
        model = SiglipEncoder(dataclasses.replace(cfg, attention=attention))
        loss = lambda p: jnp.mean(model.apply(p, image).astype(jnp.float32) * readout)  # noqa: E731
        return jax.jit(lambda p: (model.apply(p, image), jax.grad(loss)(p)))(params)

    (out_x, g_x), (out_c, g_c) = run("xla"), run("cudnn")
    out_x, out_c = np.asarray(out_x, np.float64), np.asarray(out_c, np.float64)
    assert np.linalg.norm(out_c - out_x) <= OUT_NORM_TOL * np.linalg.norm(out_x)
    assert np.abs(out_c - out_x).max() <= OUT_ULPS * _ulp_bf16(np.abs(out_x).max())
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_c)[0], jax.tree.leaves(g_x)):
        if "k_bias" in jax.tree_util.keystr(path):
            continue  # exactly zero (softmax ignores a shift shared by all keys): both are rounding noise
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= GRAD_NORM_TOL * np.linalg.norm(b), jax.tree_util.keystr(path)
