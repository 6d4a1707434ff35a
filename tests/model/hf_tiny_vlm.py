"""Tiny random Hugging Face VLMs (PaliGemma + Gemma, PaliGemma + Gemma 2, Gemma 3) built offline for tests.

Shared by test_vlm_parity.py and test_convert.py. Every weight gets noise on top of HF's init so that zero-
centred norms and zero biases cannot hide a mapping bug. For decoding tests, `hf_decoding_model` redraws the
decoder's weights with a small embedding spread: with HF's init the greedy continuation repeats one token, so a
decoder whose new tokens ignore the KV cache would still match.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

from medclm_jax.model import vlm

VOCAB = 300
IMAGE_TOKEN, BOI, EOI = 299, 297, 298
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, layer_norm_eps=1e-6, vision_use_head=False)
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, head_dim=16,
            vocab_size=VOCAB, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0)
KINDS = ("paligemma", "paligemma2", "gemma3")


def hf_config(kind: str):
    """A transformers config of the given kind (real architecture, tiny sizes)."""
    if kind == "paligemma":
        text = dict(TEXT, model_type="gemma", num_key_value_heads=1)
    elif kind == "paligemma2":
        # Window 24: longer than the image + prompt prefix (20) so HF's and our prefix semantics agree, shorter
        # than the whole sequence (26) so the window still bites on the answer.
        text = dict(TEXT, model_type="gemma2", num_key_value_heads=2, sliding_window=24, query_pre_attn_scalar=24,
                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    elif kind == "gemma3":
        text = dict(TEXT, num_key_value_heads=2, sliding_window=6, query_pre_attn_scalar=24,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
        return transformers.Gemma3Config(vision_config=VISION, text_config=text, mm_tokens_per_image=4,
                                         image_token_index=IMAGE_TOKEN, boi_token_index=BOI, eoi_token_index=EOI,
                                         bos_token_id=2, eos_token_id=1, pad_token_id=0)
    else:
        raise ValueError(kind)
    return transformers.PaliGemmaConfig(vision_config=VISION, text_config=text, image_token_index=IMAGE_TOKEN,
                                        projection_dim=TEXT["hidden_size"], vocab_size=VOCAB, bos_token_id=2,
                                        eos_token_id=1, pad_token_id=0)


def hf_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = hf_config(kind)
    cls = (transformers.Gemma3ForConditionalGeneration if kind == "gemma3"
           else transformers.PaliGemmaForConditionalGeneration)
    model = cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def hf_decoding_model(kind: str, seed: int = 0):
    """`hf_model` with the text decoder redrawn (embeddings 0.02, norms 0.1, matrices 0.3, as test_decode.py):
    greedy continuations then vary from step to step and depend on the whole prompt."""
    model = hf_model(kind, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                std = 0.02 if "embed" in name else 0.1 if "norm" in name else 0.3
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def prompts(cfg, lengths, seed: int = 0) -> dict[str, np.ndarray]:
    """Image + prompt batch for `vlm.generate` (no answer): row i has `lengths[i]` words after <bos> (Gemma 3:
    the image placeholders after the first two words), right-padded to the longest row."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        words = [int(w) for w in rng.integers(5, 290, n)]  # never a special id
        rows.append([2, *words] if cfg.family == "paligemma"
                    else [2, *words[:2], *vlm.image_placeholder_ids(cfg), *words[2:]])
    t = max(len(r) for r in rows)
    text, mask_ar, mask_loss, mask_input = (np.zeros((len(rows), t), np.int32) for _ in range(4))
    for i, row in enumerate(rows):
        text[i, :len(row)] = row
        mask_input[i, :len(row)] = 1
    if cfg.family == "gemma3":
        mask_ar[:] = 1  # plain causal, as transformers' Gemma 3; PaliGemma: the whole prompt is prefix (0)
    image = rng.uniform(-1, 1, (len(rows), 32, 32, 3)).astype(np.float32)
    return {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_loss, "mask_input": mask_input}


def batch(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """Two examples following the batch contract; the second is shorter (right padding)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    words = lambda n: list(rng.integers(5, 290, n))  # noqa: E731  (never a special id)
    if cfg.family == "paligemma":
        # prefix: bos + 3 prompt tokens (+ image prefix 16) = 20; answer: 6 tokens; row 1 has 2 pads.
        rows = [([2, *words(3)], words(5) + [1]), ([2, *words(3)], words(3) + [1])]
        t = 10
    else:
        place = vlm.image_placeholder_ids(cfg)
        rows = [([2, *words(2), *place, *words(2)], words(4) + [1]), ([2, *words(1), *place], words(2) + [1])]
        t = 16
    text, mask_ar, mask_loss, mask_input = (np.zeros((2, t), np.int32) for _ in range(4))
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        text[i, :n] = prompt + answer
        mask_input[i, :n] = 1
        mask_loss[i, len(prompt):n] = 1
        mask_ar[i, len(prompt):] = 1
        if cfg.family == "gemma3":
            mask_ar[i] = 1  # plain causal, as transformers' Gemma 3
    return {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_loss, "mask_input": mask_input}


def hf_text_logits(model, cfg, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """HF logits [B, T, V] aligned with our `text` positions (PaliGemma's image prefix dropped)."""
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return out.logits.float().numpy()[:, cfg.num_prefix_tokens:]
