"""Analytic model FLOPs of the VLM: the numerator of MFU and the figure printed beside every throughput.

Only matrix multiplications are counted (a [m, k] x [k, n] product costs 2·m·k·n FLOPs); norms, softmax,
activations and RoPE are a few percent and are left out, as in the usual MFU convention (PaLM appendix B,
MaxText). Attention is counted dense over the whole sequence (scores and weighted sum over all L x L pairs),
because that is what the implementation computes: the causal / prefix / sliding-window masks are applied to
a dense matrix, not used to skip work.

One forward pass of one example (image + ``text_len`` text tokens) costs

- **vision** (SigLIP, N patches, width Dv, MLP Fv, depth Lv, patch pixels P·P·C):
  ``2·N·PPC·Dv + Lv·(2·N·(4·Dv² + 2·Dv·Fv) + 4·N²·Dv)``
- **projector**: PaliGemma ``2·N·Dv·D``; Gemma 3 ``2·M·Dv·D`` after pooling to M tokens (pooling is additions)
- **decoder** over all L = prefix + text positions (width D, H query heads, K KV heads, head dim Dh, GeGLU F):
  ``Ld·(2·L·D·Dh·(2H + 2K) + 4·L²·H·Dh + 6·L·D·F)``
- **logits** (tied embedding, vocabulary V) at the ``text_len`` positions whose logits the model computes:
  ``2·text_len·D·V``.

"Per token" divides by the ``text_len`` text tokens (the tokens a throughput counts); the image's cost is
spread over them. Training (forward + backward) is 3x the forward: the backward pass costs two matmuls
(input and weight gradients) per forward matmul. Rematerialisation adds work but not *model* FLOPs.
"""

from __future__ import annotations

import dataclasses

from medclm_jax.model.gemma import GemmaConfig
from medclm_jax.model.siglip import SiglipConfig
from medclm_jax.model.vlm import VLMConfig

TRAIN_FACTOR = 3  # forward + backward = 3 forward passes of matmul work


def vision_flops(cfg: SiglipConfig) -> int:
    """Forward matmul FLOPs of the SigLIP tower for one image."""
    n, d, f = cfg.num_patches, cfg.width, cfg.mlp_dim
    patch = 2 * n * (cfg.patch_size**2 * cfg.num_channels) * d
    per_layer = 2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d  # qkv + out, MLP; scores + weighted sum
    return patch + cfg.depth * per_layer


def projector_flops(cfg: VLMConfig) -> int:
    """Forward FLOPs of the vision-to-text projector for one image."""
    return 2 * cfg.num_image_tokens * cfg.vision.width * cfg.text.width


def decoder_flops(cfg: GemmaConfig, seq_len: int) -> int:
    """Forward FLOPs of the decoder layers over ``seq_len`` positions (dense attention, no logits)."""
    d, h, k, dh, f = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    proj = 2 * seq_len * d * dh * (2 * h + 2 * k)  # q and o over H heads, k and v over K heads
    attn = 4 * seq_len * seq_len * h * dh          # q·k scores and probs·v, per query head
    mlp = 6 * seq_len * d * f                      # gate, up, down
    return cfg.depth * (proj + attn + mlp)


def logits_flops(cfg: GemmaConfig, positions: int) -> int:
    """Forward FLOPs of the tied-embedding output layer at ``positions`` positions."""
    return 2 * positions * cfg.width * cfg.vocab_size


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one example, by part, and the per-token figures derived from them."""

    vision: int
    projector: int
    decoder: int
    logits: int
    text_len: int
    seq_len: int

    @property
    def forward(self) -> int:
        """Forward FLOPs of one example."""
        return self.vision + self.projector + self.decoder + self.logits

    @property
    def per_token(self) -> float:
        """Forward FLOPs per text token."""
        return self.forward / self.text_len

    @property
    def train_per_token(self) -> float:
        """Forward + backward FLOPs per text token: what a training throughput multiplies for MFU."""
        return TRAIN_FACTOR * self.per_token


def model_flops(cfg: VLMConfig, text_len: int) -> FlopCount:
    """Counts one example's forward FLOPs for ``cfg`` with ``text_len`` text tokens.

    The decoder sequence is the image prefix plus the text for PaliGemma (``num_prefix_tokens + text_len``);
    for Gemma 3 the image tokens sit inside ``text`` (its placeholders), so it is ``text_len``. Logits are
    computed at the ``text_len`` text positions, as ``VLM.__call__`` does.
    """
    if text_len <= 0:
        raise ValueError(f"text_len must be positive, got {text_len}")
    seq_len = cfg.num_prefix_tokens + text_len
    return FlopCount(vision=vision_flops(cfg.vision), projector=projector_flops(cfg),
                     decoder=decoder_flops(cfg.text, seq_len), logits=logits_flops(cfg.text, text_len),
                     text_len=text_len, seq_len=seq_len)


def flops_per_token(cfg: VLMConfig, text_len: int, *, train: bool = True) -> float:
    """Model FLOPs per text token: forward + backward when ``train``, else forward only."""
    count = model_flops(cfg, text_len)
    return count.train_per_token if train else count.per_token


def decode_flops_per_token(cfg: GemmaConfig, context_len: int) -> int:
    """Forward FLOPs of one decoding step with a KV cache of ``context_len`` keys (one new token).

    The projections, MLP and logits run on one position; attention reads ``context_len`` cached keys.
    """
    d, h, k, dh, f = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    per_layer = 2 * d * dh * (2 * h + 2 * k) + 4 * context_len * h * dh + 6 * d * f
    return cfg.depth * per_layer + logits_flops(cfg, 1)


def mfu(tokens_per_second: float, flops_per_token_: float, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (e.g. H200 bf16 dense 989e12)."""
    return tokens_per_second * flops_per_token_ / (peak_flops * num_devices)
