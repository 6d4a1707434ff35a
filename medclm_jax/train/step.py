"""The train and eval steps: pure functions of (state, batch), jitted with explicit shardings.

    layout = state_layout(model_cfg, tx, mesh)                 # abstract TrainState + its shardings
    train = compile_step(jit_train_step(model_cfg, tx, optim_cfg, loss_cfg, D, layout.shardings, mesh),
                         layout.abstract, abstract_batch(model_cfg, B, T, mesh), mesh)
    state, metrics = train(state, batch)                       # `state` is donated: its buffers are reused

`train_step` is one micro-step: the model's forward (compute in the model config's `dtype`, e.g. bf16, from the
f32 master params; remat per `remat_policy`), `losses.span_loss`, its gradient, and `optim`'s update (with
`grad_accum_steps` > 1 the optimizer applies the mean of k micro-batch gradients every k-th call and returns zero
updates in between: `optim.accumulate`). The state argument is donated, so params and optimizer state are updated
in place on the devices.

Metrics (all replicated, so every process can read them; fetched by the trainer one step late, so the host never
waits for the step it has just dispatched):
  loss, ans, cot, z_loss     f32[]      the loss being minimized and its span means (`losses.span_loss`)
  examples, tokens           f32[]      real rows, and real text tokens (`mask_input`) of the global batch
  grad_norm                  f32[]      global L2 norm of this micro-batch's gradient over trainable params
  lr                         f32[]      the learning rate of this micro-step (`optim.learning_rate`)
  loss_example               f32[B]     per-row loss (0 on padding rows): names the rows of a non-finite loss
  sum_loss, sum_ans, sum_cot, count  f32[D, 3]  per (domain, stage) sums, the curriculum scheduler's input

`eval_step` is the forward and the loss only: the [D, 3] sums (a validation pass adds them over its batches).

Batch: the pipeline's global arrays (`data/batch.py`'s contract without the host-only `example_id`), split over
the mesh's `batch` axes (`model.sharding.batch_sharding`). Tracing happens inside `model.sharding.mesh_rules`, so
the model's logical constraints bind to the mesh.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from medclm_jax.data import batch as batch_lib
from medclm_jax.model import sharding as shd
from medclm_jax.model import vlm
from medclm_jax.train import losses, optim
from medclm_jax.train import state as state_lib
from medclm_jax.train.state import TrainState

SUM_KEYS = ("sum_loss", "sum_ans", "sum_cot", "count")
DEVICE_KEYS = tuple(k for k in batch_lib.SPEC if k != "example_id")  # the batch keys that live on the devices


class Layout(NamedTuple):
    """The train state's shapes (`jax.ShapeDtypeStruct` leaves) and shardings (a `TrainState` of shardings)."""

    abstract: TrainState
    shardings: TrainState


def state_layout(model_cfg: vlm.VLMConfig, tx: optax.GradientTransformation, mesh: Mesh,
                 rules: shd.Rules = shd.DEFAULT_RULES) -> Layout:
    """Shapes and shardings of the whole train state at no cost (`jax.eval_shape`): the restore target of a
    checkpoint and the step's in/out shardings."""
    rng = jax.random.key(0)
    with shd.mesh_rules(mesh, rules):
        boxed = jax.eval_shape(lambda r: vlm.init_params(model_cfg, r)["params"], rng)
    abstract = state_lib.abstract_state(shd.unbox(boxed), tx, rng)
    return Layout(abstract, state_lib.state_shardings(abstract, shd.logical_to_sharding(boxed, mesh, rules), mesh))


def abstract_batch(model_cfg: vlm.VLMConfig, batch_size: int, max_len: int, mesh: Mesh,
                   rules: shd.Rules = shd.DEFAULT_RULES) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch's shapes, dtypes and sharding (`DEVICE_KEYS`; the image as the devices hold it, f32)."""
    dims = {"S": model_cfg.vision.image_size, "T": max_len}
    sharding = shd.batch_sharding(mesh, rules)
    return {k: jax.ShapeDtypeStruct((batch_size, *(dims.get(d, d) for d in tail)), jnp.dtype(dtype),
                                    sharding=sharding)
            for k, (dtype, tail) in batch_lib.SPEC.items() if k in DEVICE_KEYS}


