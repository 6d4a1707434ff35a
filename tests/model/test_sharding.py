"""Mesh, logical rules and sharded init on 8 fake CPU devices (tests/conftest.py sets them)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from medclm_jax.model import presets, vlm
from medclm_jax.model import sharding as S

V, D, F, H, K = 32, 16, 24, 4, 8  # vocab, width, MLP width, query heads, head dim; one KV head (MQA)


def _param(module, name, init, names, shape):
    return module.param(name, nn.with_logical_partitioning(init, names), shape)


def _ramp(key, shape, dtype=jnp.float32):
    """Deterministic, position-dependent values: XLA compiles each random initializer slowly on CPU, so only
    two parameters below draw from the PRNG (enough to check that sharded init reproduces the random draws)."""
    del key
    return 0.5 * jnp.sin(jnp.arange(np.prod(shape), dtype=dtype).reshape(shape))


class TinyLM(nn.Module):
    """A one-block MQA language model using the contract's logical names (independent of the real model)."""

    @nn.compact
    def __call__(self, tokens):
        normal = nn.initializers.normal(0.5)
        emb = _param(self, "embedding", normal, ("vocab", "embed"), (V, D))
        q = _param(self, "q", _ramp, ("embed", "q_heads", "head_dim"), (D, H, K))
        kv = _param(self, "kv", _ramp, ("embed", "kv_heads", "head_dim"), (D, 1, K))
        o = _param(self, "o", _ramp, ("q_heads", "head_dim", "embed"), (H, K, D))
        up = _param(self, "up", normal, ("embed", "mlp"), (D, F))
        down = _param(self, "down", _ramp, ("mlp", "embed"), (F, D))
        scale = _param(self, "scale", nn.initializers.ones, ("norm",), (D,))
        x = nn.with_logical_constraint(emb[tokens], ("act_batch", "act_len", "act_embed"))
        qh = jnp.einsum("btd,dhk->bthk", x, q)
        qh = nn.with_logical_constraint(qh, ("act_batch", "act_len", "act_heads", None))
        kh = jnp.einsum("btd,dhk->bthk", x, kv)
        att = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", qh, jnp.broadcast_to(kh, qh.shape)), axis=-1)
        x = x + jnp.einsum("bhqs,bshk,hkd->bqd", att, jnp.broadcast_to(kh, qh.shape), o)
        h = nn.with_logical_constraint(nn.gelu(x @ up), ("act_batch", "act_len", "act_mlp"))
        x = (x + h @ down) * scale
        return nn.with_logical_constraint(x @ emb.T, ("act_batch", "act_len", "act_vocab"))


TOKENS = np.random.default_rng(0).integers(0, V, size=(8, 6)).astype(np.int32)


def test_make_mesh_shapes_and_axis_types():
    mesh = S.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(S.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(S.make_mesh({"tensor": 2, "fsdp": 4}).shape) == {"tensor": 2, "fsdp": 4, "data": 1}
    one = S.make_mesh({"data": 1}, devices=jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match="needs 16 devices"):
        S.make_mesh({"data": 8, "fsdp": 2})
    with pytest.raises(ValueError, match="at most one -1"):
        S.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="not divisible"):
        S.make_mesh({"data": -1, "fsdp": 3})


@pytest.mark.parametrize("names, shape, mesh_shape, expected", [
    (("vocab", "embed"), (32, 16), {"data": 1, "fsdp": 4, "tensor": 2}, P("tensor", "fsdp")),
    (("embed", "kv_heads", "head_dim"), (16, 1, 8), {"data": 1, "fsdp": 4, "tensor": 2}, P("fsdp")),
    (("embed", "mlp"), (12, 24), {"data": 1, "fsdp": 8, "tensor": 1}, P()),       # 8 does not divide 12
    (("batch", "act_len"), (6, 5), {"data": 2, "fsdp": 4, "tensor": 1}, P("data")),  # 8 does not divide 6
    (("batch",), (16,), {"data": 2, "fsdp": 4, "tensor": 1}, P(("data", "fsdp"))),
    (("embed", "embed"), (16, 16), {"data": 1, "fsdp": 8, "tensor": 1}, P("fsdp")),   # an axis is used once
    (("layers", "embed", "q_heads", "head_dim"), (3, 16, 4, 8), {"data": 2, "fsdp": 2, "tensor": 2},
     P(None, "fsdp", "tensor")),
    (("unknown_name", None), (8, 8), {"data": 8}, P()),
])
def test_logical_to_spec(names, shape, mesh_shape, expected):
    assert S.logical_to_spec(names, shape, mesh_shape) == expected


