"""Model checkpoints (`medclm_jax.model.checkpoint`): round trips, restores into shardings and dtypes, errors
that name the parameter (8 fake CPU devices)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from medclm_jax.model import presets, vlm
from medclm_jax.model import sharding as S
from medclm_jax.model import checkpoint as C


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embedder": {"input_embedding": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
        "layers": {"mlp": {"w": jnp.asarray(rng.normal(size=(2, 8, 12)), jnp.bfloat16)},
                   "norm": {"scale": jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)}},
        "step_count": jnp.asarray(rng.integers(0, 100, size=(3,)), jnp.int32),
    }


def _equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_load_round_trip(tmp_path):
    params = _params()
    meta = {"model": "tiny", "config": {"width": 8, "layers": [1, 2]}, "source": "test"}
    C.save_params(tmp_path / "ckpt", params, meta)
    assert C.load_metadata(tmp_path / "ckpt") == meta
    shapes = C.params_shapes(tmp_path / "ckpt")
    assert shapes["layers"]["mlp"]["w"].shape == (2, 8, 12)
    assert shapes["layers"]["mlp"]["w"].dtype == jnp.bfloat16
    loaded = C.load_params(tmp_path / "ckpt")
    _equal(loaded, params)
    assert loaded["layers"]["mlp"]["w"].dtype == jnp.bfloat16
    assert isinstance(loaded["embedder"]["input_embedding"], jax.Array)


def test_restore_into_sharding_and_dtype(tmp_path):
    params = _params(1)
    C.save_params(tmp_path / "ckpt", params, {})
    mesh = S.make_mesh({"fsdp": 4, "tensor": 2})
    names = {"embedder": {"input_embedding": ("vocab", "embed")},
             "layers": {"mlp": {"w": ("layers", "embed", "mlp")}, "norm": {"scale": ("layers", "norm")}},
             "step_count": (None,)}
    shardings = jax.tree.map(lambda n, x: NamedSharding(mesh, S.logical_to_spec(n, x.shape, mesh.shape)),
                             names, params, is_leaf=lambda n: isinstance(n, tuple))
    # Ask for bf16 embeddings: the cast happens on the way in.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract["embedder"]["input_embedding"] = jax.ShapeDtypeStruct((16, 8), jnp.bfloat16)
    loaded = C.load_params(tmp_path / "ckpt", abstract, shardings)

    emb = loaded["embedder"]["input_embedding"]
    assert emb.sharding.spec == P("tensor", "fsdp") and emb.dtype == jnp.bfloat16
    assert emb.addressable_shards[0].data.shape == (8, 2)
    assert loaded["layers"]["mlp"]["w"].sharding.spec == P(None, "fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(emb, np.float32),
                                  np.asarray(params["embedder"]["input_embedding"].astype(jnp.bfloat16), np.float32))
    _equal(loaded["layers"], params["layers"])

    # One sharding for every leaf works too.
    replicated = C.load_params(tmp_path / "ckpt", shardings=NamedSharding(mesh, P()))
    assert replicated["step_count"].sharding.spec == P()
    _equal(replicated, params)


def test_model_checkpoint_errors(tmp_path):
    C.save_params(tmp_path / "ckpt", _params(), {"a": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        C.save_params(tmp_path / "ckpt", _params(), {})
    C.save_params(tmp_path / "ckpt", _params(2), {"a": 2}, overwrite=True)
    assert C.load_metadata(tmp_path / "ckpt") == {"a": 2}
    with pytest.raises(FileNotFoundError, match="not a model checkpoint"):
        C.load_params(tmp_path / "nothing")

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params())
    wrong = {**abstract, "embedder": {"input_embedding": jax.ShapeDtypeStruct((16, 9), jnp.float32)}}
    with pytest.raises(ValueError, match=r"\['embedder'\]\['input_embedding'\].*\(16, 8\).*\(16, 9\)"):
        C.load_params(tmp_path / "ckpt", wrong)
    missing = {**abstract, "extra": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(ValueError, match=r"\['extra'\].*not in the checkpoint"):
        C.load_params(tmp_path / "ckpt", missing)
    fewer = {k: v for k, v in abstract.items() if k != "step_count"}
    with pytest.raises(ValueError, match="step_count"):
        C.load_params(tmp_path / "ckpt", fewer)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_config_survives_json(name):
    cfg = presets.get_model_config(name)
    assert C.config_from_json(json.loads(json.dumps(C.config_to_json(cfg)))) == cfg


def test_vlm_checkpoint_round_trip_with_format_tag_and_tokenizer(tmp_path):
    cfg = presets.get_model_config("tiny_gemma3", param_dtype="float32")
    params = S.unbox(vlm.init_params(cfg, jax.random.key(1)))["params"]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.json").write_text('{"stand-in": true}')
    (hf / "model.safetensors").write_text("not a tokenizer file")
    C.save_checkpoint(tmp_path / "ckpt", cfg, params, tokenizer_dir=hf)

    meta = C.load_metadata(tmp_path / "ckpt")
    assert (meta["format"], meta["version"]) == ("medclm-vlm", 1) and meta["config"]["family"] == "gemma3"
    assert (tmp_path / "ckpt" / "tokenizer.json").read_text() == '{"stand-in": true}'
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()
    cfg2, params2 = C.load_checkpoint(tmp_path / "ckpt")
    assert cfg2 == cfg
    _equal(params2, params)

    C.save_params(tmp_path / "bare", _params(), {"source": "test"})  # the layout without a model config
    with pytest.raises(ValueError, match=r"no model 'config' \(keys: \['source'\]\)"):
        C.load_config(tmp_path / "bare")
