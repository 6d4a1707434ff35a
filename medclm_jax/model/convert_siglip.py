"""Hugging Face SigLIP vision tower <-> our `SiglipEncoder` params: names, shapes and layouts.

HF names are relative to the vision tower (`embeddings.patch_embedding.weight`, `encoder.layers.{i}...`,
`post_layernorm.*`); the caller passes the prefix of the checkpoint layout it reads or writes. Torch linear weights
are [out, in]; ours are [in, heads, head_dim] / [heads, head_dim, out] / [in, out]. The patch conv weight
[D, C, P, P] becomes a dense kernel over flattened (row, col, channel) patches [P*P*C, D].

Both directions work one tensor at a time: import reads through `get_tensor(name) -> np.ndarray`, export is a
generator of `(hf_name, array)`, so a 400M-parameter tower never exists twice in host memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from medclm_jax.model.safetensors_io import numpy_dtype
from medclm_jax.model.siglip import SiglipConfig

GetTensor = Callable[[str], np.ndarray]


def expect_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Returns `array` or raises a ValueError naming the tensor, the expected and the found shape."""
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, found {tuple(array.shape)}")
    return array


def _layer_from_hf(get: Callable[[str, tuple], np.ndarray], i: int, cfg: SiglipConfig) -> dict[str, Any]:
    d, h, hd, m = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    p = f"encoder.layers.{i}."
    attn = {}
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
        attn[f"{ours}_kernel"] = get(p + f"self_attn.{theirs}.weight", (d, d)).T.reshape(d, h, hd)
        attn[f"{ours}_bias"] = get(p + f"self_attn.{theirs}.bias", (d,)).reshape(h, hd)
    attn["out_kernel"] = get(p + "self_attn.out_proj.weight", (d, d)).T.reshape(h, hd, d)
    attn["out_bias"] = get(p + "self_attn.out_proj.bias", (d,))
    return {
        "ln1": {"scale": get(p + "layer_norm1.weight", (d,)), "bias": get(p + "layer_norm1.bias", (d,))},
        "attn": attn,
        "ln2": {"scale": get(p + "layer_norm2.weight", (d,)), "bias": get(p + "layer_norm2.bias", (d,))},
        "mlp": {
            "fc1_kernel": get(p + "mlp.fc1.weight", (m, d)).T,
            "fc1_bias": get(p + "mlp.fc1.bias", (m,)),
            "fc2_kernel": get(p + "mlp.fc2.weight", (d, m)).T,
            "fc2_bias": get(p + "mlp.fc2.bias", (d,)),
        },
    }


def hf_to_siglip_params(get_tensor: GetTensor, cfg: SiglipConfig, prefix: str = "",
                        dtype: Any = None) -> dict[str, Any]:
    """Builds our SigLIP param tree from HF tensors.

    Args:
      get_tensor: returns the named tensor as a numpy array (lazily, e.g. from safetensors); KeyError if absent.
      cfg: the target config; every tensor's shape is checked against it.
      prefix: the tower's prefix in the checkpoint, e.g. 'vision_tower.vision_model.'.
      dtype: cast each tensor to this numpy dtype (default: the config's param_dtype).

    Returns:
      The `SiglipEncoder` params (no 'params' wrapper); per-layer subtrees are stacked under 'layers' when
      `cfg.scan_layers`. A pooling `head.*` in the checkpoint is ignored (PaliGemma / Gemma 3 do not use it).

    Raises:
      ValueError: a tensor is missing or has the wrong shape (the message names it and the expected shape).
    """
    np_dtype = numpy_dtype(dtype or cfg.param_dtype)

    def get(name: str, shape: tuple) -> np.ndarray:
        try:
            arr = get_tensor(prefix + name)
        except KeyError:
            raise ValueError(f"tensor {prefix + name!r} is missing (expected shape {shape})") from None
        return expect_shape(prefix + name, np.asarray(arr), shape).astype(np_dtype, copy=False)

    d, p, c = cfg.width, cfg.patch_size, cfg.num_channels
    conv = get("embeddings.patch_embedding.weight", (d, c, p, p))
    params: dict[str, Any] = {
        "patch_kernel": conv.transpose(2, 3, 1, 0).reshape(p * p * c, d),
        "patch_bias": get("embeddings.patch_embedding.bias", (d,)),
        "pos_embedding": get("embeddings.position_embedding.weight", (cfg.num_patches, d)),
        "final_ln": {"scale": get("post_layernorm.weight", (d,)), "bias": get("post_layernorm.bias", (d,))},
    }
    if not cfg.scan_layers:
        params.update({f"layer_{i}": _layer_from_hf(get, i, cfg) for i in range(cfg.depth)})
        return params
    # Stacked layout: fill preallocated [depth, ...] arrays layer by layer (never a list of all layers + a stack).
    stacked = None
    for i in range(cfg.depth):
        layer = _layer_from_hf(get, i, cfg)
        if stacked is None:
            stacked = _map(lambda x: np.empty((cfg.depth, *x.shape), x.dtype), layer)
        _map(lambda dst, src: dst.__setitem__(i, src), stacked, layer)
    params["layers"] = stacked
    return params


