"""The train and eval steps (medclm_jax/train/step.py) on the tiny VLM and 8 fake CPU devices.

References: the single-device loss and gradients for the sharded ones (FSDP, FSDP x tensor); `losses.span_loss`'s
own sums for the metrics; `optim.learning_rate` for the reported lr; the params before the step for frozen groups.
The params are random host arrays placed by their logical names (compiling the VLM's initializers costs tens of
seconds on CPU and is not what is tested here).
"""

import functools

import jax
import numpy as np
import pytest

from medclm_jax.data.prompts import SPAN_ANSWER, SPAN_REASONING
from medclm_jax.model import presets
from medclm_jax.model import sharding as shd
from medclm_jax.model import vlm
from medclm_jax.train import losses, metrics, optim
from medclm_jax.train import state as state_lib
from medclm_jax.train import step as step_lib

CFG = presets.get_model_config("tiny")
B, T, D = 8, 24, 3


def contract_batch(seed=0, batch_size=B):
    """A batch in data/batch.py's contract: 6-token prompt, a reasoning span (not for Hard), an answer span,
    right padding, the last row a padding row (weight 0)."""
    rng = np.random.default_rng(seed)
    size = CFG.vision.image_size
    text = rng.integers(7, CFG.text.vocab_size, size=(batch_size, T)).astype(np.int32)
    stage = rng.integers(0, 3, size=batch_size).astype(np.int32)
    span = np.zeros((batch_size, T), np.int32)
    mask_input = np.zeros((batch_size, T), np.int32)
    for b in range(batch_size):
        n = int(rng.integers(14, T + 1))
        mask_input[b, :n] = 1
        cot_end = 6 if stage[b] == 2 else int(rng.integers(8, n - 3))
        span[b, 6:cot_end], span[b, cot_end:n] = SPAN_REASONING, SPAN_ANSWER
    weight = np.ones(batch_size, np.float32)
    weight[-1] = 0.0
    span[-1] = 0
    mask_ar = (np.arange(T) >= 6).astype(np.int32)[None].repeat(batch_size, 0)
    return {"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32), "text": text,
            "mask_ar": mask_ar, "mask_input": mask_input, "mask_loss": (span > 0).astype(np.int32), "span": span,
            "stage": stage, "domain": rng.integers(0, D, batch_size).astype(np.int32),
            "box": np.zeros((batch_size, 4), np.float32), "has_box": np.zeros(batch_size, np.int32),
            "weight": weight}


@pytest.fixture(scope="module")
def boxed():
    return jax.eval_shape(lambda r: vlm.init_params(CFG, r)["params"], jax.random.key(0))


@pytest.fixture(scope="module")
def host_params(boxed):
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), shd.unbox(boxed))


def mesh_of(fsdp, tensor):
    if fsdp * tensor == 1:
        return shd.make_mesh({"data": 1}, devices=jax.devices()[:1])
    return shd.make_mesh({"data": 1, "fsdp": fsdp, "tensor": tensor})


def test_loss_and_gradients_under_fsdp_and_tensor_parallel_equal_one_device(boxed, host_params):
    batch = contract_batch()
    grad_fn = jax.jit(jax.value_and_grad(functools.partial(step_lib.loss_fn, model=vlm.VLM(CFG),
                                                           loss_cfg=losses.LossConfig(), num_domains=D),
                                         has_aux=True))
    results = {}
    for fsdp, tensor in ((1, 1), (8, 1), (4, 2)):
        mesh = mesh_of(fsdp, tensor)
        params = jax.device_put(host_params, shd.logical_to_sharding(boxed, mesh))
        with shd.mesh_rules(mesh):
            (loss, aux), grads = grad_fn(params, shd.shard_batch(batch, mesh))
        results[fsdp, tensor] = jax.device_get((loss, aux, grads))
    loss1, aux1, grads1 = results[1, 1]
    assert np.isfinite(loss1) and float(loss1) > 0
    assert float(np.abs(jax.tree.leaves(grads1)[0]).max()) > 0
    for key in ((8, 1), (4, 2)):
        loss, aux, grads = results[key]
        np.testing.assert_allclose(loss, loss1, rtol=1e-5, err_msg=str(key))
        for name in step_lib.SUM_KEYS:
            np.testing.assert_allclose(aux[name], aux1[name], rtol=1e-5, atol=1e-6, err_msg=f"{key} {name}")
        # Against the largest gradient of the tree: the key biases' true gradient is 0 (softmax ignores a
        # per-query constant), so theirs is rounding noise on both sides.
        scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
        for (path, g), g1 in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads1)):
            np.testing.assert_allclose(g, g1, rtol=1e-4, atol=2e-6 * scale,
                                       err_msg=f"{key} {jax.tree_util.keystr(path)}")


