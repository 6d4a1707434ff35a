"""Hugging Face <-> medclm names, shapes and configs for the Gemma 1/2/3 text decoder.

Conversion runs one tensor at a time: import pulls each HF tensor through ``get_tensor(name)`` (a lazy
safetensors reader, or a state dict's ``__getitem__``) and writes it into its place in the param tree
(preallocated per stacked leaf when ``scan_layers``); export is a generator of ``(hf_name, array)``, so
neither direction ever holds two copies of the model.

The HF names sit under a prefix that depends on the model class (transformers 5.x state dicts):

=============================================  =================================
``GemmaForCausalLM`` / ``Gemma2..`` / ``Gemma3ForCausalLM``    ``model.``
``PaliGemmaForConditionalGeneration``, ``Gemma3ForConditionalGeneration``  ``model.language_model.``
Hub safetensors of PaliGemma / Gemma 3 (the 4.x layout)         ``language_model.model.``
=============================================  =================================

:func:`find_text_prefix` finds it from a list of tensor names. ``lm_head.weight`` is tied to the
embedding: import ignores it and export does not emit it (``tie_word_embeddings`` is true).

Layout changes (HF ``nn.Linear`` weights are ``[out, in]``)::

    q_proj [H*Dh, D] -> attn/q [D, H, Dh]      o_proj [D, H*Dh] -> attn/o [H, Dh, D]
    k_proj, v_proj [K*Dh, D] -> [D, K, Dh]     gate/up_proj [F, D] -> [D, F]    down_proj [D, F] -> [F, D]

Gemma 1's ``post_attention_layernorm`` is the norm *before* the MLP (our ``pre_ffw_norm``); in Gemma 2/3
it is the post-attention norm and ``pre_feedforward_layernorm`` is the pre-MLP one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from medclm_jax.model.gemma import GemmaConfig

_HF_MODEL_TYPES = {'gemma': 'gemma1', 'gemma2': 'gemma2', 'gemma3_text': 'gemma3'}
_HF_DEFAULTS = {  # transformers' defaults for keys real config.json files often omit
    'gemma1': dict(head_dim=256, rms_norm_eps=1e-6, rope_theta=10_000.0),
    'gemma2': dict(head_dim=256, rms_norm_eps=1e-6, rope_theta=10_000.0, query_pre_attn_scalar=256,
                   sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    'gemma3': dict(head_dim=256, rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                   query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6),
}


# ---------------------------------------------------------------------------------------------------------
# Tensor mapping.
# ---------------------------------------------------------------------------------------------------------

def _layer_entries(cfg: GemmaConfig) -> list[tuple[tuple[str, ...], str, tuple[int, ...], str]]:
    """Per-layer ``(our path, HF suffix, HF shape, transform)`` for this config."""
    d, f, h, kh, dh = cfg.width, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    entries = [
        (('attn', 'q'), 'self_attn.q_proj.weight', (h * dh, d), 'heads_in'),
        (('attn', 'k'), 'self_attn.k_proj.weight', (kh * dh, d), 'heads_in'),
        (('attn', 'v'), 'self_attn.v_proj.weight', (kh * dh, d), 'heads_in'),
        (('attn', 'o'), 'self_attn.o_proj.weight', (d, h * dh), 'heads_out'),
        (('mlp', 'gate'), 'mlp.gate_proj.weight', (f, d), 'transpose'),
        (('mlp', 'up'), 'mlp.up_proj.weight', (f, d), 'transpose'),
        (('mlp', 'down'), 'mlp.down_proj.weight', (d, f), 'transpose'),
        (('pre_attn_norm', 'scale'), 'input_layernorm.weight', (d,), 'copy'),
    ]
    if cfg.qk_norm:
        entries += [(('attn', 'q_norm', 'scale'), 'self_attn.q_norm.weight', (dh,), 'copy'),
                    (('attn', 'k_norm', 'scale'), 'self_attn.k_norm.weight', (dh,), 'copy')]
    if cfg.post_norms:
        entries += [(('post_attn_norm', 'scale'), 'post_attention_layernorm.weight', (d,), 'copy'),
                    (('pre_ffw_norm', 'scale'), 'pre_feedforward_layernorm.weight', (d,), 'copy'),
                    (('post_ffw_norm', 'scale'), 'post_feedforward_layernorm.weight', (d,), 'copy')]
    else:
        entries += [(('pre_ffw_norm', 'scale'), 'post_attention_layernorm.weight', (d,), 'copy')]
    return entries


def _to_ours(w: np.ndarray, transform: str, hf_shape: tuple[int, ...], cfg: GemmaConfig) -> np.ndarray:
    if transform == 'heads_in':  # [N*Dh, D] -> [D, N, Dh]
        return w.T.reshape(cfg.width, hf_shape[0] // cfg.head_dim, cfg.head_dim)
    if transform == 'heads_out':  # [D, H*Dh] -> [H, Dh, D]
        return w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.width)
    if transform == 'transpose':
        return w.T
    return w


def _to_hf(w: np.ndarray, transform: str, hf_shape: tuple[int, ...]) -> np.ndarray:
    if transform == 'heads_in':  # [D, N, Dh] -> [N*Dh, D]
        return w.reshape(w.shape[0], -1).T
    if transform == 'heads_out':  # [H, Dh, D] -> [D, H*Dh]
        return w.reshape(-1, w.shape[-1]).T
    if transform == 'transpose':
        return w.T
    return w


def _fetch(get_tensor: Callable[[str], Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        w = get_tensor(name)
    except KeyError:
        raise ValueError(f'Gemma checkpoint: tensor {name!r} is missing (expected shape {shape}); check the '
                         'prefix (see convert_gemma.find_text_prefix) and that the config matches the '
                         'checkpoint') from None
    w = np.asarray(w)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f'Gemma checkpoint: tensor {name!r} has shape {tuple(w.shape)}, expected {shape} '
                         'for this config')
    return w


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def hf_to_gemma_params(get_tensor: Callable[[str], Any], cfg: GemmaConfig, prefix: str = 'model.') -> dict:
    """Builds the decoder's param tree (the content of ``variables['params']``) from HF tensors.

    Args:
      get_tensor: returns the HF tensor of a full name as an array (numpy, or anything ``np.asarray`` takes,
        e.g. a bf16 ``ml_dtypes`` array); a missing name raises ``KeyError``.
      cfg: the target config; ``scan_layers`` decides the stacked (``layers``) or unrolled (``layers_i``)
        layout and ``param_dtype`` the dtype of the leaves.
      prefix: the HF name prefix of the text model, e.g. ``'model.'`` or ``'model.language_model.'``.
    Returns:
      A nested dict of numpy arrays: ``embedder/embedding``, ``final_norm/scale`` and the layers.
    Raises:
      ValueError: a tensor is missing or has the wrong shape (message names it and both shapes).
    """
    dtype = np.dtype(_np_dtype(cfg.param_dtype))
    params: dict = {}
    emb = _fetch(get_tensor, prefix + 'embed_tokens.weight', (cfg.vocab_size, cfg.width))
    _set(params, ('embedder', 'embedding'), emb.astype(dtype))
    del emb
    _set(params, ('final_norm', 'scale'), _fetch(get_tensor, prefix + 'norm.weight', (cfg.width,)).astype(dtype))
    for path, suffix, hf_shape, transform in _layer_entries(cfg):
        stacked = None
        for i in range(cfg.depth):
            w = _to_ours(_fetch(get_tensor, f'{prefix}layers.{i}.{suffix}', hf_shape), transform, hf_shape, cfg)
            if cfg.scan_layers:
                if stacked is None:
                    stacked = np.empty((cfg.depth,) + w.shape, dtype)
                stacked[i] = w
            else:
                _set(params, (f'layers_{i}',) + path, np.ascontiguousarray(w, dtype))
        if cfg.scan_layers:
            _set(params, ('layers',) + path, stacked)
    return params


def gemma_params_to_hf(params: Mapping, cfg: GemmaConfig, prefix: str = 'model.'
                       ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(hf_name, array)`` for every text-decoder tensor, one at a time, in HF layout.

    ``params`` is the decoder's param tree (numpy or jax arrays, unboxed, stacked or unrolled as
    ``cfg.scan_layers`` says). Arrays keep their dtype; each is copied to host only when yielded.
    ``lm_head.weight`` is not emitted (tied).
    """
    yield prefix + 'embed_tokens.weight', np.asarray(_get(params, ('embedder', 'embedding')))
    for i in range(cfg.depth):
        for path, suffix, hf_shape, transform in _layer_entries(cfg):
            if cfg.scan_layers:
                w = np.asarray(_get(params, ('layers',) + path)[i])
            else:
                w = np.asarray(_get(params, (f'layers_{i}',) + path))
            w = np.ascontiguousarray(_to_hf(w, transform, hf_shape))
            if w.shape != hf_shape:
                raise ValueError(f'Gemma params: {"/".join(path)} of layer {i} gives {suffix} shape {w.shape}, '
                                 f'expected {hf_shape} for this config')
            yield f'{prefix}layers.{i}.{suffix}', w
    yield prefix + 'norm.weight', np.asarray(_get(params, ('final_norm', 'scale')))


