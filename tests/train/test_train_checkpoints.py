"""Rolling training-run checkpoints (`medclm_jax.train.checkpoint.TrainCheckpoints`): keep-N policy, resume into
shardings, JSON state with bytes (8 fake CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from medclm_jax.model import sharding as S
from medclm_jax.train import checkpoint as C


def _equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_train_checkpoints_keep_n_and_resume(tmp_path):
    tx = optax.adamw(1e-3)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)}
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


def test_a_state_with_more_frozen_groups_is_refused_not_partly_restored(tmp_path):
    """Orbax alone restores the 46 optimizer arrays of a config that freezes `vision/.*` out of a checkpoint saved
    with 120 (nothing frozen) without a word; the run would go on with another optimizer than it trained with."""
    from medclm_jax.model import presets, vlm  # pylint: disable=import-outside-toplevel
    from medclm_jax.train import optim, state as state_lib  # pylint: disable=import-outside-toplevel

    params = vlm.init_params(presets.get_model_config("tiny"), jax.random.key(0))["params"]

    def train_state(groups):
        tx = optim.make_optimizer(optim.OptimConfig(total_steps=10, groups=groups))
        return state_lib.create(params, tx, jax.random.key(1))

    saved = train_state(())
    with C.TrainCheckpoints(tmp_path / "run", async_save=False) as ckpts:
        ckpts.save_train_state(saved, {})
    frozen = jax.eval_shape(lambda: train_state(({"pattern": "vision/.*", "frozen": True},)))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, frozen)
    ckpts = C.TrainCheckpoints(tmp_path / "run")
    with pytest.raises(ValueError, match=r"opt_state holds 120 arrays, this config's 46 .*another train state"):
        ckpts.restore_train_state(frozen, shardings)
    with pytest.raises(ValueError, match="no kept checkpoint restores into this config's train state"):
        ckpts.restore_newest(frozen, shardings)
    assert ckpts.all_steps() == [0]  # refused, not moved aside
    same, _ = ckpts.restore_train_state(jax.eval_shape(lambda: saved), jax.tree.map(lambda _: one, saved))
    _equal(same.opt_state, saved.opt_state)
    ckpts.close()
