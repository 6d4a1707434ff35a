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
