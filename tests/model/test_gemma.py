"""Gemma 1/2/3 text decoder: logits parity with transformers, conversion both ways, config mapping.

The reference models are tiny random ``Gemma*ForCausalLM`` built offline, saved with ``save_pretrained`` and
read back tensor by tensor from the safetensors file, as ``medclm convert`` does with real checkpoints.
Weights are redrawn with a larger spread than HF's init (and non-zero norm scales) so that soft-caps,
norm placement and RoPE all move the logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors import safe_open  # noqa: E402

import flax.linen as nn  # noqa: E402

from medclm_jax.model import convert_gemma, gemma  # noqa: E402

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=16)


def _hf_model(variant: str, seed: int = 0):
    """A tiny random HF causal LM of ``variant`` with all weights redrawn."""
    torch.manual_seed(seed)
    if variant == 'gemma1':
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(
            num_hidden_layers=2, num_key_value_heads=1, **TINY))
    elif variant == 'gemma2':
        model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
            num_hidden_layers=4, num_key_value_heads=2, sliding_window=4, attn_logit_softcapping=4.0,
            final_logit_softcapping=10.0, query_pre_attn_scalar=24, **TINY))
    else:
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            num_hidden_layers=6, num_key_value_heads=2, sliding_window=4, query_pre_attn_scalar=24,
            rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 8.0, 'rope_theta': 1e6},
                             'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e4}}, **TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2 if 'norm' in name else 0.3)
    return model.eval()


def _load(model, tmp_path, **overrides):
    """Saves ``model`` and converts it back through the safetensors file: (cfg, {'params': ...})."""
    model.save_pretrained(tmp_path)
    cfg = convert_gemma.gemma_config_from_hf(model.config.to_dict(), **overrides)
    with safe_open(str(tmp_path / 'model.safetensors'), framework='np') as f:
        names = list(f.keys())
        prefix = convert_gemma.find_text_prefix(names)
        params = convert_gemma.hf_to_gemma_params(f.get_tensor, cfg, prefix)
    return cfg, {'params': params}


def _forward(cfg, variables, tokens):
    dec = gemma.GemmaDecoder(cfg)
    b, t = tokens.shape
    x = dec.apply(variables, jnp.asarray(tokens), method=dec.embed)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    logits, cache = jax.jit(dec.apply)(variables, x, positions, mask)
    assert cache is None
    return np.asarray(logits)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize('variant,layouts', [('gemma1', ('unrolled',)), ('gemma2', ('scan',)),
                                             ('gemma3', ('unrolled', 'scan'))])
def test_logits_match_transformers(variant, layouts, tmp_path):
    """Each variant against HF; Gemma 3 (every feature) both unrolled and scanned with remat."""
    model = _hf_model(variant)
    tokens = np.random.RandomState(1).randint(0, 256, (2, 11))  # 11 > sliding window 4
    want = _hf_logits(model, tokens)
    got = {}
    for layout in layouts:
        scan = layout == 'scan'
        cfg, variables = _load(model, tmp_path, scan_layers=scan, remat_policy='full' if scan else 'none')
        assert cfg.variant == variant
        assert ('layers' in variables['params']) == scan and ('layers_0' in variables['params']) != scan
        got[layout] = _forward(cfg, variables, tokens)
        assert np.abs(got[layout] - want).max() <= 1e-4, (layout, np.abs(got[layout] - want).max())
    if len(got) == 2:
        np.testing.assert_allclose(got['scan'], got['unrolled'], atol=1e-5, rtol=0)


def test_softcap_and_window_are_active():
    """Guards the parity test's power: the Gemma 2 reference changes when the features are switched off."""
    model = _hf_model('gemma2')
    tokens = np.random.RandomState(1).randint(0, 256, (1, 11))
    base = _hf_logits(model, tokens)
    for change in (dict(attn_logit_softcapping=None), dict(sliding_window=64)):
        cfg = transformers.Gemma2Config(**{**model.config.to_dict(), **change})
        other = transformers.Gemma2ForCausalLM(cfg).eval()
        other.load_state_dict(model.state_dict())
        assert np.abs(_hf_logits(other, tokens) - base).max() > 1e-2, change


def test_bf16_close_to_transformers_bf16(tmp_path):
    model = _hf_model('gemma1')
    tokens = np.random.RandomState(1).randint(0, 256, (1, 9))
    cfg, variables = _load(model, tmp_path, dtype='bfloat16', param_dtype='bfloat16')
    assert variables['params']['embedder']['embedding'].dtype == jnp.bfloat16
    got = _forward(cfg, variables, tokens)
    with torch.no_grad():
        want = model.to(torch.bfloat16)(torch.tensor(tokens)).logits.float().numpy()
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.02 * scale, (np.abs(got - want).max(), scale)


@pytest.mark.parametrize('variant', ['gemma1', 'gemma2', 'gemma3'])
def test_export_reloads_in_transformers(variant, tmp_path):
    model = _hf_model(variant, seed=3)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for scan in (False, True):
        cfg = convert_gemma.gemma_config_from_hf(model.config.to_dict(), scan_layers=scan)
        params = convert_gemma.hf_to_gemma_params(state.__getitem__, cfg, 'model.')
        exported = dict(convert_gemma.gemma_params_to_hf(params, cfg, 'model.'))
        assert set(exported) == set(state) - {'lm_head.weight'}
        for name, value in exported.items():
            np.testing.assert_array_equal(value, state[name], err_msg=name)

    hf_dict = convert_gemma.gemma_config_to_hf(cfg)
    assert convert_gemma.gemma_config_from_hf(hf_dict, scan_layers=True) == cfg
    config_cls = type(model.config)
    reloaded = type(model)(config_cls(**hf_dict)).eval()
    reloaded.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=False)
    assert getattr(reloaded.config, 'layer_types', None) == getattr(model.config, 'layer_types', None)
    tokens = np.random.RandomState(2).randint(0, 256, (1, 10))
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(model, tokens))


