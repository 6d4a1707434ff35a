"""The optimizer and the train state: schedule values, decay masks, frozen groups without state, per-group learning
rates, accumulation equal to one big step, sharded init, and a tiny VLM whose loss falls."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from medclm_jax.model import presets, sharding, vlm
from medclm_jax.train import losses, optim, state


def cfg(**kw) -> optim.OptimConfig:
    return optim.OptimConfig(**{"total_steps": 100, **kw})


def toy_params():
    rng = np.random.default_rng(0)
    shapes = {"decoder": {"embedder": {"embedding": (6, 4)}, "final_norm": {"scale": (4,)},
                          "layers": {"mlp": {"up": (4, 5)}, "attn": {"q_norm": {"scale": (2,)}}}},
              "vision": {"ln1": {"scale": (4,), "bias": (4,)}, "fc1_bias": (3,), "fc1_kernel": (4, 3)},
              "projector": {"kernel": (4, 4)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def first_update(tx, grads, params):
    """One update from a fresh state, as one jitted program (eager optax would compile op by op)."""
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)


def paths(tree):
    return {optim.param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_defaults_are_the_authors_constants():
    c = cfg()
    assert (c.lr, c.end_lr, c.weight_decay, c.b1, c.b2, c.grad_clip) == (2e-5, 1e-6, 0.05, 0.9, 0.98, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        optim.OptimConfig()
    with pytest.raises(ValueError, match="unknown keys"):
        optim.OptimConfig.from_dict({"total_steps": 10, "learning_rate": 1e-3})


def test_schedule_values():
    c = cfg(warmup_steps=10, total_steps=110)
    lr = optim.schedule(c)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 1e-5, 2e-5], rtol=1e-6)
    np.testing.assert_allclose(lr(60), (2e-5 + 1e-6) / 2, rtol=1e-5)  # half-way through the cosine
    np.testing.assert_allclose([lr(110), lr(500)], [1e-6, 1e-6], rtol=1e-6)
    # With accumulation the schedule counts updates, not micro-steps.
    c4 = cfg(warmup_steps=10, total_steps=110, grad_accum_steps=4)
    np.testing.assert_allclose(optim.learning_rate(c4, 4 * 60 + 3), lr(60), rtol=1e-6)


def test_weight_decay_mask_with_zero_gradients():
    """Zero gradients: Adam's step is 0, so decayed params shrink by lr * wd and the masked ones stay put."""
    params = toy_params()
    c = cfg(lr=0.1, weight_decay=0.5, end_lr=0.1)
    updates, _ = first_update(optim.make_optimizer(c), jax.tree.map(jnp.zeros_like, params), params)
    new = optax.apply_updates(params, updates)
    decayed = {"decoder/layers/mlp/up", "vision/fc1_kernel", "projector/kernel"}
    for kp, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = optim.param_path(kp)
        got = new
        for k in path.split("/"):
            got = got[k]
        want = p * (1 - 0.1 * 0.5) if path in decayed else p
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=path)


def test_default_decay_mask_on_the_tiny_vlm():
    model_cfg = presets.get_model_config("tiny_gemma3", scan_layers=True)
    params = sharding.unbox(jax.eval_shape(lambda r: vlm.init_params(model_cfg, r), jax.random.key(0)))["params"]
    table = {r["path"]: r["decay"] for r in optim.param_table(cfg(), params)}
    for path in ("decoder/embedder/embedding", "vision/pos_embedding", "decoder/layers/attn/q_norm/scale",
                 "decoder/final_norm/scale", "vision/layers/ln1/bias", "vision/final_ln/scale",
                 "vision/layers/attn/q_bias", "vision/patch_bias", "projector/mm_soft_emb_norm/scale"):
        assert table[path] is False, path
    for path in ("decoder/layers/attn/q", "decoder/layers/mlp/down", "vision/layers/mlp/fc1_kernel",
                 "vision/patch_kernel", "projector/kernel"):
        assert table[path] is True, path


def test_frozen_groups_do_not_change_and_have_no_state():
    params = toy_params()
    c = cfg(lr=0.1, end_lr=0.1, groups=({"pattern": "vision/.*", "frozen": True},))
    tx = optim.make_optimizer(c)
    updates, opt_state = first_update(tx, jax.tree.map(jnp.ones_like, params), params)
    new = optax.apply_updates(params, updates)
    for k in params["vision"]:
        np.testing.assert_array_equal(jax.tree.leaves(new["vision"][k]), jax.tree.leaves(params["vision"][k]))
    assert not np.allclose(new["projector"]["kernel"], params["projector"]["kernel"])
    state_paths = paths(opt_state)
    assert not [p for p in state_paths if "vision" in p], state_paths
    assert any(p.endswith("mu/decoder/layers/mlp/up") for p in state_paths)


