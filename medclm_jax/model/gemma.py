"""The Gemma 1 / 2 / 3 text decoder (PaliGemma, PaliGemma 2, MedGemma) in Flax linen.

One module covers the family; the config switches on what differs:

============  =======================================================================================
Gemma 1       pre-norm blocks, full attention, RoPE base 10k, scale ``head_dim^-0.5``
Gemma 2       + post-attention/post-MLP norms, soft-capped attention (50) and final logits (30),
              alternating local (sliding window) / global layers, scale ``query_pre_attn_scalar^-0.5``
Gemma 3       + QK-norm, 5 local : 1 global layers, RoPE base 10k local / 1M global (linear scaling
              on global layers for the 4B), no soft-caps
============  =======================================================================================

Interface (what ``vlm.py`` composes against)::

    dec = GemmaDecoder(cfg)
    x = dec.apply(params, tokens, method=dec.embed)               # [B, T, D], already * sqrt(D)
    logits, cache = dec.apply(params, x, positions, attn_mask)    # float32[B, T, V], None

``attn_mask[b, q, k]`` (True = may attend) is built by the caller (causal, prefix-LM, bidirectional image
blocks); the decoder only adds the sliding window of local layers from the positions. With
``decode=True`` it also takes and returns a KV cache (:func:`init_cache`; driven by ``decode.py``).

Layers are either unrolled (params ``layers_0 .. layers_{L-1}``) or, with ``scan_layers``, one
``nn.scan`` over a stacked ``layers`` subtree whose leading axis has the logical name ``layers``.
The KV cache has the stacked layout ``[L, B, S, K, Dh]``, or with unrolled layers one ring buffer of
``sliding_window`` slots per local layer (:func:`init_cache`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medclm_jax.model import layers

Array = jax.Array

VARIANTS = ('gemma1', 'gemma2', 'gemma3')
REMAT_POLICIES = {
    'none': None,
    # Saves the outputs of weight matmuls, recomputes norms, activations and attention scores.
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Saves nothing but the layer inputs: the least memory, about one more forward pass of compute.
    'full': jax.checkpoint_policies.nothing_saveable,
}


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Sizes and switches of a Gemma text decoder (hashable: safe as a jit static argument).

    Attributes:
      vocab_size, width, depth, mlp_dim, num_heads, num_kv_heads, head_dim: sizes (``width`` = D).
      variant: 'gemma1', 'gemma2' or 'gemma3' (documentation and conversion; behaviour comes from the
        switches below, which :func:`gemma_config_from_hf` and the presets set per variant).
      rope_base: RoPE base of global layers. rope_local_base: RoPE base of local (sliding) layers.
      rope_scale: linear RoPE scaling factor of global layers (positions divided by it).
      sliding_window: window of local layers, in tokens (query may see key iff ``q - k < window``).
      sliding_window_pattern: 0 = every layer global; ``n`` = layer ``i`` is global iff ``(i + 1) % n == 0``
        (Gemma 2: 2, Gemma 3: 6).
      attn_logit_softcap, final_logit_softcap: tanh soft-caps (None = off).
      query_pre_attn_scalar: queries are scaled by its ``-1/2`` power; None = ``head_dim``.
      qk_norm: RMSNorm on queries and keys per head (Gemma 3).
      post_norms: RMSNorm on the attention and MLP outputs before the residual add (Gemma 2/3).
      norm_eps: RMSNorm epsilon.
      dtype: compute dtype name ('float32', 'bfloat16'). param_dtype: parameter dtype name.
      scan_layers: one ``nn.scan`` over layers (fast compile) instead of an unrolled loop.
      remat_policy: 'none', 'minimal' or 'full' (see ``REMAT_POLICIES``).
    """

    vocab_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    variant: str = 'gemma1'
    rope_base: float = 10_000.0
    rope_local_base: float = 10_000.0
    rope_scale: float = 1.0
    sliding_window: int | None = None
    sliding_window_pattern: int = 0
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    qk_norm: bool = False
    post_norms: bool = False
    norm_eps: float = 1e-6
    dtype: str = 'float32'
    param_dtype: str = 'float32'
    scan_layers: bool = False
    remat_policy: str = 'none'

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f'GemmaConfig.variant={self.variant!r}: expected one of {VARIANTS}')
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f'GemmaConfig.remat_policy={self.remat_policy!r}: expected one of {tuple(REMAT_POLICIES)}')
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f'GemmaConfig: num_heads={self.num_heads} is not a multiple of '
                             f'num_kv_heads={self.num_kv_heads}')
        if self.head_dim % 2:
            raise ValueError(f'GemmaConfig.head_dim={self.head_dim} must be even for RoPE')
        if self.sliding_window_pattern and not self.sliding_window:
            raise ValueError('GemmaConfig: sliding_window_pattern > 0 needs a sliding_window')

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) uses the sliding window."""
        n = self.sliding_window_pattern
        return bool(n) and (layer + 1) % n != 0

    @property
    def local_layers(self) -> tuple[bool, ...]:
        return tuple(self.is_local(i) for i in range(self.depth))


def init_cache(cfg: GemmaConfig, batch: int, max_len: int, dtype: Any = None, ring: bool | None = None
               ) -> dict[str, Any]:
    """An empty KV cache for ``batch`` rows of ``max_len`` slots.

    Returns a dict: ``k, v`` (keys after RoPE, and values), ``pos: int32[B, S]`` (position of the token in each
    slot, for the sliding window), ``end: int32[B]`` (next slot each row writes). Two layouts:

    * stacked: ``k, v: dtype[L, B, S, K, Dh]``, every layer ``S = max_len`` slots (local layers see their
      window through the mask). Needed by ``scan_layers`` (one shape for all layers).
    * ring (``ring=True``; the default for unrolled layers with local layers and ``sliding_window <
      max_len``): ``k, v`` are tuples with one ``[B, S_i, K, Dh]`` per layer, ``S_i`` = ``sliding_window`` on
      local layers (a ring buffer holding each row's latest ``sliding_window`` real keys) and ``max_len`` on
      global ones; ``ring: int32[B, W]`` is the absolute slot each ring slot holds (-1 = empty). For Gemma 3
      (5 of 6 layers local, window 1024) at 8k tokens this is ~4x less cache memory.
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    local = bool(cfg.sliding_window_pattern) and cfg.sliding_window is not None
    if ring is None:
        ring = not cfg.scan_layers and local and cfg.sliding_window < max_len
    if ring and (cfg.scan_layers or not local):
        raise ValueError('init_cache: a ring cache needs unrolled layers (scan_layers=False) with local layers; '
                         'convert the checkpoint with `medclm convert --layout unrolled` for serving')
    common = {'pos': jnp.zeros((batch, max_len), jnp.int32), 'end': jnp.zeros((batch,), jnp.int32)}
    if not ring:
        shape = (cfg.depth, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype), **common}
    slots = [min(cfg.sliding_window, max_len) if cfg.is_local(i) else max_len for i in range(cfg.depth)]
    kv = lambda: tuple(jnp.zeros((batch, n, cfg.num_kv_heads, cfg.head_dim), dtype) for n in slots)  # noqa: E731
    return {'k': kv(), 'v': kv(), 'ring': jnp.full((batch, min(cfg.sliding_window, max_len)), -1, jnp.int32),
            **common}


