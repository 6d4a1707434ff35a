"""Building blocks of the Gemma text decoder: RMSNorm, RoPE, GQA attention with a KV cache, GeGLU MLP.

Every parameter carries logical axis names (``embed``, ``q_heads``, ``kv_heads``, ``head_dim``, ``mlp``,
``norm``) so the sharding rules can map them onto the mesh; activations are constrained with the ``act_*``
names. The math follows the Hugging Face reference implementations (transformers 5.x ``modeling_gemma*.py``)
exactly, because the parity tests compare logits to 1e-4:

* RMSNorm normalizes in float32 and multiplies by ``(1 + w)`` before casting back (Gemma's convention).
* RoPE rotates the two *halves* of each head (``rotate_half``), not interleaved pairs.
* Query heads ``h = j * G + g`` share key/value head ``j`` (``G = num_heads // num_kv_heads``).
* Attention logits are soft-capped (Gemma 2) before masking; softmax runs in float32.
* A local (sliding-window) layer lets query position ``q`` see key position ``k`` only if ``q - k < window``
  (HF's ``sliding_window_overlay``; one-sided, so bidirectional image blocks keep their future keys).

The KV cache of one layer is a pair ``k, v: dtype[B, S, K, Dh]`` with ``S`` slots. A decode call writes its
``T`` new keys/values at slots ``end[b] .. end[b] + T - 1`` of each row; the caller's ``attn_mask[b, q, s]``
says which slots are visible. Keeping every layer's cache the same length ``S`` (instead of a ring buffer of
``window`` slots for local layers) lets ``nn.scan`` stack the caches of all layers; see ``decode.py``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
DType = Any

# A finite "minus infinity": keeps fully masked rows (padding queries) free of NaNs.
_MASK_VALUE = -2.3819763e38


def softcap(x: Array, cap: float | None) -> Array:
    """``cap * tanh(x / cap)``: Gemma 2's bound on attention and final logits (identity if ``cap`` is None)."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap


class RMSNorm(nn.Module):
    """Gemma RMSNorm: ``x / rms(x) * (1 + scale)``, computed in float32, returned in the input dtype.

    The scale is stored zero-centred (a zero-initialized scale is the identity), as in the checkpoints.
    """

    eps: float = 1e-6
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            'scale', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('norm',)), (x.shape[-1],),
            self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def rope_inv_freq(head_dim: int, base: float | Array, scale: float | Array = 1.0) -> Array:
    """Inverse frequencies ``1 / (base^(2i/Dh) * scale)`` for ``i < Dh/2``: float32[Dh/2].

    ``scale`` is the linear position-interpolation factor (Gemma 3 4B: 8 on global layers).
    """
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (jnp.asarray(base, jnp.float32) ** exponent) / jnp.asarray(scale, jnp.float32)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates the two halves of every head of ``x: [B, T, N, Dh]`` by angle ``position * inv_freq``.

    Args:
      x: queries or keys, ``dtype[B, T, N, Dh]``.
      positions: token positions, ``int32[B, T]`` (padding-aware: they count real tokens only).
      inv_freq: ``float32[Dh/2]`` from :func:`rope_inv_freq`.
    Returns:
      ``dtype[B, T, N, Dh]``; cos/sin are computed in float32 and cast to ``x.dtype`` as HF does.
    """
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    cos = jnp.cos(angles).astype(x.dtype)[:, :, None, :]
    sin = jnp.sin(angles).astype(x.dtype)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _dot2d(a: Array, b: Array, a_dim: int, b_dim: int, out_dtype: DType | None) -> Array:
    """``dot_general`` of two matrices contracting ``a``'s axis ``a_dim`` with ``b``'s axis ``b_dim``."""
    return jax.lax.dot_general(a, b, (((a_dim,), (b_dim,)), ((), ())), preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dense(x: Array, w: Array, contract: int = 1, transpose_w: bool = False, out_dtype: DType | None = None
          ) -> Array:
    """A projection: ``x``'s last ``contract`` axes times ``w``'s first ``contract`` axes (its last ones if
    ``transpose_w``), as one 2-D matrix product.

    ``dense(x[B, T, D], w[D, H, Dh])`` is ``einsum('btd,dhk->bthk')``, ``dense(o[B, T, H, Dh], w[H, Dh, D], 2)``
    is ``einsum('bthk,hkd->btd')`` and ``dense(x[B, T, D], emb[V, D], transpose_w=True)`` is
    ``einsum('btd,vd->btv')``. The value equals the einsum; the reason for this function is its hand-written
    gradient: ``dx = g @ w^T`` and ``dw = x^T @ g`` over the flattened ``[B*T, ...]`` rows. Autodiff of the
    batched einsum makes XLA:CPU materialize a transposed copy of ``g`` fused with the preceding elementwise
    gradient (gelu, softmax): a memory-bound copy that cost more than the matrix products themselves
    (``benchmarks/model.py`` measures the step; figures in ``benchmarks/results/notes.md``).

    Args:
      x: ``[..., K1, .., Kc]`` activations.
      w: ``[K1, .., Kc, N...]`` (or ``[N..., K1, .., Kc]`` with ``transpose_w``) weights, cast by the caller.
      contract: how many trailing axes of ``x`` are contracted.
      transpose_w: the contracted axes are ``w``'s last ones.
      out_dtype: ``preferred_element_type`` of the forward product (e.g. float32 logits from bf16).
    Returns:
      ``[..., N...]``.
    """
    return _dense_fwd(x, w, contract, transpose_w, out_dtype)[0]


def _dense_operands(x: Array, w: Array, contract: int, transpose_w: bool
                    ) -> tuple[Array, Array, tuple[int, ...]]:
    """``x`` as ``[M, K]``, ``w`` as ``[K, N]`` (``[N, K]`` with ``transpose_w``), and the output's trailing
    shape ``N...``."""
    k_shape = x.shape[x.ndim - contract:]
    w_k = w.shape[w.ndim - contract:] if transpose_w else w.shape[:contract]
    if k_shape != w_k:
        raise ValueError(f"dense: contracted axes of x {x.shape} and w {w.shape} differ: {k_shape} vs {w_k}")
    n_shape = w.shape[:w.ndim - contract] if transpose_w else w.shape[contract:]
    k, n = math.prod(k_shape), math.prod(n_shape)
    return x.reshape(-1, k), (w.reshape(n, k) if transpose_w else w.reshape(k, n)), n_shape


def _dense_fwd(x, w, contract, transpose_w, out_dtype):
    x2, w2, n_shape = _dense_operands(x, w, contract, transpose_w)
    y = _dot2d(x2, w2, 1, 1 if transpose_w else 0, out_dtype)
    return y.reshape(x.shape[:x.ndim - contract] + n_shape), (x, w)


def _dense_bwd(contract, transpose_w, out_dtype, res, g):
    del out_dtype
    x, w = res
    x2, w2, _ = _dense_operands(x, w, contract, transpose_w)
    g2 = g.reshape(x2.shape[0], -1).astype(x.dtype)
    dx = _dot2d(g2, w2, 1, 0 if transpose_w else 1, None)  # [M, K]
    dw = _dot2d(g2, x2, 0, 0, None) if transpose_w else _dot2d(x2, g2, 0, 0, None)  # [N, K] or [K, N]
    return dx.astype(x.dtype).reshape(x.shape), dw.astype(w.dtype).reshape(w.shape)


dense.defvjp(_dense_fwd, _dense_bwd)


def write_cache(buf: Array, new: Array, end: Array) -> Array:
    """Per-row cache write ``buf[b, end[b]:end[b]+T] = new[b]``; ``buf: [B, S, ...]``, ``new: [B, T, ...]``.

    A one-token write (every decode step) is a select against a one-hot slot mask: rows write at different
    slots, and XLA turns a per-row ``dynamic_update_slice`` into a scatter, which CPU and GPU run slowly.
    Longer writes (the prefill) use the per-row ``dynamic_update_slice``.
    """
    new = new.astype(buf.dtype)
    if new.shape[1] == 1:
        hit = jnp.arange(buf.shape[1])[None, :] == end[:, None]  # [B, S]
        hit = hit.reshape(hit.shape + (1,) * (buf.ndim - 2))
        return jnp.where(hit, new, buf)
    return jax.vmap(lambda b, n, s: jax.lax.dynamic_update_slice_in_dim(b, n, s, axis=0))(buf, new, end)


def _dense_param(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
                 in_axis: int | tuple[int, ...], out_axis: int | tuple[int, ...], dtype: DType) -> Array:
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=in_axis, out_axis=out_axis)
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


class Attention(nn.Module):
    """Multi-query / grouped-query self-attention with RoPE, optional QK-norm, soft-cap and sliding window.

    Params (logical names): ``q: [D, H, Dh]`` (embed, q_heads, head_dim), ``k, v: [D, K, Dh]``
    (embed, kv_heads, head_dim), ``o: [H, Dh, D]`` (q_heads, head_dim, embed), and with QK-norm
    ``q_norm, k_norm`` over ``head_dim``.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    query_pre_attn_scalar: float
    attn_logit_softcap: float | None = None
    qk_norm: bool = False
    norm_eps: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, positions: Array, attn_mask: Array, inv_freq: Array,
                 window: Array | None, cache: tuple[Array, Array] | None = None,
                 kv_positions: Array | None = None, cache_end: Array | None = None,
                 ring: dict[str, Array] | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        """Attends ``x: [B, T, D]`` to itself, or (with ``cache``) to the cache after writing ``x``'s keys.

        Args:
          x: normalized inputs, ``dtype[B, T, D]``.
          positions: ``int32[B, T]`` query positions (also the RoPE positions of the new keys).
          attn_mask: ``bool[B, T, S]``; True = query may attend key slot. ``S = T`` without cache.
          inv_freq: RoPE inverse frequencies, ``float32[Dh/2]``.
          window: ``None`` for global attention, else a (possibly traced) int; with a traced ``is_local``
            the caller passes a huge window for global layers.
          cache: ``(k, v)``, each ``dtype[B, S, K, Dh]``, or None.
          kv_positions: ``int32[B, S]`` positions of the cache slots (after this call's write); needed with
            ``cache`` for the sliding window.
          cache_end: ``int32[B]`` first slot this call writes, per row.
          ring: with a ring-buffer ``cache`` of ``W`` slots (a local layer; see ``gemma.ring_context``): the
            masks and positions of the ring's keys and of this call's keys, and which new key each ring slot
            takes. The queries attend to the ring (before the write) and to this call's keys; then the ring
            keeps the latest ``W`` real keys.
        Returns:
          ``(out dtype[B, T, D], new (k, v) or None)``.
        """
        d = x.shape[-1]
        h, kh, dh = self.num_heads, self.num_kv_heads, self.head_dim
        wq = _dense_param(self, 'q', (d, h, dh), ('embed', 'q_heads', 'head_dim'), 0, (1, 2), self.param_dtype)
        wk = _dense_param(self, 'k', (d, kh, dh), ('embed', 'kv_heads', 'head_dim'), 0, (1, 2), self.param_dtype)
        wv = _dense_param(self, 'v', (d, kh, dh), ('embed', 'kv_heads', 'head_dim'), 0, (1, 2), self.param_dtype)
        wo = _dense_param(self, 'o', (h, dh, d), ('q_heads', 'head_dim', 'embed'), (0, 1), 2, self.param_dtype)

        x = x.astype(self.dtype)
        q = dense(x, wq.astype(self.dtype))
        k = dense(x, wk.astype(self.dtype))
        v = dense(x, wv.astype(self.dtype))
        q = nn.with_logical_constraint(q, ('act_batch', 'act_len', 'act_heads', None))
        if self.qk_norm:
            q = RMSNorm(self.norm_eps, self.param_dtype, name='q_norm')(q)
            k = RMSNorm(self.norm_eps, self.param_dtype, name='k_norm')(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)

        new_cache = None
        if ring is not None:
            take = ring['take']  # [B, W]: index of the new key each ring slot takes, -1 = keep its key
            hit = (take >= 0)[:, :, None, None]
            idx = jnp.maximum(take, 0)[:, :, None, None]
            new_cache = tuple(jnp.where(hit, jnp.take_along_axis(new.astype(old.dtype), idx, axis=1), old)
                              for new, old in ((k, cache[0]), (v, cache[1])))
            k = jnp.concatenate([cache[0].astype(self.dtype), k], axis=1)
            v = jnp.concatenate([cache[1].astype(self.dtype), v], axis=1)
            key_pos = jnp.concatenate([ring['pos_old'], positions], axis=1)
            attn_mask = jnp.concatenate([ring['mask_old'], ring['mask_new']], axis=2)
        elif cache is not None:
            k_all = write_cache(cache[0], k, cache_end)
            v_all = write_cache(cache[1], v, cache_end)
            new_cache = (k_all, v_all)
            k, v = k_all.astype(self.dtype), v_all.astype(self.dtype)
            key_pos = kv_positions
        else:
            key_pos = positions

        mask = attn_mask
        if window is not None:
            in_window = (positions[:, :, None] - key_pos[:, None, :]) < window
            mask = jnp.logical_and(mask, in_window)

        b, t = q.shape[:2]
        q = q.reshape(b, t, kh, h // kh, dh) * jnp.asarray(self.query_pre_attn_scalar ** -0.5, self.dtype)
        logits = jnp.einsum('btkgd,bskd->bkgts', q, k).astype(jnp.float32)
        logits = softcap(logits, self.attn_logit_softcap)
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum('bkgts,bskd->btkgd', probs, v).reshape(b, t, h, dh)
        out = nn.with_logical_constraint(out, ('act_batch', 'act_len', 'act_heads', None))
        y = dense(out, wo.astype(self.dtype), 2)
        return y, new_cache


class GeGLU(nn.Module):
    """Gemma's gated MLP: ``down(gelu_tanh(gate(x)) * up(x))``; params ``gate, up: [D, F]``, ``down: [F, D]``."""

    mlp_dim: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        w_gate = _dense_param(self, 'gate', (d, self.mlp_dim), ('embed', 'mlp'), 0, 1, self.param_dtype)
        w_up = _dense_param(self, 'up', (d, self.mlp_dim), ('embed', 'mlp'), 0, 1, self.param_dtype)
        w_down = _dense_param(self, 'down', (self.mlp_dim, d), ('mlp', 'embed'), 0, 1, self.param_dtype)
        x = x.astype(self.dtype)
        gate = jax.nn.gelu(dense(x, w_gate.astype(self.dtype)), approximate=True)
        hidden = gate * dense(x, w_up.astype(self.dtype))
        hidden = nn.with_logical_constraint(hidden, ('act_batch', 'act_len', 'act_mlp'))
        return dense(hidden, w_down.astype(self.dtype))
