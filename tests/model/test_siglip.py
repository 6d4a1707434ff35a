"""SigLIP vision tower: parity with transformers' SiglipVisionModel (tiny random config, fp32)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from medclm_jax.model import convert_siglip, siglip  # noqa: E402

HF_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8, layer_norm_eps=1e-6, vision_use_head=True)


def perturbed_(model, seed=0):
    """Adds noise to every weight so default LayerNorm ones/zeros cannot hide a mapping bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def hf_tower():
    torch.manual_seed(0)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**HF_VISION)).eval()
    return perturbed_(model)


def _image(batch=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def _hf_tokens(model, image):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2)))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "minimal")])
def test_matches_hf(hf_tower, scan, remat):
    cfg = convert_siglip.siglip_config_from_hf(HF_VISION, scan_layers=scan, remat_policy=remat)
    sd = {k: v.numpy() for k, v in hf_tower.state_dict().items()}
    params = convert_siglip.hf_to_siglip_params(sd.__getitem__, cfg)  # the pooling head in `sd` is ignored
    image = _image()
    ours = siglip.SiglipEncoder(cfg).apply({"params": params}, jnp.asarray(image))
    ref = _hf_tokens(hf_tower, image)
    assert ours.shape == ref.shape == (2, 16, 32)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_export_round_trip_and_init_shapes(hf_tower):
    cfg = convert_siglip.siglip_config_from_hf(HF_VISION, scan_layers=True)
    sd = {k: v.numpy() for k, v in hf_tower.state_dict().items()}
    params = convert_siglip.hf_to_siglip_params(sd.__getitem__, cfg)
    exported = dict(convert_siglip.siglip_params_to_hf(params, cfg))
    assert set(exported) == {k for k in sd if not k.startswith("head.")}
    for name, arr in exported.items():
        np.testing.assert_array_equal(arr, sd[name], err_msg=name)
    # Fresh init has exactly the converted tree's structure and shapes, with logical names on every param.
    abstract = jax.eval_shape(siglip.SiglipEncoder(cfg).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    boxed = abstract["params"]
    unboxed = jax.tree.map(lambda x: x.shape, nn_unbox(boxed))
    assert unboxed == jax.tree.map(lambda x: x.shape, params)
    names = lambda tree: jax.tree.leaves(jax.tree.map(lambda b: b.names, tree, is_leaf=_is_boxed),
                                         is_leaf=_is_tuple)
    assert all(n[0] == "layers" for n in names(boxed["layers"]))  # the scanned axis is named
    assert ("layers", "embed", "q_heads", "head_dim") in names(boxed["layers"])
    assert ("patch", "embed") in names(boxed) and ("vision_pos", "embed") in names(boxed)


def test_wrong_shape_and_missing_tensor_are_named(hf_tower):
    cfg = convert_siglip.siglip_config_from_hf(HF_VISION)
    sd = {k: v.numpy() for k, v in hf_tower.state_dict().items()}
    bad = dict(sd)
    bad["encoder.layers.1.mlp.fc1.weight"] = np.zeros((47, 32), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight.*\(48, 32\).*\(47, 32\)"):
        convert_siglip.hf_to_siglip_params(bad.__getitem__, cfg)
    wrong_size = dataclasses.replace(cfg, image_size=40)
    with pytest.raises(ValueError, match=r"position_embedding\.weight.*\(25, 32\)"):
        convert_siglip.hf_to_siglip_params(sd.__getitem__, wrong_size)


def test_rejects_wrong_image_size():
    cfg = siglip.SiglipConfig(image_size=32, patch_size=8, width=32, depth=1, mlp_dim=48, num_heads=4)
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        siglip.SiglipEncoder(cfg).init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))


def test_patchify_is_row_major_conv_order():
    # A stride-P conv with a one-hot kernel picks pixel (r, c, ch) of each patch: patchify must agree.
    image = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    patches = np.asarray(siglip.patchify(jnp.asarray(image), 4))
    assert patches.shape == (2, 4, 48)
    # patch 1 = row 0, col 1 of the grid; element (r=2, c=3, ch=1) -> flat index (2*4 + 3)*3 + 1
    assert patches[1, 1, (2 * 4 + 3) * 3 + 1] == image[1, 2, 4 + 3, 1]


def nn_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)


def _is_boxed(x):
    import flax.linen as nn

    return isinstance(x, nn.LogicallyPartitioned)


def _is_tuple(x):
    return isinstance(x, tuple)