# Hand-derived specs for TinyLM under each mesh (V=32, D=16, F=24, H=4, K=8, one KV head).
EXPECTED = {
    (1, 8, 1): {"embedding": P(None, "fsdp"), "q": P("fsdp"), "kv": P("fsdp"), "o": P(None, None, "fsdp"),
                "up": P("fsdp"), "down": P(None, "fsdp"), "scale": P()},
    (1, 4, 2): {"embedding": P("tensor", "fsdp"), "q": P("fsdp", "tensor"), "kv": P("fsdp"),
                "o": P("tensor", None, "fsdp"), "up": P("fsdp", "tensor"), "down": P("tensor", "fsdp"),
                "scale": P()},
}


def test_sharded_init_and_forward_match_single_device():
    model = TinyLM()
    first, reference = None, None
    for dims, expected in EXPECTED.items():
        mesh = S.make_mesh(dict(zip(S.MESH_AXES, dims)))
        variables = S.sharded_init(model.init, jax.random.key(0), TOKENS[:1], mesh=mesh)
        assert {k: v.sharding.spec for k, v in variables["params"].items()} == expected
        up = variables["params"]["up"]
        assert up.addressable_shards[0].data.shape == (D // dims[1], F // dims[2])
        if first is None:
            first = jax.device_get(variables)
            one = jax.devices()[0]
            reference = np.asarray(jax.jit(model.apply)(jax.device_put(first, one), jax.device_put(TOKENS, one)))
        else:
            # Same key, same values: the layout changes, not the initializer's numbers.
            jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), first)

        batch = S.shard_batch({"text": TOKENS}, mesh)
        assert batch["text"].sharding.spec == P(("data", "fsdp"))
        with S.mesh_rules(mesh):
            logits = jax.jit(model.apply)(variables, batch["text"])
        np.testing.assert_allclose(np.asarray(logits), reference, rtol=1e-5, atol=1e-5)
        # The activation constraints took effect: batch over data x fsdp, vocabulary over tensor.
        assert logits.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")), 3)


def test_shard_batch_layout_and_errors():
    mesh = S.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    out = S.shard_batch({"image": x, "mask": np.ones((4,), np.int32)}, mesh)
    np.testing.assert_array_equal(np.asarray(out["image"]), x)
    # 4 rows over data x fsdp = 4 shards: one row per shard, replicated over tensor (8 device shards).
    rows = sorted((s.index[0].start, s.data.shape) for s in out["image"].addressable_shards)
    assert rows == [(r, (1, 3)) for r in range(4) for _ in range(2)]
    with pytest.raises(ValueError, match=r"\['image'\] has 6 rows.*multiple of 4"):
        S.shard_batch({"image": np.zeros((6, 3))}, mesh)
    with pytest.raises(ValueError, match="scalar"):
        S.shard_batch({"step": np.int32(3)}, mesh)


def test_rules_for_mesh_drops_missing_axes():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rules = dict(S.rules_for_mesh(S.DEFAULT_RULES, mesh))
    assert rules["batch"] == "data" and rules["embed"] is None and rules["mlp"] is None
    abstract = jax.eval_shape(TinyLM().init, jax.random.key(0), TOKENS[:1])
    shardings = S.logical_to_sharding(abstract, mesh)
    assert shardings["params"]["up"].spec == P() and shardings["params"]["up"].mesh is mesh
    assert S.batch_sharding(mesh).spec == P("data")


# ----------------------------------------------------------------------------------------------------------
# The tiny VLM (medclm_jax.model.vlm, preset "tiny") under pure FSDP and FSDP x tensor.
# ----------------------------------------------------------------------------------------------------------

# tiny: vocab 2048, text width 64, 4 query heads / 1 KV head of 16, MLP 128; SigLIP width 32, 2 heads, MLP 64.
VLM_EXPECTED = {
    (8, 1): {
        "['decoder']['embedder']['embedding']": P(None, "fsdp"),
        "['decoder']['layers_0']['attn']['q']": P("fsdp"),
        "['decoder']['layers_0']['attn']['k']": P("fsdp"),
        "['decoder']['layers_0']['mlp']['down']": P(None, "fsdp"),
        "['vision']['layer_0']['mlp']['fc1_kernel']": P("fsdp"),
        "['vision']['patch_kernel']": P(None, "fsdp"),
        "['decoder']['final_norm']['scale']": P(),
    },
    (4, 2): {
        "['decoder']['embedder']['embedding']": P("tensor", "fsdp"),
        "['decoder']['layers_0']['attn']['q']": P("fsdp", "tensor"),
        "['decoder']['layers_0']['attn']['k']": P("fsdp"),  # one KV head: tensor dropped
        "['decoder']['layers_0']['mlp']['down']": P("tensor", "fsdp"),
        "['vision']['layer_0']['mlp']['fc1_kernel']": P("fsdp", "tensor"),
        "['vision']['patch_kernel']": P(None, "fsdp"),
        "['decoder']['final_norm']['scale']": P(),
    },
}
_AXIS_OF = {"embed": "fsdp", "mlp": "tensor", "q_heads": "tensor", "kv_heads": "tensor", "vocab": "tensor"}


