"""The vision-language model: SigLIP + projector + Gemma decoder, for PaliGemma 1/2 and Gemma 3 (MedGemma).

Batch contract (one dict, host numpy or device arrays; B = batch, T = text length, H = W = image size):

  image       float32[B, H, W, 3]  pixels scaled to [-1, 1] (NHWC), one image per example.
  text        int32[B, T]          prompt + answer token ids, right-padded with pad ids.
                                   PaliGemma: no image tokens in `text`; the image tokens are a prefix.
                                   Gemma 3: `text` holds the image placeholders where the image goes
                                   (`image_placeholder_ids(cfg)`: <start_of_image>, 256 x image token,
                                   <end_of_image>); their embeddings are replaced by the image tokens.
  mask_ar     int32[B, T]          big_vision's autoregressive mask: 0 = part of the fully-visible prefix
                                   (image + prompt), 1 = causal (answer). Token q sees key k iff
                                   cumsum(mask_ar)[k] <= cumsum(mask_ar)[q]. All ones = plain causal LM.
  mask_loss   int32[B, T]          1 where the token is a target (used by the losses, not by the model).
  mask_input  int32[B, T]          1 = real token, 0 = padding.

On top of the prefix-LM rule, tokens of one image block always see each other (bidirectional image block);
padding keys are never seen. PaliGemma's image tokens are prefix tokens (mask_ar 0). Positions count real
tokens from 0 (RoPE is relative, so HF's 1-based PaliGemma positions give the same logits). Local (sliding)
layers also drop keys with q_pos - k_pos >= window, even inside the prefix; HF's PaliGemma 2 keeps the whole
prefix visible there, which differs only for prefixes longer than the window (4096 in PaliGemma 2).

Entry points:
  `VLM(cfg).apply(variables, batch)`      float32[B, T, V] logits aligned with `text` (PaliGemma's image
                                          positions are not computed).
  `VLM.embed_inputs(image, text, mask_ar, mask_input)`
                                          (embeds [B, L, D], attention mask bool[B, L, L], positions int32[B, L]),
                                          L = num_image_tokens + T (PaliGemma) or T (Gemma 3).
  `VLM.prefill_inputs(...)`               (embeds, input_mask bool[B, L], attention mask): `decode.decode`'s inputs.
  `generate(cfg, variables, batch, max_new_tokens=...)`
                                          KV-cache decoding of answers after image + prompt.
  `hf_inputs(cfg, batch)`                 the equivalent transformers inputs (parity tests, HF baselines).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medclm_jax.model import decode, layers
from medclm_jax.model.gemma import GemmaConfig, GemmaDecoder
from medclm_jax.model.siglip import SiglipConfig, SiglipEncoder

Array = jax.Array
FAMILIES = ("paligemma", "gemma3")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """A whole VLM: which composition, the two towers and the special token ids.

    Attributes:
      family: 'paligemma' (linear projector, image prefix) or 'gemma3' (pooled, RMSNorm + projector, image at
        the placeholders).
      vision: the SigLIP tower.
      text: the Gemma decoder.
      image_token_id: the image placeholder id (PaliGemma 257152, Gemma 3 262144).
      mm_tokens_per_image: image tokens after the projector; PaliGemma: all patches (0 = derive), Gemma 3: a
        square number whose root divides the patch grid (256 = 16 x 16 for a 64 x 64 grid).
      boi_token_id, eoi_token_id: Gemma 3's <start_of_image> / <end_of_image> (None for PaliGemma).
      bos_token_id, pad_token_id: the tokenizer's special ids.
      eos_token_id: id, or tuple of ids, that end an answer (MedGemma-it: (1, 106), <eos> and <end_of_turn>).
    """

    family: str
    vision: SiglipConfig
    text: GemmaConfig
    image_token_id: int
    mm_tokens_per_image: int = 0
    boi_token_id: int | None = None
    eoi_token_id: int | None = None
    bos_token_id: int = 2
    eos_token_id: int | tuple[int, ...] = 1
    pad_token_id: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"VLMConfig.family={self.family!r}: expected one of {FAMILIES}")
        if self.family == "gemma3":
            side = math.isqrt(self.mm_tokens_per_image)
            if side * side != self.mm_tokens_per_image or side == 0 or self.vision.grid_size % side:
                raise ValueError(f"VLMConfig: mm_tokens_per_image={self.mm_tokens_per_image} must be a square "
                                 f"whose root divides the {self.vision.grid_size}-patch grid")
        elif self.mm_tokens_per_image not in (0, self.vision.num_patches):
            raise ValueError(f"VLMConfig: PaliGemma uses all {self.vision.num_patches} patches as image tokens, "
                             f"got mm_tokens_per_image={self.mm_tokens_per_image}")
        if self.family == "gemma3" and not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(f"VLMConfig: image_token_id {self.image_token_id} outside the vocabulary "
                             f"({self.text.vocab_size})")

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the decoder sees per image."""
        return self.mm_tokens_per_image if self.family == "gemma3" else self.vision.num_patches

    @property
    def num_prefix_tokens(self) -> int:
        """Positions in front of `text` in the decoder sequence (PaliGemma's image prefix; 0 for Gemma 3)."""
        return self.num_image_tokens if self.family == "paligemma" else 0