def test_frozen_gradients_do_not_enter_the_clipping_norm():
    params = toy_params()
    grads = jax.tree.map(jnp.ones_like, params)
    huge = dict(grads, vision=jax.tree.map(lambda g: 1e6 * g, grads["vision"]))
    frozen = optim.make_optimizer(cfg(lr=0.1, end_lr=0.1, weight_decay=0.0, grad_clip=1.0,
                                      groups=({"pattern": "vision/.*", "frozen": True},)))
    u_huge, _ = first_update(frozen, huge, params)
    u_ones, _ = first_update(frozen, grads, params)
    np.testing.assert_allclose(u_huge["projector"]["kernel"], u_ones["projector"]["kernel"], rtol=1e-6)


def test_per_group_lr_scales_the_update():
    params = toy_params()
    grads = jax.tree.map(lambda p: jnp.sin(p), params)
    base = optim.make_optimizer(cfg(lr=0.1, end_lr=0.1, grad_clip=0.0))
    scaled = optim.make_optimizer(cfg(lr=0.1, end_lr=0.1, grad_clip=0.0, groups=(
        optim.ParamGroup("projector/.*", 3.0), optim.ParamGroup("vision/.*", frozen=True))))
    u1, _ = first_update(base, grads, params)
    u3, _ = first_update(scaled, grads, params)
    np.testing.assert_allclose(u3["projector"]["kernel"], 3 * u1["projector"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(u3["decoder"]["layers"]["mlp"]["up"], u1["decoder"]["layers"]["mlp"]["up"],
                               rtol=1e-6)
    assert not np.abs(u3["vision"]["fc1_kernel"]).any()


def test_a_group_that_matches_nothing_is_an_error():
    tx = optim.make_optimizer(cfg(groups=({"pattern": "vison/.*", "frozen": True},)))
    with pytest.raises(ValueError, match="vison"):
        tx.init(toy_params())


def test_accumulation_equals_one_step_on_the_concatenated_batch():
    """k micro-steps (jitted, state donated) = one step on their concatenation; params move only on the k-th."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "bias": jnp.zeros(3, jnp.float32)}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["bias"] - yb) ** 2)

    # A clip threshold below the gradient norm: clipping must see the mean gradient, not a micro-batch's.
    common = dict(lr=0.05, end_lr=0.01, warmup_steps=1, total_steps=10, weight_decay=0.1, grad_clip=0.5)
    one = optim.make_optimizer(cfg(**common))
    four = optim.make_optimizer(cfg(**common, grad_accum_steps=4))

    def make_step(tx):
        return jax.jit(lambda s, xb, yb: state.apply_gradients(s, jax.grad(loss)(s.params, xb, yb), tx),
                       donate_argnums=0)

    step1, step4 = make_step(one), make_step(four)
    big = state.create(params, one, jax.random.key(0))
    acc = state.create(jax.tree.map(jnp.copy, params), four, jax.random.key(0))
    for _ in range(3):  # three updates
        big = step1(big, x, y)
        for i in range(4):
            before = np.asarray(acc.params["w"])  # a copy: the step donates the state's buffers
            acc = step4(acc, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
            if i < 3:
                np.testing.assert_array_equal(acc.params["w"], before)
    assert int(acc.step) == 12 and int(big.step) == 3
    for k in params:
        np.testing.assert_allclose(acc.params[k], big.params[k], rtol=1e-5, atol=1e-7)


def boxed_params(rng):
    """A VLM-like params tree with logical axis names (what `vlm.init_params` returns, boxed)."""
    k1, k2, k3 = jax.random.split(rng, 3)
    normal = nn.initializers.normal(0.02)
    return {"decoder": {"embedder": {"embedding": nn.with_logical_partitioning(normal, ("vocab", "embed"))(
                k1, (16, 8))},
                        "final_norm": {"scale": nn.with_logical_partitioning(nn.initializers.zeros, ("norm",))(
                            k2, (8,))}},
            "vision": {"patch_kernel": nn.with_logical_partitioning(normal, ("patch", "embed"))(k3, (12, 8))}}


def test_sharded_init_places_the_optimizer_state_like_its_params():
    tx = optim.make_optimizer(cfg(groups=({"pattern": "vision/.*", "frozen": True},), grad_accum_steps=2))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    s = state.init_sharded(boxed_params, tx, jax.random.key(0), mesh)
    emb = s.params["decoder"]["embedder"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    np.testing.assert_allclose(emb, sharding.unbox(boxed_params(jax.random.key(0)))["decoder"]["embedder"][
        "embedding"], rtol=1e-6)
    opt = {optim.param_path(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(s.opt_state)[0]}
    moments = [p for p in opt if p.endswith("decoder/embedder/embedding")]
    assert len(moments) == 3  # accumulator, mu, nu
    assert all(opt[p].sharding.spec == emb.sharding.spec for p in moments)
    assert not [p for p in opt if "vision" in p]
    assert all(x.sharding.spec == jax.sharding.PartitionSpec() for p, x in opt.items() if x.ndim == 0)
    # The abstract state (restore target) has the same structure, at no cost.
    abstract = state.abstract_state(s.params, tx, jax.random.key(0))
    assert jax.tree.structure(abstract) == jax.tree.structure(s)


def test_master_weights_must_be_f32():
    params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
    tx = optim.make_optimizer(cfg())
    with pytest.raises(ValueError, match="float32"):
        state.create(params, tx, jax.random.key(0))
    s = state.from_params(state.master_weights(params), tx, jax.random.key(0))
    assert s.params["w"].dtype == jnp.float32 and s.rng.dtype == jnp.uint32
    assert not np.array_equal(jax.random.key_data(s.step_rng()),
                              jax.random.key_data(s.replace(step=s.step + 1).step_rng()))


def tiny_batch(model_cfg, b=4, t=16, seed=0):
    """A batch in the contract's layout: prompt (prefix), then reasoning and answer targets, then padding."""
    rng = np.random.default_rng(seed)
    size = model_cfg.vision.image_size
    text = rng.integers(7, model_cfg.text.vocab_size, (b, t)).astype(np.int32)
    span = np.zeros((b, t), np.int32)
    span[:, 5:9], span[:, 9:13] = 1, 2
    stage = np.array([0, 1, 2, 0][:b], np.int32)
    span[stage == 2, 5:9] = 0
    mask_input = np.ones((b, t), np.int32)
    mask_input[:, 13:] = 0
    mask_ar = np.ones((b, t), np.int32)
    mask_ar[:, :5] = 0
    return {"image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32), "text": text,
            "mask_ar": mask_ar, "mask_input": mask_input, "mask_loss": (span > 0).astype(np.int32), "span": span,
            "stage": stage, "domain": np.array([0, 1, 0, 1][:b], np.int32), "weight": np.ones(b, np.float32)}


def numpy_init(model_cfg, seed=0):
    """Random params for `model_cfg` without compiling `init` (which runs the whole forward): shapes from
    `jax.eval_shape`, norm scales at their identity (Gemma's RMSNorm is 1 + scale, SigLIP's LayerNorm scale)."""
    abstract = sharding.unbox(jax.eval_shape(lambda r: vlm.init_params(model_cfg, r), jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def one(kp, x):
        path = optim.param_path(kp)
        if path.endswith("scale"):
            return jnp.full(x.shape, 1.0 if path.startswith("vision") else 0.0, x.dtype)
        if path.endswith("bias"):
            return jnp.zeros(x.shape, x.dtype)
        return jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(one, abstract["params"])


def test_tiny_vlm_loss_falls():
    model_cfg = presets.get_model_config("tiny")
    model = vlm.VLM(model_cfg)
    tx = optim.make_optimizer(cfg(lr=3e-3, end_lr=3e-3, warmup_steps=0, total_steps=10))
    s = state.create(numpy_init(model_cfg), tx, jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, tiny_batch(model_cfg))
    loss_cfg = losses.LossConfig()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(s, batch):
        def loss_fn(p):
            return losses.span_loss(model.apply({"params": p}, batch), batch, loss_cfg, num_domains=2)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(s.params)
        return state.apply_gradients(s, grads, tx), loss, aux["count"]

    curve = []
    for _ in range(10):
        s, loss, count = step(s, batch)
        curve.append(float(loss))
    assert np.isfinite(curve).all() and curve[-1] < 0.7 * curve[0], curve
    np.testing.assert_array_equal(count, [[1, 0, 1], [1, 1, 0]])
