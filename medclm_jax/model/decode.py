"""KV-cache decoding for the Gemma decoder: prefill from embeddings, extend one token at a time, sample.

The whole loop (prefill, then ``max_new_tokens`` extend steps in a ``lax.while_loop`` that exits early once
every row has emitted EOS) is one jitted program per (decoder, sampling settings, shapes).

Prompts and padding. A batch holds prompts of different lengths as ``x: [B, T, D]`` with
``input_mask: bool[B, T]`` marking the real tokens. Right padding (the VLM batch layout: image, prompt,
padding) and left padding both work, and so do holes: positions count real tokens only
(``cumsum(input_mask) - 1``, as HF ``generate`` does for left padding), padding slots are never attended,
and row ``b`` writes its generated tokens from slot ``last real index + 1`` on, overwriting its own
right-padding slots, which only then become visible. Every row needs at least one real token.

Cache (``gemma.init_cache``). With unrolled layers (the serving layout, ``medclm convert --layout unrolled``)
every local (sliding-window) layer keeps a ring buffer of ``window`` slots holding each row's latest ``window``
real keys, and global layers a full-length cache of ``S = T + max_new_tokens`` slots: a call's queries attend
to the ring as it was plus the call's own keys, then the ring takes the newest real ones, so prompts longer
than the window, left/right padding and holes all work (``gemma.ring_context``). With ``scan_layers`` every
layer needs one cache shape, so all keep ``S`` slots and local layers see their window through the mask; the
price at long lengths is memory and attention FLOPs of ``S`` instead of ``window`` keys on local layers.

The VLM uses :func:`decode` directly: it prefills its own image + prompt embeddings with its prefix-LM
``attn_mask``, and passes the decoder's own variables (``{'params': params['params'][<decoder name>]}``).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from medclm_jax.model import gemma

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick the next token. ``temperature == 0`` is greedy (argmax; top-k/top-p are then unused).

    ``top_k = 0`` and ``top_p = 1.0`` switch those filters off. Order as in HF: temperature, top-k, top-p.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f'Sampling: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {self}')


@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """``tokens: int32[B, N]`` generated ids (EOS included, ``pad_id`` after it); ``lengths: int32[B]``
    number of generated tokens per row, EOS included."""

    tokens: Array
    lengths: Array


jax.tree_util.register_dataclass(DecodeOutput, data_fields=['tokens', 'lengths'], meta_fields=[])


def sample_logits(logits: Array, rng: Array | None, sampling: Sampling) -> Array:
    """Picks one token per row from ``logits: float32[B, V]`` -> ``int32[B]``."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (the crossing token included).
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < sampling.top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def prefill(decoder: gemma.GemmaDecoder, params: Any, x: Array, input_mask: Array,
            attn_mask: Array | None = None, *, cache_len: int) -> tuple[Array, dict[str, Array]]:
    """Runs the prompt through the decoder and fills the KV cache.

    Args:
      decoder: the ``GemmaDecoder`` module.
      params: its variables, ``{'params': ...}``.
      x: prompt embeddings ``[B, T, D]``.
      input_mask: ``bool[B, T]``, True at real tokens.
      attn_mask: optional ``bool[B, T, T]`` prompt mask (e.g. prefix-LM); default causal. Padding keys are
        masked out in any case.
      cache_len: ``S >= T`` cache slots (prompt + tokens to generate).
    Returns:
      ``(logits float32[B, V] at each row's last real token, state)``; ``state`` holds the cache, the
      visible-slot mask ``valid: bool[B, S]`` and the next position ``next_pos: int32[B]``.
    """
    b, t = input_mask.shape
    input_mask = input_mask.astype(bool)
    if attn_mask is None:
        attn_mask = jnp.tril(jnp.ones((t, t), bool))[None]
    mask = jnp.logical_and(attn_mask, input_mask[:, None, :])
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, cache_len - t)))
    positions = jnp.maximum(jnp.cumsum(input_mask, axis=1) - 1, 0).astype(jnp.int32)
    end = jnp.max(jnp.where(input_mask, jnp.arange(t)[None] + 1, 0), axis=1).astype(jnp.int32)
    cache = gemma.init_cache(decoder.config, b, cache_len)
    logits, cache = decoder.apply(params, x, positions, mask, cache=cache, decode=True,
                                  logits_index=jnp.maximum(end - 1, 0)[:, None])
    cache = dict(cache, end=end)  # generated tokens go right after each row's last real token
    state = {'cache': cache,
             'valid': jnp.pad(input_mask, ((0, 0), (0, cache_len - t))),
             'next_pos': jnp.sum(input_mask, axis=1).astype(jnp.int32)}
    return logits[:, 0], state


