"""Analytic FLOP counts against a hand count and against XLA's own cost analysis."""

import jax
import jax.numpy as jnp
import pytest

from medclm_jax.model import flops, presets, sharding, vlm


def test_tiny_paligemma_hand_count():
    # tiny: 32 px images, 8 px patches -> 16 patches of 8*8*3 = 192 pixels; SigLIP width 32, MLP 64, 2 layers.
    # Gemma: width 64, 2 layers, 4 query heads, 1 KV head, head dim 16, MLP 128, vocabulary 2048.
    cfg = presets.get_model_config("tiny")
    text_len, seq = 8, 16 + 8  # the 16 image tokens are a prefix
    vision = 2 * 16 * 192 * 32 + 2 * (2 * 16 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 16 * 16 * 32)
    projector = 2 * 16 * 32 * 64
    per_layer = (2 * seq * 64 * 64          # q
                 + 2 * 2 * seq * 64 * 16     # k, v (one head)
                 + 2 * seq * 64 * 64         # o
                 + 2 * 2 * seq * seq * 64    # scores and weighted sum, 4 heads x 16
                 + 3 * 2 * seq * 64 * 128)   # gate, up, down
    decoder = 2 * per_layer
    logits = 2 * 8 * 64 * 2048
    assert (vision, projector, decoder, logits) == (786432, 65536, 3637248, 2097152)

    count = flops.model_flops(cfg, text_len)
    assert (count.vision, count.projector, count.decoder, count.logits) == (vision, projector, decoder, logits)
    assert count.seq_len == seq
    assert count.per_token == (vision + projector + decoder + logits) / 8
    assert flops.flops_per_token(cfg, text_len) == 3 * count.per_token
    assert flops.flops_per_token(cfg, text_len, train=False) == count.per_token


def test_tiny_gemma3_hand_count():
    # Gemma 3: 16 patches pooled to 4 image tokens that sit inside the text (no prefix); 3 layers, 2 KV heads.
    cfg = presets.get_model_config("tiny_gemma3")
    count = flops.model_flops(cfg, 10)
    assert count.seq_len == 10
    assert count.projector == 2 * 4 * 32 * 64
    per_layer = 2 * 10 * 64 * 16 * (2 * 4 + 2 * 2) + 4 * 10 * 10 * 4 * 16 + 6 * 10 * 64 * 128
    assert count.decoder == 3 * per_layer
    # One cached decoding step: projections and MLP on one position, attention over 10 cached keys.
    step = 2 * 64 * 16 * (2 * 4 + 2 * 2) + 4 * 10 * 4 * 16 + 6 * 64 * 128
    assert flops.decode_flops_per_token(cfg.text, 10) == 3 * step + 2 * 64 * 2048


def _xla_forward_flops(cfg, batch_size, text_len):
    model = vlm.VLM(cfg)
    batch = {k: jnp.asarray(v) for k, v in vlm.dummy_batch(cfg, batch_size, text_len).items()}
    abstract = sharding.unbox(jax.eval_shape(model.init, jax.random.key(0), batch))
    cost = jax.jit(model.apply).lower(abstract, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]


def test_matches_xla_cost_analysis():
    """XLA counts every op, so it may exceed the matmul-only count by the elementwise work (a few %)."""
    cfg = presets.get_model_config("tiny")
    batch_size, text_len = 2, 16
    ours = batch_size * flops.model_flops(cfg, text_len).forward
    ratio = _xla_forward_flops(cfg, batch_size, text_len) / ours
    assert 1.0 <= ratio < 1.06, ratio


def test_mfu_and_errors():
    assert flops.mfu(1000.0, 1e9, 1e12) == pytest.approx(1.0)
    assert flops.mfu(1000.0, 1e9, 1e12, num_devices=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="text_len"):
        flops.model_flops(presets.get_model_config("tiny"), 0)
