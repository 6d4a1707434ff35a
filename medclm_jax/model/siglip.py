"""SigLIP vision encoder (ViT) as used by PaliGemma 1/2 and Gemma 3 / MedGemma.

Patch embedding (a dense layer over flattened non-overlapping patches, the same linear map as HF's stride-P
Conv2d), learned position embeddings, pre-LN encoder blocks (LayerNorm -> multi-head attention -> residual,
LayerNorm -> GELU-tanh MLP -> residual), a final LayerNorm. No pooling head: PaliGemma and Gemma 3 use all patch
tokens; a checkpoint that carries a `head.*` pooling head still loads (the converter skips it).

Shapes: `image` float32[B, H, W, C] in [-1, 1] (NHWC; HF uses NCHW) -> tokens dtype[B, N, D] with
N = (H / patch) * (W / patch), patches in row-major order (the order HF's conv + flatten produces).

Every param carries logical axis names (`patch`, `vision_pos`, `embed`, `mlp`, `q_heads`, `head_dim`, `norm`,
and `layers` for the stacked axis under `scan_layers`); activations are constrained with `act_*` names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medclm_jax.model.layers import dense

Array = jax.Array

REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # save matmul outputs
    "full": jax.checkpoint_policies.nothing_saveable,  # save only block inputs
}


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Size and numerics of a SigLIP ViT.

    Attributes:
      image_size: input side length in pixels (square images).
      patch_size: patch side length in pixels.
      width: token width D.
      depth: number of encoder blocks.
      mlp_dim: hidden width of the block MLP.
      num_heads: attention heads (head_dim = width / num_heads).
      layer_norm_eps: LayerNorm epsilon (HF `layer_norm_eps`).
      num_channels: input channels (3).
      dtype: compute dtype name ('float32' or 'bfloat16').
      param_dtype: parameter dtype name.
      scan_layers: stack the blocks under `nn.scan` (one compiled block; params get a leading `layers` axis).
      remat_policy: 'none', 'minimal' (save matmul outputs) or 'full' (save nothing) rematerialisation per block.
      attention: 'auto' (cuDNN flash attention on a GPU in bf16/fp16, else XLA), 'xla' (logits materialized:
        [B, heads, N, N] per layer, 1 GiB per 896 px image in fp32) or 'cudnn'. At 896 px (4096 patches, MedGemma)
        the materialized logits dominate the vision tower's time and memory on a GPU.
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    layer_norm_eps: float = 1e-6
    num_channels: int = 3
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"SiglipConfig: width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SiglipConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.remat_policy not in ("none", *REMAT_POLICIES):
            raise ValueError(f"SiglipConfig: remat_policy {self.remat_policy!r} not in none/minimal/full")
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"SiglipConfig: attention {self.attention!r} not in auto/xla/cudnn")


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def use_cudnn_attention(choice: str, dtype: Any) -> bool:
    """Whether to run attention through cuDNN's fused (flash) kernel: ``'cudnn'`` always (an unsupported
    setting then fails loudly), ``'auto'`` when the default backend is a GPU and the compute dtype is 16-bit
    (cuDNN's kernel takes bf16/fp16 only), ``'xla'`` never."""
    if choice == "cudnn":
        return True
    return choice == "auto" and jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


def patchify(image: Array, patch_size: int) -> Array:
    """Cuts images into non-overlapping patches.

    Args:
      image: [B, H, W, C].
      patch_size: P; H and W must be multiples of P.

    Returns:
      [B, (H/P)*(W/P), P*P*C]: patches in row-major grid order, each flattened as (row, col, channel).
    """
    b, h, w, c = image.shape
    gh, gw = h // patch_size, w // patch_size
    x = image.reshape(b, gh, patch_size, gw, patch_size, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (as torch does for fp32 models), cast back to the compute dtype."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (d,), ("norm",), self.param_dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (d,), ("norm",), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class Attention(nn.Module):
    """Full (bidirectional) multi-head self-attention with biases; softmax in float32."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, h, hd = cfg.width, cfg.num_heads, cfg.head_dim
        init = nn.initializers.lecun_normal()

        def proj(name):
            w = _param(self, f"{name}_kernel", init, (d, h, hd), ("embed", "q_heads", "head_dim"), pdt)
            b = _param(self, f"{name}_bias", nn.initializers.zeros, (h, hd), ("q_heads", "head_dim"), pdt)
            return dense(x, w.astype(dt)) + b.astype(dt)

        q, k, v = proj("q"), proj("k"), proj("v")
        q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
        if use_cudnn_attention(cfg.attention, dt):
            out = jax.nn.dot_product_attention(q, k, v, scale=hd**-0.5, implementation="cudnn")
        else:
            logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) * hd**-0.5
            probs = jax.nn.softmax(logits, axis=-1).astype(dt)
            out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
        wo = _param(self, "out_kernel", init, (h, hd, d), ("q_heads", "head_dim", "embed"), pdt)
        bo = _param(self, "out_bias", nn.initializers.zeros, (d,), ("embed",), pdt)
        return dense(out, wo.astype(dt), 2) + bo.astype(dt)


class Mlp(nn.Module):
    """Two dense layers with GELU (tanh approximation, HF `gelu_pytorch_tanh`)."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.xavier_uniform()
        w1 = _param(self, "fc1_kernel", init, (cfg.width, cfg.mlp_dim), ("embed", "mlp"), pdt)
        b1 = _param(self, "fc1_bias", nn.initializers.zeros, (cfg.mlp_dim,), ("mlp",), pdt)
        w2 = _param(self, "fc2_kernel", init, (cfg.mlp_dim, cfg.width), ("mlp", "embed"), pdt)
        b2 = _param(self, "fc2_bias", nn.initializers.zeros, (cfg.width,), ("embed",), pdt)
        h = dense(x, w1.astype(dt)) + b1.astype(dt)
        h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
        h = jax.nn.gelu(h, approximate=True)
        return dense(h, w2.astype(dt)) + b2.astype(dt)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block. `__call__(x, _)` returns `(x, None)` so it can be scanned."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, x: Array, _=None):
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        x = x + Attention(cfg, name="attn")(LayerNorm(cfg.layer_norm_eps, dt, pdt, name="ln1")(x))
        x = x + Mlp(cfg, name="mlp")(LayerNorm(cfg.layer_norm_eps, dt, pdt, name="ln2")(x))
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        return x, None


class SiglipEncoder(nn.Module):
    """Image -> patch tokens (before any projector). See the module docstring for shapes."""

    cfg: SiglipConfig

    @nn.compact
    def __call__(self, image: Array) -> Array:
        """Encodes images.

        Args:
          image: float[B, H, W, C] in [-1, 1]; H = W = cfg.image_size.

        Returns:
          dtype[B, N, D] final-LayerNormed patch tokens, N = cfg.num_patches.
        """
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if image.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(
                f"SigLIP expects images [B, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}] (NHWC), "
                f"got {tuple(image.shape)}"
            )
        patch_dim = cfg.patch_size * cfg.patch_size * cfg.num_channels
        w = _param(self, "patch_kernel", nn.initializers.lecun_normal(), (patch_dim, cfg.width),
                   ("patch", "embed"), pdt)
        b = _param(self, "patch_bias", nn.initializers.zeros, (cfg.width,), ("embed",), pdt)
        pos = _param(self, "pos_embedding", nn.initializers.normal(cfg.width**-0.5),
                     (cfg.num_patches, cfg.width), ("vision_pos", "embed"), pdt)
        x = patchify(image.astype(dt), cfg.patch_size)
        x = dense(x, w.astype(dt)) + b.astype(dt)
        x = x + pos.astype(dt)[None]
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))

        block = EncoderBlock
        if cfg.remat_policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=cfg.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, name="layers")(x, None)
        else:
            for i in range(cfg.depth):
                x, _ = block(cfg, name=f"layer_{i}")(x, None)
        return LayerNorm(cfg.layer_norm_eps, dt, pdt, name="final_ln")(x)