def image_placeholder_ids(cfg: VLMConfig) -> list[int]:
    """Token ids a Gemma 3 prompt carries where the image goes ([] for PaliGemma, whose image is a prefix)."""
    if cfg.family != "gemma3":
        return []
    return [cfg.boi_token_id, *[cfg.image_token_id] * cfg.num_image_tokens, cfg.eoi_token_id]


def validate_batch(cfg: VLMConfig, batch: Mapping[str, Any]) -> None:
    """Host-side check of a batch against the contract (run it on a first batch; jit cannot raise).

    Raises:
      ValueError: naming the key and what is wrong (shape, range, image placeholder count).
    """
    b, t = np.shape(batch["text"])
    size = cfg.vision.image_size
    want = {"image": (b, size, size, cfg.vision.num_channels), "text": (b, t), "mask_ar": (b, t),
            "mask_loss": (b, t), "mask_input": (b, t)}
    for key, shape in want.items():
        if key not in batch:
            raise ValueError(f"batch: missing key {key!r} (the contract has {sorted(want)})")
        if tuple(np.shape(batch[key])) != shape:
            raise ValueError(f"batch[{key!r}]: shape {tuple(np.shape(batch[key]))}, expected {shape}")
    image = np.asarray(batch["image"])
    if image.size and (image.min() < -1.0001 or image.max() > 1.0001):
        raise ValueError(f"batch['image']: values in [{image.min():.3g}, {image.max():.3g}], expected [-1, 1]")
    text = np.asarray(batch["text"])
    if text.size and (text.min() < 0 or text.max() >= cfg.text.vocab_size):
        raise ValueError(f"batch['text']: ids outside [0, {cfg.text.vocab_size})")
    counts = ((text == cfg.image_token_id) & (np.asarray(batch["mask_input"]) != 0)).sum(axis=1)
    expected = cfg.num_image_tokens if cfg.family == "gemma3" else 0
    bad = np.flatnonzero(counts != expected)
    if bad.size:
        raise ValueError(f"batch['text'] row {bad[0]}: {counts[bad[0]]} image placeholder tokens "
                         f"({cfg.image_token_id}), expected {expected} for {cfg.family}")


def attention_mask(mask_ar: Array, mask_input: Array, is_image: Array) -> Array:
    """Prefix-LM mask with bidirectional image blocks.

    Args:
      mask_ar: int[B, L] (0 = prefix, 1 = causal; see the module docstring).
      mask_input: int/bool[B, L], 1 = real token.
      is_image: bool[B, L], True at image tokens; each maximal run is one block.

    Returns:
      bool[B, L, L]: [b, q, k] True = query q may attend key k. Every query sees itself, so padding rows
      are never empty (their outputs are ignored).
    """
    seg = jnp.cumsum(mask_ar.astype(jnp.int32), axis=1)
    mask = seg[:, None, :] <= seg[:, :, None]
    prev = jnp.pad(is_image, ((0, 0), (1, 0)))[:, :-1]
    block = jnp.cumsum(is_image & ~prev, axis=1)
    same_block = is_image[:, :, None] & is_image[:, None, :] & (block[:, :, None] == block[:, None, :])
    mask = (mask | same_block) & mask_input.astype(bool)[:, None, :]
    return mask | jnp.eye(mask.shape[1], dtype=bool)[None]


def positions_from_mask(mask_input: Array) -> Array:
    """int32[B, L] RoPE positions: index among the real tokens (padding repeats its neighbour's)."""
    return jnp.maximum(jnp.cumsum(mask_input.astype(jnp.int32), axis=1) - 1, 0)