def siglip_params_to_hf(params: Mapping[str, Any], cfg: SiglipConfig, prefix: str = "") -> Iterator[
        tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` for every tower tensor, in HF layouts, one at a time (inverse of import)."""
    d, h, hd, p, c = cfg.width, cfg.num_heads, cfg.head_dim, cfg.patch_size, cfg.num_channels
    a = lambda x: np.asarray(x)  # noqa: E731  (device -> host, one tensor at a time)
    yield prefix + "embeddings.patch_embedding.weight", a(params["patch_kernel"]).reshape(p, p, c, d).transpose(
        3, 2, 0, 1)
    yield prefix + "embeddings.patch_embedding.bias", a(params["patch_bias"])
    yield prefix + "embeddings.position_embedding.weight", a(params["pos_embedding"])
    for i in range(cfg.depth):
        if cfg.scan_layers:
            layer = _index(params["layers"], i)
        else:
            layer = params[f"layer_{i}"]
        q = f"{prefix}encoder.layers.{i}."
        yield q + "layer_norm1.weight", a(layer["ln1"]["scale"])
        yield q + "layer_norm1.bias", a(layer["ln1"]["bias"])
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
            yield q + f"self_attn.{theirs}.weight", a(layer["attn"][f"{ours}_kernel"]).reshape(d, h * hd).T
            yield q + f"self_attn.{theirs}.bias", a(layer["attn"][f"{ours}_bias"]).reshape(h * hd)
        yield q + "self_attn.out_proj.weight", a(layer["attn"]["out_kernel"]).reshape(h * hd, d).T
        yield q + "self_attn.out_proj.bias", a(layer["attn"]["out_bias"])
        yield q + "layer_norm2.weight", a(layer["ln2"]["scale"])
        yield q + "layer_norm2.bias", a(layer["ln2"]["bias"])
        yield q + "mlp.fc1.weight", a(layer["mlp"]["fc1_kernel"]).T
        yield q + "mlp.fc1.bias", a(layer["mlp"]["fc1_bias"])
        yield q + "mlp.fc2.weight", a(layer["mlp"]["fc2_kernel"]).T
        yield q + "mlp.fc2.bias", a(layer["mlp"]["fc2_bias"])
    yield prefix + "post_layernorm.weight", a(params["final_ln"]["scale"])
    yield prefix + "post_layernorm.bias", a(params["final_ln"]["bias"])


def siglip_config_from_hf(hf: Mapping[str, Any], **overrides) -> SiglipConfig:
    """SiglipConfig from an HF `vision_config` dict (HF defaults filled in for missing keys)."""
    if hf.get("hidden_act", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_fast", "gelu_new"):
        raise ValueError(f"vision_config.hidden_act {hf['hidden_act']!r} is not supported (GELU-tanh only)")
    kw = dict(
        image_size=_scalar_size(hf.get("image_size", 224), "image_size"),
        patch_size=_scalar_size(hf.get("patch_size", 16), "patch_size"),
        width=int(hf.get("hidden_size", 768)),
        depth=int(hf.get("num_hidden_layers", 12)),
        mlp_dim=int(hf.get("intermediate_size", 3072)),
        num_heads=int(hf.get("num_attention_heads", 12)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
        num_channels=int(hf.get("num_channels", 3)),
    )
    kw.update(overrides)
    return SiglipConfig(**kw)


def siglip_config_to_hf(cfg: SiglipConfig) -> dict[str, Any]:
    """The HF `vision_config` dict for `cfg` (no pooling head)."""
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": cfg.width,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "num_channels": cfg.num_channels,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": cfg.layer_norm_eps,
        "attention_dropout": 0.0,
        "vision_use_head": False,
    }


def _scalar_size(value, key: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"vision_config.{key} {value!r}: only square sizes are supported")
        value = value[0]
    return int(value)


def _map(fn, tree, *rest):
    if isinstance(tree, Mapping):
        return {k: _map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    return fn(tree, *rest)


def _index(tree, i: int):
    if isinstance(tree, Mapping):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree[i])