def find_text_prefix(names: Iterable[str]) -> str:
    """The prefix in front of ``embed_tokens.weight`` among HF tensor names (e.g. ``'model.language_model.'``)."""
    found = sorted({n[:-len('embed_tokens.weight')] for n in names if n.endswith('embed_tokens.weight')})
    text = [p for p in found if 'vision' not in p]
    if len(text) != 1:
        raise ValueError(f'Gemma checkpoint: expected one "<prefix>embed_tokens.weight" tensor, found prefixes '
                         f'{found}')
    return text[0]


def _np_dtype(name: str):
    if name == 'bfloat16':
        import ml_dtypes  # a jax dependency
        return ml_dtypes.bfloat16
    return np.dtype(name)


# ---------------------------------------------------------------------------------------------------------
# Config mapping.
# ---------------------------------------------------------------------------------------------------------

def _pattern_from_layer_types(layer_types: list[str], preferred: int) -> int:
    local = [t == 'sliding_attention' for t in layer_types]
    unknown = sorted(set(layer_types) - {'sliding_attention', 'full_attention'})
    if unknown:
        raise ValueError(f'Gemma config: unsupported layer_types {unknown}; expected sliding_attention / '
                         'full_attention')
    if not any(local):
        return 0
    depth = len(local)
    candidates = [preferred] + [n for n in range(1, depth + 2) if n != preferred]
    for n in candidates:
        if n and all(((i + 1) % n != 0) == local[i] for i in range(depth)):
            return n
    raise ValueError(f'Gemma config: layer_types {layer_types} do not follow a "every n-th layer global" '
                     'pattern; this decoder supports only such patterns')