def _vlm_batch(cfg, batch_size=8, text_len=8):
    rng = np.random.default_rng(1)
    size = cfg.vision.image_size
    text = rng.integers(7, cfg.text.vocab_size, size=(batch_size, text_len)).astype(np.int32)
    mask_ar = np.zeros((batch_size, text_len), np.int32)
    mask_ar[:, 4:] = 1  # 4-token prompt, then the answer
    mask_input = np.ones((batch_size, text_len), np.int32)
    mask_input[::2, 6:] = 0  # every other row padded
    return {"image": rng.uniform(-1, 1, size=(batch_size, size, size, 3)).astype(np.float32), "text": text,
            "mask_ar": mask_ar, "mask_loss": mask_ar, "mask_input": mask_input}


def test_tiny_vlm_fsdp_and_tensor_parallel():
    """Param shardings follow the rules; the sharded forward equals the single-device one.

    The weights are random host arrays placed with ``logical_to_sharding`` (``sharded_init`` itself is tested on
    TinyLM above: compiling the VLM's ~60 initializers costs tens of seconds on CPU).
    """
    cfg = presets.get_model_config("tiny")
    model = vlm.VLM(cfg)
    init_batch = {k: jnp.asarray(v) for k, v in vlm.dummy_batch(cfg, 1, 8).items()}
    boxed = jax.eval_shape(model.init, jax.random.key(0), init_batch)
    rng = np.random.default_rng(0)
    host = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), S.unbox(boxed))
    names = {jax.tree_util.keystr(p): (box.names, box.value.shape) for p, box in
             jax.tree_util.tree_flatten_with_path(boxed["params"], is_leaf=lambda x: hasattr(x, "names"))[0]}
    batch = _vlm_batch(cfg)
    one = jax.devices()[0]
    reference = np.asarray(jax.jit(model.apply)(jax.device_put(host, one), jax.device_put(batch, one)))

    def loss(variables, batch):  # next-token cross-entropy on the answer: gradients reach every weight
        logp = jax.nn.log_softmax(model.apply(variables, batch)[:, :-1])
        nll = -jnp.take_along_axis(logp, batch["text"][:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * batch["mask_loss"][:, 1:]) / jnp.sum(batch["mask_loss"][:, 1:])
    grad_fn = jax.jit(jax.grad(loss))
    ref_grads = grad_fn(jax.device_put(host, one), jax.device_put(batch, one))

    for fsdp, tensor in VLM_EXPECTED:
        mesh = S.make_mesh({"data": 1, "fsdp": fsdp, "tensor": tensor})
        variables = jax.device_put(host, S.logical_to_sharding(boxed, mesh))
        flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
        assert set(flat) == set(names)
        for key, spec in VLM_EXPECTED[(fsdp, tensor)].items():
            assert flat[key].sharding.spec == spec, key
        # Every param: a dim is split over its rule's mesh axis exactly when that axis divides it.
        sizes = dict(mesh.shape)
        for key, x in flat.items():
            dims, shape = names[key]
            spec = tuple(x.sharding.spec) + (None,) * (len(shape) - len(x.sharding.spec))
            want = tuple(_AXIS_OF.get(n) if _AXIS_OF.get(n) and sizes[_AXIS_OF[n]] > 1
                         and size % sizes[_AXIS_OF[n]] == 0 else None for n, size in zip(dims, shape))
            assert spec == want, (key, dims, shape, spec)

        with S.mesh_rules(mesh):
            logits = jax.jit(model.apply)(variables, S.shard_batch(batch, mesh))
        assert logits.shape == (8, 8, cfg.text.vocab_size)
        np.testing.assert_allclose(np.asarray(logits), reference, rtol=1e-5, atol=2e-5)
        # The backward pass (layers.dense's hand-written gradient included) is partitioned correctly too.
        with S.mesh_rules(mesh):
            grads = grad_fn(variables, S.shard_batch(batch, mesh))
        for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6,
                                       err_msg=jax.tree_util.keystr(path))
