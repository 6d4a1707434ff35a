"""Orbax model checkpoints and training-run checkpoints (8 fake CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from medclm_jax.model import sharding as S
from medclm_jax.train import checkpoint as C


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


def test_train_checkpoints_keep_n_and_resume(tmp_path):
    tx = optax.adamw(1e-3)
    params = _params()
    params = {"w": params["embedder"]["input_embedding"]}
    opt_state = tx.init(params)
    iterator_state = b'{"next_index": 17}'
    with C.TrainCheckpoints(tmp_path / "run", max_to_keep=2, keep_every=2) as ckpts:
        assert ckpts.latest_step() is None
        for step in range(1, 6):
            params = {"w": params["w"] + 1.0}
            ckpts.save(step, params, opt_state, {"curriculum": {"stage_probs": [0.5, 0.3, 0.2], "epoch": step},
                                                 "data": iterator_state})
        ckpts.wait()
        # Latest two (4, 5) plus every second step (2, 4).
        assert ckpts.all_steps() == [2, 4, 5]

    # A new manager on the same folder resumes from the newest step.
    mesh = S.make_mesh({"data": 8})
    ckpts = C.TrainCheckpoints(tmp_path / "run", max_to_keep=2)
    abstract_params = jax.eval_shape(lambda: params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    r = ckpts.restore(abstract_params=abstract_params, abstract_opt_state=abstract_opt,
                      params_shardings=NamedSharding(mesh, P()), opt_state_shardings=NamedSharding(mesh, P()))
    assert r["step"] == 5
    _equal(r["params"], params)
    _equal(r["opt_state"], opt_state)
    assert isinstance(r["opt_state"][0], optax.ScaleByAdamState)
    assert r["state"] == {"curriculum": {"stage_probs": [0.5, 0.3, 0.2], "epoch": 5}, "data": iterator_state}
    assert r["params"]["w"].sharding.spec == P()

    older = ckpts.restore(2, abstract_params=abstract_params)
    np.testing.assert_allclose(np.asarray(older["params"]["w"]), np.asarray(params["w"]) - 3.0, rtol=1e-6)
    assert older["opt_state"] is None and older["state"]["curriculum"]["epoch"] == 2
    with pytest.raises(FileNotFoundError, match=r"step 3.*\[2, 4, 5\]"):
        ckpts.restore(3, abstract_params=abstract_params)
    ckpts.close()


def test_reads_standalone_params_layout(tmp_path):
    """A folder with params/ from ocp.StandardCheckpointer and model_config.json (the converter's layout)."""
    import json

    import orbax.checkpoint as ocp

    params = _params(3)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "ckpt" / "params", params)
        ckptr.wait_until_finished()
    (tmp_path / "ckpt" / "model_config.json").write_text(json.dumps({"format": "medclm-vlm", "config": {"a": 1}}))
    assert C.load_metadata(tmp_path / "ckpt") == {"format": "medclm-vlm", "config": {"a": 1}}
    assert C.params_shapes(tmp_path / "ckpt")["embedder"]["input_embedding"].shape == (16, 8)
    mesh = S.make_mesh({"fsdp": 8})
    loaded = C.load_params(tmp_path / "ckpt", shardings=NamedSharding(mesh, P()))
    _equal(loaded, params)
    assert loaded["step_count"].sharding.spec == P()
