"""The Gemma 1 / 2 / 3 text decoder (PaliGemma, PaliGemma 2, MedGemma) in Flax linen.

One module covers the family; the config switches on what differs:

============  =======================================================================================
Gemma 1       pre-norm blocks, full attention, RoPE base 10k, scale ``head_dim^-0.5``
Gemma 2       + post-attention/post-MLP norms, soft-capped attention (50) and final logits (30),
              alternating local (sliding window) / global layers, scale ``query_pre_attn_scalar^-0.5``
Gemma 3       + QK-norm, 5 local : 1 global layers, RoPE base 10k local / 1M global (linear scaling
              on global layers for the 4B), no soft-caps
============  =======================================================================================

Interface (the VLM composes against it; see ``/work/briefs/M1a_status.md``)::

    dec = GemmaDecoder(cfg)
    x = dec.apply(params, tokens, method=dec.embed)               # [B, T, D], already * sqrt(D)
    logits, cache = dec.apply(params, x, positions, attn_mask)    # float32[B, T, V], None

``attn_mask[b, q, k]`` (True = may attend) is built by the caller (causal, prefix-LM, bidirectional image
blocks); the decoder only adds the sliding window of local layers from the positions. With
``decode=True`` it also takes and returns a KV cache (:func:`init_cache`; driven by ``decode.py``).

Layers are either unrolled (params ``layers_0 .. layers_{L-1}``) or, with ``scan_layers``, one
``nn.scan`` over a stacked ``layers`` subtree whose leading axis has the logical name ``layers``.
The KV cache has the stacked layout ``[L, B, S, K, Dh]`` either way.
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


def init_cache(cfg: GemmaConfig, batch: int, max_len: int, dtype: Any = None) -> dict[str, Array]:
    """An empty KV cache for ``batch`` rows of ``max_len`` slots.

    Returns a dict: ``k, v: dtype[L, B, S, K, Dh]`` (keys after RoPE), ``pos: int32[B, S]`` (position of the
    token in each slot, for the sliding window), ``end: int32[B]`` (next slot each row writes).
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.depth, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {
        'k': jnp.zeros(shape, dtype),
        'v': jnp.zeros(shape, dtype),
        'pos': jnp.zeros((batch, max_len), jnp.int32),
        'end': jnp.zeros((batch,), jnp.int32),
    }


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
                 positions: Array, attn_mask: Array, kv_positions: Array | None, cache_end: Array | None):
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
        y, new_cache = attn(y, positions, attn_mask, inv_freq, window, layer_cache, kv_positions, cache_end)
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

        if cfg.scan_layers:
            stacked = (cache['k'], cache['v']) if decode else None
            x, new_kv = self.layers(x, local, stacked, positions, attn_mask, kv_positions, cache_end)
        else:
            new_kv = (cache['k'], cache['v']) if decode else None
            for i, block in enumerate(self.blocks):
                layer_cache = (cache['k'][i], cache['v'][i]) if decode else None
                x, kv = block(x, cfg.is_local(i), layer_cache, positions, attn_mask, kv_positions, cache_end)
                if decode:  # an in-place update of the stacked buffer under jit
                    new_kv = (new_kv[0].at[i].set(kv[0]), new_kv[1].at[i].set(kv[1]))

        x = self.final_norm(x)
        if logits_index is not None:
            x = jnp.take_along_axis(x, logits_index[:, :, None].astype(jnp.int32), axis=1)
        logits = layers.softcap(self.embedder.decode(x), cfg.final_logit_softcap)
        logits = nn.with_logical_constraint(logits, ('act_batch', 'act_len', 'act_vocab'))
        new_cache = None
        if decode:
            new_cache = {'k': new_kv[0], 'v': new_kv[1], 'pos': kv_positions,
                         'end': cache_end + jnp.int32(positions.shape[1])}
        return logits, new_cache