class PaliGemmaProjector(nn.Module):
    """Linear map from SigLIP width to the decoder width (HF `multi_modal_projector.linear`)."""

    cfg: VLMConfig

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        dv, dt = self.cfg.vision.width, self.cfg.text.width
        dtype, pdtype = jnp.dtype(self.cfg.text.dtype), jnp.dtype(self.cfg.text.param_dtype)
        w = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
                       (dv, dt), pdtype)
        b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (dt,), pdtype)
        return layers.dense(tokens.astype(dtype), w.astype(dtype)) + b.astype(dtype)


class Gemma3Projector(nn.Module):
    """Average-pools the patch grid to `mm_tokens_per_image`, RMSNorm (1 + w), then a bias-free linear map."""

    cfg: VLMConfig

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        cfg = self.cfg
        b, n, dv = tokens.shape
        grid, side = cfg.vision.grid_size, math.isqrt(cfg.mm_tokens_per_image)
        k = grid // side
        x = tokens.reshape(b, side, k, side, k, dv).mean(axis=(2, 4)).reshape(b, side * side, dv)
        pdtype, dtype = jnp.dtype(cfg.text.param_dtype), jnp.dtype(cfg.text.dtype)
        x = layers.RMSNorm(cfg.vision.layer_norm_eps, pdtype, name="mm_soft_emb_norm")(x)
        w = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
                       (dv, cfg.text.width), pdtype)
        return layers.dense(x.astype(dtype), w.astype(dtype))


class VLM(nn.Module):
    """PaliGemma / Gemma 3 multimodal model. Params: {'vision', 'projector', 'decoder'} (decoder = GemmaDecoder)."""

    cfg: VLMConfig

    def setup(self):
        cfg = self.cfg
        self.vision = SiglipEncoder(cfg.vision)
        self.projector = (PaliGemmaProjector if cfg.family == "paligemma" else Gemma3Projector)(cfg)
        self.decoder = GemmaDecoder(cfg.text)

    def encode_image(self, image: Array) -> Array:
        """float32[B, H, W, 3] in [-1, 1] -> dtype[B, num_image_tokens, D_text] image embeddings."""
        x = self.projector(self.vision(image))
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))

    def _merge(self, image: Array, text: Array, mask_ar: Array, mask_input: Array):
        """Image + text embeddings [B, L, D] with mask_ar, mask_input and is_image extended to L."""
        cfg = self.cfg
        img = self.encode_image(image)
        txt = self.decoder.embed(text)
        b, t = text.shape
        if cfg.family == "paligemma":
            m = cfg.num_image_tokens
            x = jnp.concatenate([img.astype(txt.dtype), txt], axis=1)
            mask_ar = jnp.concatenate([jnp.zeros((b, m), jnp.int32), mask_ar.astype(jnp.int32)], axis=1)
            mask_input = jnp.concatenate([jnp.ones((b, m), jnp.int32), mask_input.astype(jnp.int32)], axis=1)
            is_image = jnp.concatenate([jnp.ones((b, m), bool), jnp.zeros((b, t), bool)], axis=1)
        else:
            # The k-th placeholder of a row takes the k-th image token (one image per example).
            is_image = text == cfg.image_token_id
            k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, cfg.num_image_tokens - 1)
            gathered = jnp.take_along_axis(img.astype(txt.dtype), k[:, :, None], axis=1)
            x = jnp.where(is_image[:, :, None], gathered, txt)
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        return x, mask_ar, mask_input, is_image

    def embed_inputs(self, image: Array, text: Array, mask_ar: Array, mask_input: Array):
        """Merges image and text embeddings and builds the attention mask and positions.

        Returns:
          (embeds dtype[B, L, D], attn_mask bool[B, L, L], positions int32[B, L]); L = T + num_prefix_tokens.
        """
        x, mask_ar, mask_input, is_image = self._merge(image, text, mask_ar, mask_input)
        return x, attention_mask(mask_ar, mask_input, is_image), positions_from_mask(mask_input)

    def prefill_inputs(self, image: Array, text: Array, mask_ar: Array, mask_input: Array):
        """What `decode.decode` takes for a prompt batch: (embeds [B, L, D], input_mask bool[B, L],
        attn_mask bool[B, L, L]); `text` holds only the prompt (right-padded)."""
        x, mask_ar, mask_input, is_image = self._merge(image, text, mask_ar, mask_input)
        return x, mask_input.astype(bool), attention_mask(mask_ar, mask_input, is_image)

    def __call__(self, batch: Mapping[str, Array]) -> Array:
        """float32[B, T, V] next-token logits at every `text` position (see the module docstring)."""
        x, mask, positions = self.embed_inputs(batch["image"], batch["text"], batch["mask_ar"],
                                               batch["mask_input"])
        b, t = batch["text"].shape
        index = None
        if self.cfg.num_prefix_tokens:
            index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + self.cfg.num_prefix_tokens, (b, t))
        logits, _ = self.decoder(x, positions, mask, logits_index=index)
        return logits


