"""Named model configs: `get_model_config(name) -> VLMConfig`.

`tiny` and `small` are trained from scratch with a tokenizer trained on the dataset (medclm_jax.model.tokenizer:
`<image>` = 4, `<start_of_image>` = 5, `<end_of_image>` = 6). The pretrained presets carry the sizes of the
released Hugging Face checkpoints (their config.json files; vocabularies as stored there: PaliGemma's 257152
big_vision tokens are padded to 257216 rows with `<image>` = 257152, Gemma 3's 262144 to 262208 rows with the
image soft token = 262144). Loading a checkpoint with `medclm convert` derives the config from its own
config.json instead; these presets are for random init, benchmarks and FLOP counts.

Overrides: `get_model_config('small', dtype='bfloat16', scan_layers=True)` applies to both towers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from medclm_jax.model.gemma import GemmaConfig
from medclm_jax.model.siglip import SiglipConfig
from medclm_jax.model.vlm import VLMConfig

# SigLIP So400m/14 (shape-optimized ViT): the vision tower of PaliGemma 1/2 and Gemma 3.
SO400M = dict(patch_size=14, width=1152, depth=27, mlp_dim=4304, num_heads=16)
# Ours for pretrained sizes: bf16 compute, fp32 master params, one scanned block, matmul outputs saved.
BIG = dict(dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="minimal")
GEMMA_2B = dict(vocab_size=257216, width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256,
                variant="gemma1", rope_base=10_000.0)
GEMMA2_2B = dict(vocab_size=257216, width=2304, depth=26, mlp_dim=9216, num_heads=8, num_kv_heads=4, head_dim=256,
                 variant="gemma2", rope_base=10_000.0, sliding_window=4096, sliding_window_pattern=2,
                 attn_logit_softcap=50.0, final_logit_softcap=30.0, query_pre_attn_scalar=256, post_norms=True)
GEMMA3_4B = dict(vocab_size=262208, width=2560, depth=34, mlp_dim=10240, num_heads=8, num_kv_heads=4, head_dim=256,
                 variant="gemma3", rope_base=1_000_000.0, rope_local_base=10_000.0, rope_scale=8.0,
                 sliding_window=1024, sliding_window_pattern=6, query_pre_attn_scalar=256, qk_norm=True,
                 post_norms=True)
TRAINED_TOKENIZER = dict(image_token_id=4, bos_token_id=2, eos_token_id=1, pad_token_id=0)
# Gemma 3's vocabulary: <eos> = 1, <end_of_turn> = 106. Instruction-tuned Gemma 3 / MedGemma ends an answer with
# <end_of_turn> (and `data/prompts.py`'s gemma3 targets end there), so both stop decoding, as in their released
# config.json (`eos_token_id: [1, 106]`).
GEMMA3_EOS_IDS = (1, 106)


def _tiny() -> VLMConfig:
    return VLMConfig(
        family="paligemma",
        vision=SiglipConfig(image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2),
        text=GemmaConfig(vocab_size=2048, width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16),
        **TRAINED_TOKENIZER)


def _tiny_gemma3() -> VLMConfig:
    return VLMConfig(
        family="gemma3",
        vision=SiglipConfig(image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2),
        text=GemmaConfig(vocab_size=2048, width=64, depth=3, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                         variant="gemma3", rope_base=1_000_000.0, sliding_window=16, sliding_window_pattern=3,
                         query_pre_attn_scalar=16, qk_norm=True, post_norms=True),
        mm_tokens_per_image=4, boi_token_id=5, eoi_token_id=6, **TRAINED_TOKENIZER)


def _small() -> VLMConfig:
    # ~8M params, 64 image tokens: small enough to train from scratch on a CPU (benchmarks/small_learns.py).
    return VLMConfig(
        family="paligemma",
        vision=SiglipConfig(image_size=64, patch_size=8, width=256, depth=4, mlp_dim=1024, num_heads=4),
        text=GemmaConfig(vocab_size=4096, width=256, depth=4, mlp_dim=1024, num_heads=4, num_kv_heads=1,
                         head_dim=64),
        **TRAINED_TOKENIZER)


def _paligemma(image_size: int, text: dict) -> Callable[[], VLMConfig]:
    return lambda: VLMConfig(family="paligemma", vision=SiglipConfig(image_size=image_size, **SO400M, **BIG),
                             text=GemmaConfig(**text, **BIG), image_token_id=257152)


def _medgemma_4b() -> VLMConfig:
    return VLMConfig(family="gemma3", vision=SiglipConfig(image_size=896, **SO400M, **BIG),
                     text=GemmaConfig(**GEMMA3_4B, **BIG), image_token_id=262144, mm_tokens_per_image=256,
                     boi_token_id=255999, eoi_token_id=256000, eos_token_id=GEMMA3_EOS_IDS)


PRESETS: dict[str, Callable[[], VLMConfig]] = {
    "tiny": _tiny,
    "tiny_gemma3": _tiny_gemma3,
    "small": _small,
    "paligemma_3b_224": _paligemma(224, GEMMA_2B),
    "paligemma_3b_448": _paligemma(448, GEMMA_2B),
    "paligemma2_3b_224": _paligemma(224, GEMMA2_2B),
    "medgemma_4b": _medgemma_4b,
}


# Presets trained from random init, on a tokenizer trained on the dataset's text (`tokenizer.train_tokenizer`);
# every other preset is a pretrained family fine-tuned in its own prompt format.
TRAINED_FROM_SCRATCH = ("tiny", "tiny_gemma3", "small")


def get_model_config(name: str, **overrides) -> VLMConfig:
    """The named VLMConfig; `overrides` (dtype, param_dtype, scan_layers, remat_policy) apply to both towers."""
    if name not in PRESETS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    if overrides:
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **overrides),
                                  text=dataclasses.replace(cfg.text, **overrides))
    return cfg
