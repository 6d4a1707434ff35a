"""The train state: one pytree (step, params, opt_state, rng) that the jitted step takes, donates and returns.

  step       int32[]       micro-steps done (calls of `apply_gradients`); with `grad_accum_steps` k the optimizer
                           has made `step // k` updates (`optim.learning_rate(cfg, step)` is the lr in effect).
  params     f32 tree      the master weights (the model casts to its compute dtype, e.g. bf16, inside).
  opt_state  optax state   of `optim.make_optimizer`: leaves only for trainable parameters.
  rng        uint32[2]     raw key data of the run's PRNG key (`jax.random.key_data`), plain uint32 so that
                           checkpoints hold no typed key; `step_rng` derives each step's key from (rng, step), so a
                           resumed run draws the same dropout / sampling keys.

Where the params come from (all three end in `from_params` or `init_sharded`, then the same step):
  random init      `init_sharded(lambda r: vlm.init_params(cfg, r)["params"], tx, rng, mesh)`: the abstract
                   state by `jax.eval_shape` (no memory), shardings from the parameters' logical axis names
                   (`model.sharding`), then one jitted init with those `out_shardings`, so no host ever holds
                   the whole model or its optimizer state.
  a converted      `from_params(master_weights(params), tx, rng, shardings)`: params loaded straight into their
  checkpoint       shardings (`model.checkpoint.load_params`), fresh optimizer state.
  our own run      restore the whole state: `abstract_state` + `state_shardings` give the restore target
                   (`train.checkpoint`).
Optimizer-state shardings follow the parameters: every opt_state leaf whose key path ends with a parameter's
path and has its shape (Adam's moments, the accumulator) takes that parameter's sharding; the rest (counts) is
replicated (`state_shardings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from medclm_jax.model import sharding as shd


@dataclasses.dataclass(frozen=True)
class TrainState:
    """See the module docstring. A pytree: jit, donation, `jax.eval_shape` and Orbax take it whole."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def replace(self, **kw) -> "TrainState":
        return dataclasses.replace(self, **kw)

    def step_rng(self) -> jax.Array:
        """This step's PRNG key: fold_in(run key, step)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


jax.tree_util.register_dataclass(TrainState, data_fields=["step", "params", "opt_state", "rng"], meta_fields=[])


def _key_data(rng: jax.Array) -> jax.Array:
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return jnp.asarray(rng, jnp.uint32)


def master_weights(params: Any) -> Any:
    """`params` with every floating leaf in f32 (a bf16 checkpoint becomes master weights); others unchanged."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def create(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Step 0 with a fresh optimizer state. `rng`: a typed key or raw uint32 key data.

    Raises:
      ValueError: a floating parameter that is not f32 (the master weights must be f32; `master_weights`).
    """
    low = [jax.tree_util.keystr(kp) for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]
           if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float32]
    if low:
        raise ValueError(f"TrainState: params {low[:3]} are not float32; master weights must be f32 (cast with "
                         "state.master_weights; the model computes in its own `dtype`)")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=_key_data(rng))


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation) -> TrainState:
    """One micro-step: the optimizer's update (zero on accumulation steps and for frozen params), step + 1."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)


def abstract_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """The state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves) at no cost; `params` may be abstract."""
    return jax.eval_shape(lambda p, r: create(p, tx, r), params, rng)


def _path_names(key_path: tuple) -> tuple:
    return tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(abstract: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
    """Shardings of a whole state: params as given, opt_state leaves as their parameter, the rest replicated.

    Args:
      abstract: `abstract_state(...)`.
      param_shardings: a tree of `NamedSharding` with the params' structure (e.g. `model.sharding.
        logical_to_sharding` of the boxed abstract variables).
      mesh: the device mesh (for the replicated leaves).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {_path_names(kp): (s, tuple(x.shape)) for (kp, x), s in zip(
        jax.tree_util.tree_flatten_with_path(abstract.params)[0], jax.tree.leaves(param_shardings))}

    def one(kp, x):
        names = _path_names(kp)
        for i in range(len(names)):  # the longest suffix that is a parameter's path and has its shape
            hit = by_path.get(names[i:])
            if hit is not None and hit[1] == tuple(x.shape):
                return hit[0]
        return replicated

    return TrainState(step=replicated, params=param_shardings,
                      opt_state=jax.tree_util.tree_map_with_path(one, abstract.opt_state), rng=replicated)


def from_params(params: Any, tx: optax.GradientTransformation, rng: jax.Array, shardings: TrainState | None = None,
                ) -> TrainState:
    """A fresh state around existing params (a converted checkpoint, or weights of another run), built on the
    devices in `shardings` (the params are donated: their buffers become the state's)."""
    return jax.jit(lambda p, r: create(p, tx, r), out_shardings=shardings, donate_argnums=0)(params, rng)


def init_sharded(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, rng: jax.Array,
                 mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES) -> TrainState:
    """Random init straight into the shardings (see the module docstring).

    Args:
      init_params: rng -> params, boxed with logical axis names (e.g. `lambda r: vlm.init_params(cfg, r)
        ["params"]`); the same key initializes the params and becomes the state's `rng`.
      tx: the optimizer.
      rng: a PRNG key.
      mesh, rules: where the params go (`model.sharding`).
    """
    with shd.mesh_rules(mesh, rules):
        boxed = jax.eval_shape(init_params, rng)
        param_shardings = shd.logical_to_sharding(boxed, mesh, rules)
        make = lambda r: create(shd.unbox(init_params(r)), tx, r)  # noqa: E731
        shardings = state_shardings(jax.eval_shape(make, rng), param_shardings, mesh)
        return jax.jit(make, out_shardings=shardings)(rng)