def generate(cfg: VLMConfig, variables: Any, batch: Mapping[str, Any], *, max_new_tokens: int,
             sampling: decode.Sampling | None = None, rng: Array | None = None,
             eos_id: int | tuple[int, ...] | None = None) -> decode.DecodeOutput:
    """Decodes answers for a batch of image + prompt (`text` = prompt only, right-padded; mask_ar 0 on the
    PaliGemma prefix). Returns `decode.DecodeOutput` (tokens int32[B, max_new_tokens], lengths int32[B])."""
    x, input_mask, mask = _prefill_inputs(VLM(cfg), variables, *(jnp.asarray(batch[k]) for k in
                                                                   ("image", "text", "mask_ar", "mask_input")))
    decoder_vars = {"params": variables["params"]["decoder"]}
    return decode.decode(GemmaDecoder(cfg.text), decoder_vars, x, input_mask, mask, max_new_tokens=max_new_tokens,
                         rng=rng, sampling=sampling or decode.Sampling(),
                         eos_id=cfg.eos_token_id if eos_id is None else eos_id, pad_id=cfg.pad_token_id)


@functools.partial(jax.jit, static_argnums=0)
def _prefill_inputs(model: VLM, variables, image, text, mask_ar, mask_input):
    return model.apply(variables, image, text, mask_ar, mask_input, method=VLM.prefill_inputs)


def dummy_batch(cfg: VLMConfig, batch_size: int = 1, text_len: int = 8) -> dict[str, np.ndarray]:
    """A zero batch with the contract's shapes and dtypes (for init / `jax.eval_shape`)."""
    size = cfg.vision.image_size
    shape = (batch_size, text_len)
    return {"image": np.zeros((batch_size, size, size, cfg.vision.num_channels), np.float32),
            "text": np.zeros(shape, np.int32), "mask_ar": np.ones(shape, np.int32),
            "mask_loss": np.ones(shape, np.int32), "mask_input": np.ones(shape, np.int32)}


def init_params(cfg: VLMConfig, rng: Array, batch_size: int = 1, text_len: int = 8) -> Any:
    """`VLM(cfg).init` on a dummy batch: boxed variables {'params': ...} with logical names (wrap in
    `jax.eval_shape` or a sharded jit so no host holds the whole model)."""
    return VLM(cfg).init(rng, {k: jnp.asarray(v) for k, v in dummy_batch(cfg, batch_size, text_len).items()})


def hf_inputs(cfg: VLMConfig, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The transformers inputs equivalent to `batch` (for parity tests and HF baselines).

    Returns numpy `input_ids`, `attention_mask`, `token_type_ids`, `pixel_values` (NCHW) for
    PaliGemmaForConditionalGeneration / Gemma3ForConditionalGeneration. PaliGemma: `num_prefix_tokens` image
    tokens are prepended, so HF's logits[:, num_prefix_tokens:] align with ours; token_type_ids = 0 on the image
    and the prefix (mask_ar cumsum 0), 1 after (HF can only express one prefix, so mask_ar must be 0s then 1s).
    Gemma 3: token_type_ids = 1 at image placeholders; HF is causal elsewhere, so mask_ar should be all ones.
    """
    text = np.asarray(batch["text"], np.int64)
    mask_input = np.asarray(batch["mask_input"], np.int64)
    mask_ar = np.asarray(batch["mask_ar"], np.int64)
    pixels = np.asarray(batch["image"], np.float32).transpose(0, 3, 1, 2)
    b = text.shape[0]
    if cfg.family == "paligemma":
        m = cfg.num_image_tokens
        ids = np.concatenate([np.full((b, m), cfg.image_token_id, np.int64), text], axis=1)
        attn = np.concatenate([np.ones((b, m), np.int64), mask_input], axis=1)
        ttype = np.concatenate([np.zeros((b, m), np.int64), (np.cumsum(mask_ar, axis=1) > 0).astype(np.int64)], 1)
    else:
        ids, attn = text, mask_input
        ttype = (text == cfg.image_token_id).astype(np.int64)
    return {"input_ids": ids, "attention_mask": attn, "token_type_ids": ttype, "pixel_values": pixels}