def test_config_from_hub_style_dicts():
    # MedGemma 4B's text_config as on the Hub (transformers 4.x keys, defaults omitted).
    medgemma = {'model_type': 'gemma3_text', 'hidden_size': 2560, 'intermediate_size': 10240,
                'num_attention_heads': 8, 'num_hidden_layers': 34, 'num_key_value_heads': 4,
                'rope_scaling': {'factor': 8.0, 'rope_type': 'linear'}, 'sliding_window': 1024,
                'vocab_size': 262208, 'attention_bias': False, 'final_logit_softcapping': None,
                'attn_logit_softcapping': None, 'query_pre_attn_scalar': 256, 'rope_theta': 1000000.0,
                'rope_local_base_freq': 10000.0, 'sliding_window_pattern': 6}
    cfg = convert_gemma.gemma_config_from_hf(medgemma)
    assert (cfg.width, cfg.depth, cfg.head_dim, cfg.num_kv_heads) == (2560, 34, 256, 4)
    assert (cfg.rope_base, cfg.rope_local_base, cfg.rope_scale) == (1e6, 1e4, 8.0)
    assert cfg.qk_norm and cfg.post_norms and cfg.final_logit_softcap is None
    assert cfg.local_layers.count(False) == 5 and not cfg.is_local(5) and cfg.is_local(6)
    # PaliGemma 3B's text_config: everything else is transformers' Gemma default.
    pali = {'model_type': 'gemma', 'hidden_size': 2048, 'intermediate_size': 16384, 'num_attention_heads': 8,
            'num_hidden_layers': 18, 'num_key_value_heads': 1, 'vocab_size': 257216, 'torch_dtype': 'float32'}
    cfg = convert_gemma.gemma_config_from_hf(pali, dtype='bfloat16')
    assert (cfg.head_dim, cfg.rope_base, cfg.sliding_window_pattern, cfg.dtype) == (256, 1e4, 0, 'bfloat16')
    # PaliGemma 2's Gemma 2 text config: soft-caps and the alternating pattern from defaults.
    cfg = convert_gemma.gemma_config_from_hf({**pali, 'model_type': 'gemma2', 'num_hidden_layers': 26,
                                              'hidden_size': 2304, 'intermediate_size': 9216})
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap, cfg.sliding_window) == (50.0, 30.0, 4096)
    assert cfg.local_layers[:4] == (True, False, True, False)
    with pytest.raises(ValueError, match='llama'):
        convert_gemma.gemma_config_from_hf({**pali, 'model_type': 'llama'})


def test_missing_or_misshapen_tensor_is_named(tmp_path):
    model = _hf_model('gemma1')
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = convert_gemma.gemma_config_from_hf(model.config.to_dict())
    missing = dict(state)
    del missing['model.layers.1.mlp.up_proj.weight']
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing.*\(128, 64\)"):
        convert_gemma.hf_to_gemma_params(missing.__getitem__, cfg, 'model.')
    bad = dict(state, **{'model.layers.0.self_attn.k_proj.weight': np.zeros((32, 64), np.float32)})
    with pytest.raises(ValueError, match=r"k_proj\.weight.*\(32, 64\).*expected \(16, 64\)"):
        convert_gemma.hf_to_gemma_params(bad.__getitem__, cfg, 'model.')
    with pytest.raises(ValueError, match='embed_tokens'):
        convert_gemma.hf_to_gemma_params(state.__getitem__, cfg, 'model.language_model.')


def test_params_carry_logical_axis_names():
    cfg = gemma.GemmaConfig(vocab_size=32, width=16, depth=3, mlp_dim=32, num_heads=2, num_kv_heads=1,
                            head_dim=8, variant='gemma3', qk_norm=True, post_norms=True, sliding_window=4,
                            sliding_window_pattern=2, scan_layers=True)
    dec = gemma.GemmaDecoder(cfg)
    boxed = jax.eval_shape(dec.init, jax.random.key(0), jnp.zeros((1, 4, 16)), jnp.zeros((1, 4), jnp.int32),
                           jnp.ones((1, 4, 4), bool))['params']
    names = jax.tree.map(lambda p: p.names, boxed, is_leaf=lambda p: isinstance(p, nn.LogicallyPartitioned))
    assert names['embedder']['embedding'] == ('vocab', 'embed')
    assert names['layers']['attn']['q'] == ('layers', 'embed', 'q_heads', 'head_dim')
    assert names['layers']['attn']['k'] == ('layers', 'embed', 'kv_heads', 'head_dim')
    assert names['layers']['attn']['o'] == ('layers', 'q_heads', 'head_dim', 'embed')
    assert names['layers']['mlp']['down'] == ('layers', 'mlp', 'embed')
    assert names['layers']['attn']['q_norm']['scale'] == ('layers', 'norm')
    assert names['final_norm']['scale'] == ('norm',)
    shapes = jax.tree.map(lambda p: p.value.shape, boxed, is_leaf=lambda p: isinstance(p, nn.LogicallyPartitioned))
    assert shapes['layers']['attn']['q'] == (3, 16, 2, 8)