def _rope(params: Any, default_theta: float, what: str) -> tuple[float, float]:
    """(theta, linear factor) from a 5.x ``rope_parameters`` entry (or None)."""
    if not params:
        return default_theta, 1.0
    kind = params.get('rope_type', params.get('type', 'default'))
    theta = float(params.get('rope_theta', default_theta))
    if kind == 'default':
        return theta, 1.0
    if kind == 'linear':
        return theta, float(params['factor'])
    raise ValueError(f'Gemma config: {what} rope_type {kind!r} is not supported (default, linear)')


def gemma_config_from_hf(hf_text_config: Mapping | Any, **overrides: Any) -> GemmaConfig:
    """A :class:`GemmaConfig` from an HF text config (``config.json``'s ``text_config`` or a CausalLM config).

    Accepts the transformers 5.x form (``rope_parameters``, ``layer_types``) and the 4.x / Hub form
    (``rope_theta``, ``rope_local_base_freq``, ``rope_scaling``, ``sliding_window_pattern``); missing keys take
    transformers' defaults for that ``model_type``. ``overrides`` set our own fields (``dtype``,
    ``param_dtype``, ``scan_layers``, ``remat_policy``).
    """
    c = dict(hf_text_config.to_dict() if hasattr(hf_text_config, 'to_dict') else hf_text_config)
    model_type = c.get('model_type')
    if model_type not in _HF_MODEL_TYPES:
        raise ValueError(f'Gemma config: model_type {model_type!r} is not supported; expected one of '
                         f'{sorted(_HF_MODEL_TYPES)} (pass the text_config of a multimodal config)')
    variant = _HF_MODEL_TYPES[model_type]
    c = {**_HF_DEFAULTS[variant], **{k: v for k, v in c.items() if v is not None or k.endswith('softcapping')}}
    act = c.get('hidden_activation') or c.get('hidden_act') or 'gelu_pytorch_tanh'
    if act not in ('gelu_pytorch_tanh', 'gelu'):  # 'gelu' in old Gemma configs meant the tanh approximation
        raise ValueError(f'Gemma config: activation {act!r} is not supported (gelu_pytorch_tanh)')
    if c.get('attention_bias'):
        raise ValueError('Gemma config: attention_bias=true is not supported')
    if c.get('use_bidirectional_attention'):
        raise ValueError('Gemma config: use_bidirectional_attention=true is not supported')

    rope = c.get('rope_parameters') or {}
    kw: dict[str, Any] = dict(
        vocab_size=int(c['vocab_size']), width=int(c['hidden_size']), depth=int(c['num_hidden_layers']),
        mlp_dim=int(c['intermediate_size']), num_heads=int(c['num_attention_heads']),
        num_kv_heads=int(c.get('num_key_value_heads') or c['num_attention_heads']),
        head_dim=int(c['head_dim']), variant=variant, norm_eps=float(c['rms_norm_eps']))
    if variant in ('gemma1', 'gemma2'):
        if 'sliding_attention' in rope or 'full_attention' in rope:
            rope = rope.get('full_attention') or {}
        kw['rope_base'], kw['rope_scale'] = _rope(rope or c.get('rope_scaling'), float(c['rope_theta']), 'global')
        if kw['rope_scale'] != 1.0:
            raise ValueError('Gemma config: RoPE scaling is supported on Gemma 3 global layers only')
    if variant == 'gemma2':
        kw.update(post_norms=True, sliding_window=int(c['sliding_window']),
                  query_pre_attn_scalar=float(c['query_pre_attn_scalar']),
                  attn_logit_softcap=c.get('attn_logit_softcapping'),
                  final_logit_softcap=c.get('final_logit_softcapping'),
                  sliding_window_pattern=_pattern_from_layer_types(
                      c.get('layer_types') or ['sliding_attention' if (i + 1) % 2 else 'full_attention'
                                               for i in range(kw['depth'])], 2))
    if variant == 'gemma3':
        if 'full_attention' in rope or 'sliding_attention' in rope:
            glob, loc = rope.get('full_attention') or {}, rope.get('sliding_attention') or {}
        else:
            glob, loc = c.get('rope_scaling') or {}, {}
        kw['rope_base'], kw['rope_scale'] = _rope(glob, float(c['rope_theta']), 'global')
        kw['rope_local_base'], local_scale = _rope(loc, float(c['rope_local_base_freq']), 'local')
        if local_scale != 1.0:
            raise ValueError('Gemma config: RoPE scaling on local (sliding) layers is not supported')
        n = int(c['sliding_window_pattern'])
        types = c.get('layer_types') or ['sliding_attention' if (i + 1) % n else 'full_attention'
                                         for i in range(kw['depth'])]
        # transformers' Gemma3Attention ignores attn_logit_softcapping, so the reference has no attention cap.
        kw.update(qk_norm=True, post_norms=True, sliding_window=int(c['sliding_window']),
                  query_pre_attn_scalar=float(c['query_pre_attn_scalar']),
                  final_logit_softcap=c.get('final_logit_softcapping'),
                  sliding_window_pattern=_pattern_from_layer_types(types, 6))
    for key in ('attn_logit_softcap', 'final_logit_softcap'):
        if kw.get(key) is not None:
            kw[key] = float(kw[key])
    kw.update(overrides)
    return GemmaConfig(**kw)


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)  # transformers' strict configs want an int here