def ring_context(ring: Array, attn_mask: Array, kv_positions: Array, positions: Array, end: Array
                 ) -> tuple[dict[str, Array], Array]:
    """What every local layer needs to attend through its ring buffer in one decoder call.

    Args:
      ring: ``int32[B, W]`` absolute slot held by each ring slot before this call (-1 = empty).
      attn_mask: the caller's ``bool[B, T, S]`` over the full slot range (after this call's write).
      kv_positions: ``int32[B, S]`` position of every slot (after this call's write).
      positions: ``int32[B, T]`` positions of this call's tokens.
      end: ``int32[B]`` first slot this call writes.
    Returns:
      ``(context, new ring)``: ``context`` holds ``mask_old bool[B, T, W]`` and ``pos_old int32[B, W]`` for
      the ring's keys, ``mask_new bool[B, T, T]`` for this call's keys, and ``take int32[B, W]``: the index of
      the new key each ring slot takes, the latest *real* one (visible to some query: padding is not) among
      the new slots ``end + t`` with ``(end + t) % W`` equal to it, or -1 to keep its key. The ring thus
      always holds each row's latest ``W`` real keys, whatever the padding; with ``W`` = the window, those are
      all the keys a local layer can see (positions count real tokens only).
    """
    b, t, s = attn_mask.shape
    w = ring.shape[1]
    old = jnp.clip(ring, 0, s - 1)
    mask_old = jnp.take_along_axis(attn_mask, jnp.broadcast_to(old[:, None, :], (b, t, w)), axis=2)
    mask_old = jnp.logical_and(mask_old, (ring >= 0)[:, None, :])
    new_slots = end[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # [B, T]
    cols = jnp.clip(new_slots, 0, s - 1)
    mask_new = jnp.take_along_axis(attn_mask, jnp.broadcast_to(cols[:, None, :], (b, t, t)), axis=2)
    real = jnp.any(mask_new, axis=1)  # [B, T]
    candidate = jnp.where(real, jnp.arange(t, dtype=jnp.int32)[None], -1)
    take = jnp.full((b, w), -1, jnp.int32).at[jnp.arange(b)[:, None], new_slots % w].max(candidate)
    context = {'mask_old': mask_old, 'pos_old': jnp.take_along_axis(kv_positions, old, axis=1),
               'mask_new': mask_new, 'take': take}
    return context, jnp.where(take >= 0, end[:, None] + take, ring)


class Embedder(nn.Module):
    """Token embedding table ``embedding: [V, D]`` (vocab, embed), tied with the output projection."""

    vocab_size: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=1, out_axis=0)
        self.embedding = self.param('embedding', nn.with_logical_partitioning(init, ('vocab', 'embed')),
                                    (self.vocab_size, self.width), self.param_dtype)

    def encode(self, tokens: Array) -> Array:
        # HF multiplies by sqrt(D) rounded to the compute dtype (55.4256 -> 55.5 in bf16 for D=3072).
        x = jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)
        return x * jnp.asarray(math.sqrt(self.width), self.dtype)

    def decode(self, x: Array) -> Array:
        return layers.dense(x, self.embedding.astype(self.dtype), transpose_w=True, out_dtype=jnp.float32)