def test_train_step_updates_in_place_keeps_frozen_groups_and_reports_metrics(boxed, host_params):
    mesh = mesh_of(8, 1)
    ocfg = optim.OptimConfig(lr=1e-3, total_steps=10, warmup_steps=2, groups=(optim.ParamGroup("vision/.*",
                                                                                                  frozen=True),))
    tx = optim.make_optimizer(ocfg)
    loss_cfg = losses.LossConfig()
    layout = step_lib.state_layout(CFG, tx, mesh)
    params = jax.device_put(host_params, layout.shardings.params)
    state = state_lib.from_params(params, tx, jax.random.key(0), layout.shardings)
    shapes = step_lib.abstract_batch(CFG, B, T, mesh)
    train = step_lib.compile_step(step_lib.jit_train_step(CFG, tx, ocfg, loss_cfg, D, layout.shardings, mesh),
                                  layout.abstract, shapes, mesh=mesh)
    evaluate = step_lib.compile_step(step_lib.jit_eval_step(CFG, loss_cfg, D, layout.shardings.params, mesh),
                                     layout.abstract.params, shapes, mesh=mesh)
    assert step_lib.memory_report(train)["total"] > 0

    batch = shd.shard_batch(contract_batch(1), mesh)
    before = jax.device_get(state.params)
    sums = metrics.to_host(evaluate(state.params, batch))
    old = state
    state, m = train(state, batch)
    host = metrics.to_host(m)
    assert jax.tree.leaves(old.params)[0].is_deleted()  # donated: updated in place
    for name in step_lib.SUM_KEYS:  # eval is the same loss on the same params
        np.testing.assert_allclose(host[name], sums[name], rtol=1e-6, err_msg=name)
    assert host["count"].sum() == host["examples"] == B - 1
    assert host["loss_example"][-1] == 0.0 and np.all(host["loss_example"][:-1] > 0)
    np.testing.assert_allclose(host["loss"], (host["loss_example"][:-1]).mean(), rtol=1e-5)
    np.testing.assert_allclose(host["lr"], optim.learning_rate(ocfg, 0), rtol=1e-6)
    assert host["tokens"] == contract_batch(1)["mask_input"].sum() and host["grad_norm"] > 0

    state, m = train(state, shd.shard_batch(contract_batch(2), mesh))
    np.testing.assert_allclose(metrics.to_host(m)["lr"], optim.learning_rate(ocfg, 1), rtol=1e-6)
    assert int(state.step) == 2
    flat = lambda tree: {optim.param_path(p): np.asarray(x) for p, x in  # noqa: E731
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
    before, after = flat(before), flat(jax.device_get(state.params))
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert not [k for k in changed if k.startswith("vision/")]  # frozen: bit for bit
    assert len(changed) == len([k for k in before if not k.startswith("vision/")])  # everything else moved

    # A NaN image row: that row's loss is not finite, and the check names its example id.
    bad = contract_batch(3)
    bad["image"][2] = np.nan
    _, m = train(state, shd.shard_batch(bad, mesh))
    host = metrics.to_host(m)
    assert not np.isfinite(host["loss_example"][2]) and np.isfinite(np.delete(host["loss_example"], 2)).all()
    ids = np.arange(100, 100 + B, dtype=np.int32)
    with pytest.raises(metrics.NonFiniteLoss, match=r"step 7: .*non-finite loss.*\[102\]"):
        metrics.check_finite(7, host, ids)


def test_check_finite_names_every_row_when_only_the_gradient_is_bad():
    host = {"loss": np.float32(1.0), "grad_norm": np.float32(np.inf), "loss_example": np.ones(4, np.float32)}
    with pytest.raises(metrics.NonFiniteLoss, match=r"examples of the batch.*\[5, 9\]"):
        metrics.check_finite(3, host, np.array([9, 5], np.int32), row_offset=2)
    metrics.check_finite(3, dict(host, grad_norm=np.float32(2.0)), np.array([9, 5], np.int32))


def test_abstract_batch_matches_the_pipeline_contract():
    mesh = mesh_of(8, 1)
    shapes = step_lib.abstract_batch(CFG, B, T, mesh)
    host = contract_batch()
    assert set(shapes) == set(host) == set(step_lib.DEVICE_KEYS)
    for k, s in shapes.items():
        assert s.shape == host[k].shape and s.dtype == host[k].dtype, k
        assert s.sharding == shd.batch_sharding(mesh)