def gemma_config_to_hf(cfg: GemmaConfig) -> dict[str, Any]:
    """The HF text config dict of ``cfg`` (``model_type`` gemma / gemma2 / gemma3_text).

    Writes both the transformers 5.x keys (``rope_parameters``, ``layer_types``) and the legacy ones
    (``rope_theta``, ``rope_local_base_freq``, ``rope_scaling``, ``sliding_window_pattern``) so that 4.x
    and vLLM read it too.
    """
    d: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True, attention_bias=False,
        rope_theta=cfg.rope_base)
    types = ['sliding_attention' if cfg.is_local(i) else 'full_attention' for i in range(cfg.depth)]
    if cfg.variant == 'gemma1':
        if cfg.sliding_window_pattern or cfg.post_norms or cfg.qk_norm or cfg.attn_logit_softcap \
            or cfg.final_logit_softcap or cfg.rope_scale != 1.0:
            raise ValueError('GemmaConfig variant gemma1 with Gemma 2/3 features has no HF equivalent')
        d.update(model_type='gemma', hidden_act='gelu_pytorch_tanh',
                 rope_parameters={'rope_type': 'default', 'rope_theta': cfg.rope_base})
    elif cfg.variant == 'gemma2':
        d.update(model_type='gemma2', hidden_activation='gelu_pytorch_tanh',
                 rope_parameters={'rope_type': 'default', 'rope_theta': cfg.rope_base},
                 query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
                 sliding_window=cfg.sliding_window, layer_types=types,
                 attn_logit_softcapping=cfg.attn_logit_softcap, final_logit_softcapping=cfg.final_logit_softcap)
    else:
        glob = {'rope_type': 'default', 'rope_theta': cfg.rope_base}
        if cfg.rope_scale != 1.0:
            glob = {'rope_type': 'linear', 'rope_theta': cfg.rope_base, 'factor': cfg.rope_scale}
            d['rope_scaling'] = {'rope_type': 'linear', 'factor': cfg.rope_scale}
        d.update(model_type='gemma3_text', hidden_activation='gelu_pytorch_tanh',
                 rope_parameters={'full_attention': glob,
                                  'sliding_attention': {'rope_type': 'default', 'rope_theta': cfg.rope_local_base}},
                 rope_local_base_freq=cfg.rope_local_base,
                 query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
                 sliding_window=cfg.sliding_window, sliding_window_pattern=cfg.sliding_window_pattern or cfg.depth + 1,
                 layer_types=types, attn_logit_softcapping=None, final_logit_softcapping=cfg.final_logit_softcap)
    return d