class Block(nn.Module):
    """One decoder layer: (norm, attention, [post-norm], residual) then (norm, GeGLU, [post-norm], residual).

    ``is_local`` may be a traced bool (scanned per-layer flag), so the RoPE base and window are selected
    with ``jnp.where`` rather than Python control flow.
    """

    config: GemmaConfig

    @nn.compact
    def __call__(self, x: Array, is_local: Array, layer_cache: tuple[Array, Array] | None,
                 positions: Array, attn_mask: Array, kv_positions: Array | None, cache_end: Array | None,
                 ring: dict[str, Array] | None = None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        global_freq = layers.rope_inv_freq(cfg.head_dim, cfg.rope_base, cfg.rope_scale)
        if cfg.sliding_window_pattern:
            local_freq = layers.rope_inv_freq(cfg.head_dim, cfg.rope_local_base)
            inv_freq = jnp.where(is_local, local_freq, global_freq)
            window = jnp.where(is_local, cfg.sliding_window, np.iinfo(np.int32).max)
        else:
            inv_freq, window = global_freq, None

        attn = layers.Attention(
            num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
            query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
            attn_logit_softcap=cfg.attn_logit_softcap, qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps,
            dtype=dtype, param_dtype=pdtype, name='attn')
        y = layers.RMSNorm(cfg.norm_eps, pdtype, name='pre_attn_norm')(x)
        y, new_cache = attn(y, positions, attn_mask, inv_freq, window, layer_cache, kv_positions, cache_end, ring)
        if cfg.post_norms:
            y = layers.RMSNorm(cfg.norm_eps, pdtype, name='post_attn_norm')(y)
        x = x + y

        y = layers.RMSNorm(cfg.norm_eps, pdtype, name='pre_ffw_norm')(x)
        y = layers.GeGLU(cfg.mlp_dim, dtype, pdtype, name='mlp')(y)
        if cfg.post_norms:
            y = layers.RMSNorm(cfg.norm_eps, pdtype, name='post_ffw_norm')(y)
        x = x + y
        x = nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))
        return x, new_cache


def _block_class(cfg: GemmaConfig):
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy == 'none':
        return Block
    # Under scan, CSE cannot merge the recomputation across iterations, so prevent_cse is unnecessary.
    return nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)