def extend(decoder: gemma.GemmaDecoder, params: Any, tokens: Array, state: dict[str, Any]
           ) -> tuple[Array, dict[str, Any]]:
    """Feeds one token per row (``int32[B]``) and returns ``(logits float32[B, V], new state)``."""
    cache = state['cache']
    slots = jnp.arange(state['valid'].shape[1])[None]
    valid = jnp.logical_or(state['valid'], slots == cache['end'][:, None])
    x = decoder.apply(params, tokens[:, None], method=decoder.embed)
    logits, cache = decoder.apply(params, x, state['next_pos'][:, None], valid[:, None, :], cache=cache,
                                  decode=True)
    return logits[:, 0], {'cache': cache, 'valid': valid, 'next_pos': state['next_pos'] + 1}


def _decode(decoder, params, x, input_mask, attn_mask, rng, *, max_new_tokens, sampling, eos_ids, pad_id):
    b, t = input_mask.shape
    logits, state = prefill(decoder, params, x, input_mask, attn_mask, cache_len=t + max_new_tokens)
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)

    def pick(logits, step, done):
        key = None if sampling.temperature == 0.0 else jax.random.fold_in(rng, step)
        token = jnp.where(done, pad_id, sample_logits(logits, key, sampling))
        return token, jnp.logical_or(done, jnp.isin(token, eos))

    def cond(carry):
        step, _, done, _, _ = carry
        return jnp.logical_and(step < max_new_tokens, jnp.logical_not(jnp.all(done)))

    def body(carry):
        step, out, done, token, state = carry
        logits, state = extend(decoder, params, token, state)
        token, done = pick(logits, step, done)
        return step + 1, out.at[:, step].set(token), done, token, state

    token, done = pick(logits, 0, jnp.zeros((b,), bool))
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    _, out, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, done, token, state))
    is_eos = jnp.isin(out, eos)
    first_eos = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first_eos + 1, max_new_tokens).astype(jnp.int32)
    return DecodeOutput(out, lengths)


# Wrapped here rather than decorated: mutmut (`make mutation`) leaves decorated functions unmutated.
_decode = jax.jit(_decode, static_argnames=('decoder', 'max_new_tokens', 'sampling', 'eos_ids', 'pad_id'))


def _eos_tuple(eos_id: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if eos_id is None:
        return ()
    if isinstance(eos_id, numbers.Integral):  # numpy ids too (a tokenizer's or config's np.int64)
        return (int(eos_id),)
    return tuple(int(e) for e in eos_id)


def decode(decoder: gemma.GemmaDecoder, params: Any, x: Array, input_mask: Array, attn_mask: Array | None = None,
           *, max_new_tokens: int, rng: Array | None = None, sampling: Sampling = Sampling(),
           eos_id: int | tuple[int, ...] | None = None, pad_id: int = 0) -> DecodeOutput:
    """Generates up to ``max_new_tokens`` tokens after prompts given as embeddings (jitted; see module doc).

    Args:
      decoder, params: the ``GemmaDecoder`` and its variables ``{'params': ...}``.
      x: prompt embeddings ``[B, T, D]`` (text: ``decoder.embed``; VLM: image + prompt embeddings).
      input_mask: ``bool[B, T]``, True at real tokens (left, right or no padding).
      attn_mask: optional ``bool[B, T, T]`` prompt mask (prefix-LM); default causal.
      max_new_tokens: number of decode steps (the loop stops earlier once every row emitted EOS).
      rng: PRNG key, required when sampling (temperature > 0).
      sampling: :class:`Sampling` (default greedy).
      eos_id: token id, or ids, that end a row; None = never stop early.
      pad_id: written after a row's EOS.
    Returns:
      :class:`DecodeOutput` with ``tokens int32[B, max_new_tokens]`` and ``lengths int32[B]``.
    """
    if max_new_tokens < 1:
        raise ValueError(f'decode: max_new_tokens must be >= 1, got {max_new_tokens}')
    if sampling.temperature > 0 and rng is None:
        raise ValueError('decode: sampling with temperature > 0 needs an rng key')
    if rng is None:
        rng = jax.random.key(0)
    input_mask = jnp.asarray(input_mask, bool)
    if attn_mask is None:  # built here so that prompts with and without a prefix mask share one program
        b, t = input_mask.shape
        attn_mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    attn_mask = jnp.asarray(attn_mask, bool)
    return _decode(decoder, params, x, input_mask, attn_mask, rng,
                   max_new_tokens=int(max_new_tokens), sampling=sampling, eos_ids=_eos_tuple(eos_id),
                   pad_id=int(pad_id))


def generate(decoder: gemma.GemmaDecoder, params: Any, tokens: Array, *, input_mask: Array | None = None,
             max_new_tokens: int, rng: Array | None = None, sampling: Sampling = Sampling(),
             eos_id: int | tuple[int, ...] | None = None, pad_id: int = 0) -> DecodeOutput:
    """Text-only :func:`decode`: ``tokens int32[B, T]`` prompts; ``input_mask`` defaults to ``tokens != pad_id``."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if input_mask is None:
        input_mask = tokens != pad_id
    x = _embed(decoder, params, tokens)
    return decode(decoder, params, x, input_mask, max_new_tokens=max_new_tokens, rng=rng, sampling=sampling,
                  eos_id=eos_id, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=('decoder',))
def _embed(decoder, params, tokens):
    return decoder.apply(params, tokens, method=decoder.embed)
