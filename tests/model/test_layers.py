"""`layers.dense`: the hand-written gradient equals autodiff of the einsum it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclm_jax.model.layers import dense

CASES = [  # (x shape, w shape, contract, transpose_w, einsum)
    ((2, 5, 8), (8, 3, 4), 1, False, "btd,dhk->bthk"),
    ((2, 5, 3, 4), (3, 4, 8), 2, False, "bthk,hkd->btd"),
    ((2, 5, 8), (16, 8), 1, True, "btd,vd->btv"),
    ((7, 8), (8, 6), 1, False, "nd,df->nf"),
]


@pytest.mark.parametrize("x_shape,w_shape,contract,transpose_w,eqn", CASES)
def test_dense_value_and_grads_match_einsum(x_shape, w_shape, contract, transpose_w, eqn):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    ours = lambda x, w: dense(x, w, contract, transpose_w)  # noqa: E731
    ref = lambda x, w: jnp.einsum(eqn, x, w)  # noqa: E731
    y = ours(x, w)
    np.testing.assert_allclose(y, ref(x, w), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(kg, y.shape)
    g_ours = jax.vjp(ours, x, w)[1](cot)
    g_ref = jax.vjp(ref, x, w)[1](cot)
    for a, b in zip(g_ours, g_ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_mixed_precision_and_jit():
    x = jax.random.normal(jax.random.key(1), (4, 6, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (10, 8)).astype(jnp.bfloat16)
    f = jax.jit(lambda x, w: jnp.sum(dense(x, w, transpose_w=True, out_dtype=jnp.float32) ** 2))
    dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
    assert dense(x, w, transpose_w=True, out_dtype=jnp.float32).dtype == jnp.float32
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # The exact gradient at the same (bf16-valued) inputs, in float32.
    ref = jax.grad(lambda x, w: jnp.sum(jnp.einsum("btd,vd->btv", x, w) ** 2), argnums=(0, 1))(
        x.astype(jnp.float32), w.astype(jnp.float32))
    # bf16 rounds the cotangent and the result (2^-8 each): measured max error 0.29% (dx) and 0.21% (dw) of the
    # largest entry here, 0.41% worst over 20 seeds. 1.2% is 3x the worst; a gradient 2% off fails.
    for got, want in zip((dx, dw), ref):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.abs(got - want).max() <= 0.012 * np.abs(want).max()


def test_dense_names_mismatched_axes():
    with pytest.raises(ValueError, match="contracted axes"):
        dense(jnp.ones((2, 3)), jnp.ones((4, 5)))