class GemmaDecoder(nn.Module):
    """The Gemma text decoder with tied embeddings (see the module docstring for the interface)."""

    config: GemmaConfig

    def setup(self):
        cfg = self.config
        self.embedder = Embedder(cfg.vocab_size, cfg.width, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype))
        block = _block_class(cfg)
        if cfg.scan_layers:
            scanned = nn.scan(
                block, variable_axes={'params': 0}, split_rngs={'params': True},
                in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.depth, metadata_params={nn.PARTITION_NAME: 'layers'})
            self.layers = scanned(cfg, name='layers')
        else:
            self.blocks = [block(cfg, name=f'layers_{i}') for i in range(cfg.depth)]
        self.final_norm = layers.RMSNorm(cfg.norm_eps, jnp.dtype(cfg.param_dtype))

    def embed(self, tokens: Array) -> Array:
        """``int32[B, T]`` token ids -> ``dtype[B, T, D]`` embeddings, scaled by ``sqrt(D)``."""
        x = self.embedder.encode(tokens)
        return nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))

    def __call__(self, x: Array, positions: Array, attn_mask: Array, cache: dict[str, Array] | None = None,
                 decode: bool = False, logits_index: Array | None = None):
        """Runs the decoder on input embeddings.

        Args:
          x: ``[B, T, D]`` input embeddings (from :meth:`embed`, or image + text from the VLM).
          positions: ``int32[B, T]`` RoPE positions (count real tokens only, starting at 0).
          attn_mask: ``bool[B, T, S]``; True = query ``q`` may attend key ``k``. ``S = T`` without cache,
            ``S`` = the cache length with ``decode=True`` (keys are then the cache slots after this call's
            write at ``cache['end']``).
          cache: with ``decode=True``, a cache from :func:`init_cache` (or a previous call).
          decode: write this call's keys/values into ``cache`` and return the updated cache.
          logits_index: optional ``int32[B, P]``: compute logits only at these time steps (saves the
            ``[B, T, V]`` tensor at prefill).
        Returns:
          ``(logits float32[B, T or P, V], new cache or None)``.
        """
        cfg = self.config
        if decode and cache is None:
            raise ValueError('GemmaDecoder: decode=True needs a cache (see gemma.init_cache)')
        if not decode and cache is not None:
            raise ValueError('GemmaDecoder: a cache was given without decode=True')
        x = nn.with_logical_constraint(x.astype(jnp.dtype(cfg.dtype)), ('act_batch', 'act_len', 'act_embed'))
        positions = positions.astype(jnp.int32)
        kv_positions = cache_end = None
        if decode:
            cache_end = cache['end']
            kv_positions = layers.write_cache(cache['pos'], positions, cache_end)
        local = jnp.asarray(cfg.local_layers)
        new_ring = None
        if cfg.scan_layers:
            stacked = (cache['k'], cache['v']) if decode else None
            x, new_kv = self.layers(x, local, stacked, positions, attn_mask, kv_positions, cache_end)
        else:
            ring = decode and 'ring' in cache
            context = None
            if ring:
                context, new_ring = ring_context(cache['ring'], attn_mask, kv_positions, positions, cache_end)
            new_kv = ([], []) if ring else (cache['k'], cache['v']) if decode else None
            for i, block in enumerate(self.blocks):
                layer_cache = (cache['k'][i], cache['v'][i]) if decode else None
                x, kv = block(x, cfg.is_local(i), layer_cache, positions, attn_mask, kv_positions, cache_end,
                              context if ring and cfg.is_local(i) else None)
                if ring:
                    new_kv[0].append(kv[0])
                    new_kv[1].append(kv[1])
                elif decode:  # an in-place update of the stacked buffer under jit
                    new_kv = (new_kv[0].at[i].set(kv[0]), new_kv[1].at[i].set(kv[1]))
            if ring:
                new_kv = (tuple(new_kv[0]), tuple(new_kv[1]))

        x = self.final_norm(x)
        if logits_index is not None:
            x = jnp.take_along_axis(x, logits_index[:, :, None].astype(jnp.int32), axis=1)
        logits = layers.softcap(self.embedder.decode(x), cfg.final_logit_softcap)
        logits = nn.with_logical_constraint(logits, ('act_batch', 'act_len', 'act_vocab'))
        new_cache = None
        if decode:
            new_cache = {'k': new_kv[0], 'v': new_kv[1], 'pos': kv_positions,
                         'end': cache_end + jnp.int32(positions.shape[1])}
            if new_ring is not None:
                new_cache['ring'] = new_ring
        return logits, new_cache
