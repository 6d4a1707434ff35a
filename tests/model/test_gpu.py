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


@on_gpu
def test_siglip_cudnn_attention_matches_xla():
    # So400m's head size (72) in bf16, 256 patches.
    cfg = SiglipConfig(image_size=224, patch_size=14, width=144, depth=2, mlp_dim=288, num_heads=2,
                       dtype="bfloat16", attention="xla")
    image = jax.random.uniform(jax.random.key(0), (2, 224, 224, 3), minval=-1, maxval=1)
    params = SiglipEncoder(cfg).init(jax.random.key(1), image)

    def run(attention):
        model = SiglipEncoder(dataclasses.replace(cfg, attention=attention))
        loss = lambda p: jnp.mean(model.apply(p, image).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.jit(lambda p: (model.apply(p, image), jax.grad(loss)(p)))(params)

    (out_x, g_x), (out_c, g_c) = run("xla"), run("cudnn")
    np.testing.assert_allclose(np.asarray(out_c, np.float32), np.asarray(out_x, np.float32), atol=0.1, rtol=0.05)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_x)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b) + 1e-6