# ----------------------------------------------------------------------------------------------- pure steps


def loss_fn(params: Any, batch: dict[str, jax.Array], model: vlm.VLM, loss_cfg: losses.LossConfig,
            num_domains: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss f32[], aux) of one batch: the model's logits, then `losses.span_loss`."""
    logits = model.apply({"params": params}, batch)
    return losses.span_loss(logits, batch, loss_cfg, num_domains)


def trainable_norm(grads: Any, optim_cfg: optim.OptimConfig) -> jax.Array:
    """Global L2 norm over the gradients of trainable params (a frozen param's gradient is never used, so XLA
    does not compute it; including it here would)."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    squares = [jnp.sum(jnp.square(g.astype(jnp.float32))) for kp, g in flat
               if not optim.is_frozen(optim_cfg, optim.param_path(kp))]
    return jnp.sqrt(sum(squares)) if squares else jnp.zeros((), jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: vlm.VLM, tx: optax.GradientTransformation,
               optim_cfg: optim.OptimConfig, loss_cfg: losses.LossConfig, num_domains: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One micro-step (module docstring): the new state and the metrics."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, batch, model, loss_cfg, num_domains)
    metrics = {"loss": loss, "ans": aux["ans"], "cot": aux["cot"], "z_loss": aux["z_loss"],
               "examples": aux["examples"], "tokens": batch["mask_input"].sum().astype(jnp.float32),
               "grad_norm": trainable_norm(grads, optim_cfg),
               "lr": jnp.asarray(optim.learning_rate(optim_cfg, state.step), jnp.float32),
               "loss_example": aux["loss_example"], **{k: aux[k] for k in SUM_KEYS}}
    return state_lib.apply_gradients(state, grads, tx), metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: vlm.VLM, loss_cfg: losses.LossConfig,
              num_domains: int) -> dict[str, jax.Array]:
    """The [D, 3] loss sums of one validation batch (`SUM_KEYS`)."""
    _, aux = loss_fn(params, batch, model, loss_cfg, num_domains)
    return {k: aux[k] for k in SUM_KEYS}


# ----------------------------------------------------------------------------------------------- jit + AOT


def jit_train_step(model_cfg: vlm.VLMConfig, tx: optax.GradientTransformation, optim_cfg: optim.OptimConfig,
                   loss_cfg: losses.LossConfig, num_domains: int, shardings: TrainState, mesh: Mesh,
                   rules: shd.Rules = shd.DEFAULT_RULES) -> Callable:
    """`train_step` under `jax.jit`: state in and out in `shardings` (donated), batch split over the batch axes,
    metrics replicated."""
    fn = functools.partial(train_step, model=vlm.VLM(model_cfg), tx=tx, optim_cfg=optim_cfg, loss_cfg=loss_cfg,
                           num_domains=num_domains)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(shardings, shd.batch_sharding(mesh, rules)),
                   out_shardings=(shardings, replicated), donate_argnums=0)


def jit_eval_step(model_cfg: vlm.VLMConfig, loss_cfg: losses.LossConfig, num_domains: int, param_shardings: Any,
                  mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES) -> Callable:
    """`eval_step` under `jax.jit` (params in their shardings, not donated; sums replicated)."""
    fn = functools.partial(eval_step, model=vlm.VLM(model_cfg), loss_cfg=loss_cfg, num_domains=num_domains)
    return jax.jit(fn, in_shardings=(param_shardings, shd.batch_sharding(mesh, rules)),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def compile_step(jitted: Callable, *abstract_args: Any, mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES):
    """Ahead-of-time `lower(...).compile()` under the mesh's logical rules; the result is called like the step
    and has `memory_analysis()`. One compile, before the first batch arrives."""
    with shd.mesh_rules(mesh, rules):
        return jitted.lower(*abstract_args).compile()


def memory_report(compiled: Any) -> dict[str, int]:
    """Bytes per device of a compiled step (XLA's `memory_analysis`): arguments, outputs, temporaries, the
    outputs aliased to donated arguments, and the peak estimate arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    if m is None:  # some backends do not report
        return {}
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    return {k: int(v) for k, v in out.items()}
