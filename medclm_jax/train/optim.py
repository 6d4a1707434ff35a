"""The optimizer: AdamW with warmup + cosine, global-norm clipping, decay masks, per-group learning rates,
frozen groups and gradient accumulation, built from one config (`OptimConfig`).

Defaults are the optimizer constants of the authors' released (PyTorch) code: AdamW lr 2e-5, weight decay 0.05,
betas (0.9, 0.98), gradient clipping at global norm 1.0, cosine decay to 1e-6. It states no warm-up, so
`warmup_steps` defaults to 0; configs that train from scratch set it.

Parameters are named by their path, '/'-joined dict keys as in the params tree (`decoder/layers/attn/q`,
`vision/layers/ln1/scale`; `param_path`). Patterns are regular expressions that must match the whole path
(`re.fullmatch`):
  no_decay   paths without weight decay: by default norms' scales and biases, every bias, and the embeddings
             (token embedding = the tied LM head, SigLIP's position embedding).
  groups     `ParamGroup(pattern, lr_scale, frozen)`, the first matching group wins; unmatched parameters train
             with lr_scale 1. A group that matches no parameter is an error (a typo would silently do nothing).

The update, per trainable parameter (PyTorch AdamW semantics: decay decoupled from the Adam moments and scaled
by the learning rate, which includes the group's lr_scale):

    g   <- mean of the k micro-batch gradients (k = grad_accum_steps), clipped to global norm `grad_clip`
    u   <- adam(g) + weight_decay * p   (decay only where the path is not `no_decay`)
    p   <- p - lr(t) * lr_scale(group) * u

Frozen parameters: `optax.multi_transform` routes them to `optax.set_to_zero()`, so their update is 0 and the
optimizer holds no state for them (no Adam moments, no accumulator): `opt_state` has leaves only for trainable
parameters. Their gradients never enter the clipping norm. (XLA also drops the computation of gradients that
end in a zero update, so freezing `vision/.*` saves the vision tower's weight gradients, not only its state.)

Gradient accumulation (`accumulate`, ours rather than `optax.MultiSteps`, which in optax 0.2.8 runs the whole
inner optimizer on every micro-step and then discards it): each call adds the gradient to an f32 accumulator;
every k-th call runs clip + AdamW on the mean under `lax.cond` and resets it; the other calls return zero
updates. It lives inside the trainable partition, so frozen parameters have no accumulator. The learning-rate
schedule counts *updates*: the micro-step count is `TrainState.step`, the update count `step // k`
(`learning_rate`). Accumulating the mean of micro-batch gradients equals one step on the concatenated batch
when the loss is a mean over equally sized micro-batches (tests/train/test_optim.py).

Mixed precision: the master weights are the f32 params (`model` configs: `param_dtype` float32, compute `dtype`
bfloat16, cast inside the layers); gradients arrive in f32; the Adam moments are f32 unless `mu_dtype` asks for
bf16 first moments. `state.master_weights` upcasts a bf16 checkpoint before training.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Whole-path patterns (re.fullmatch) of parameters without weight decay: norm scales/biases (RMSNorm `*norm/scale`,
# SigLIP LayerNorms `ln1/scale`, `final_ln/bias`), every bias, and embeddings.
DEFAULT_NO_DECAY = r".*((norm|ln\d*)/(scale|bias)|bias|embedding)"
TRAINABLE, FROZEN = "trainable", "frozen"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters whose path matches `pattern` (re.fullmatch): trained with `lr_scale` x the learning rate, or
    not at all (`frozen`: no update and no optimizer state)."""

    pattern: str
    lr_scale: float = 1.0
    frozen: bool = False

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"optim.groups: pattern {self.pattern!r} is not a regular expression: {e}") from None
        if self.lr_scale < 0:
            raise ValueError(f"optim.groups[{self.pattern!r}].lr_scale {self.lr_scale}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer's constants (`configs/train.py` holds them as `config.optim`; `from_dict` reads them).

    Attributes:
      lr: peak learning rate (after warm-up).
      end_lr: learning rate at `total_steps` (the cosine's floor).
      warmup_steps: linear warm-up from `init_lr` to `lr`, in optimizer updates.
      init_lr: learning rate at update 0 of the warm-up.
      total_steps: optimizer updates of the whole run (warm-up included): the cosine reaches `end_lr` there and
        stays. Required.
      b1, b2, eps: Adam's constants.
      weight_decay: decoupled weight decay (multiplied by the learning rate, as PyTorch's AdamW).
      grad_clip: global-norm clipping threshold of the (accumulated) gradient; 0 = off.
      no_decay: whole-path pattern of parameters without weight decay ('' = decay everything).
      groups: `ParamGroup`s (or dicts of their fields), first match wins.
      grad_accum_steps: micro-batches per optimizer update (1 = no accumulation).
      mu_dtype: dtype of Adam's first moment (None = the params' dtype, f32; 'bfloat16' halves it).
    """

    lr: float = 2e-5
    end_lr: float = 1e-6
    warmup_steps: int = 0
    init_lr: float = 0.0
    total_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    no_decay: str = DEFAULT_NO_DECAY
    groups: tuple[ParamGroup, ...] = ()
    grad_accum_steps: int = 1
    mu_dtype: str | None = None

    def __post_init__(self):
        groups = tuple(g if isinstance(g, ParamGroup) else ParamGroup(**dict(g)) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        if self.total_steps is None or self.total_steps <= 0:
            raise ValueError(f"optim.total_steps {self.total_steps}: set it to the run's optimizer updates (> 0); "
                             "the cosine reaches optim.end_lr there")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"optim.warmup_steps {self.warmup_steps}: need 0 <= warmup_steps <= total_steps "
                             f"({self.total_steps})")
        if self.grad_accum_steps < 1:
            raise ValueError(f"optim.grad_accum_steps {self.grad_accum_steps}: must be >= 1")
        if min(self.lr, self.end_lr, self.init_lr, self.weight_decay, self.grad_clip) < 0:
            raise ValueError("optim: lr, end_lr, init_lr, weight_decay and grad_clip must be >= 0")
        re.compile(self.no_decay)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OptimConfig":
        """From a mapping or ml-collections ConfigDict; an unknown key is an error that names it."""
        d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"optim: unknown keys {unknown} (known: {known})")
        if "groups" in d:
            d["groups"] = tuple(d["groups"])
        return cls(**d)


# --------------------------------------------------------------------------------------------------- paths


def param_path(key_path: tuple) -> str:
    """'/'-joined names of a `jax.tree_util` key path ('decoder/layers/attn/q'); the `.value` of a flax
    partitioning box is skipped, so boxed and unboxed trees give the same names."""
    names = []
    for k in key_path:
        if isinstance(k, jax.tree_util.DictKey):
            names.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name != "value":
                names.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            names.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            names.append(str(k.key))
        else:
            names.append(str(k))
    return "/".join(names)


def map_paths(fn: Callable[[str], Any], tree: Any) -> Any:
    """`tree` with each leaf replaced by `fn(param_path of the leaf)`."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: fn(param_path(kp)), tree)


def _group_of(cfg: OptimConfig, path: str) -> ParamGroup | None:
    return next((g for g in cfg.groups if re.fullmatch(g.pattern, path)), None)


def decays(cfg: OptimConfig, path: str) -> bool:
    """Whether the parameter at `path` gets weight decay."""
    return cfg.weight_decay > 0 and not (cfg.no_decay and re.fullmatch(cfg.no_decay, path))


def lr_scale(cfg: OptimConfig, path: str) -> float:
    """The learning-rate multiplier of the parameter at `path` (0 for a frozen one)."""
    g = _group_of(cfg, path)
    return 1.0 if g is None else (0.0 if g.frozen else g.lr_scale)


def is_frozen(cfg: OptimConfig, path: str) -> bool:
    g = _group_of(cfg, path)
    return g is not None and g.frozen


def check_groups(cfg: OptimConfig, params: Any) -> None:
    """Raises ValueError naming a group pattern that matches no parameter of `params`."""
    paths = [param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for g in cfg.groups:
        if not any(re.fullmatch(g.pattern, p) for p in paths):
            raise ValueError(f"optim.groups: pattern {g.pattern!r} matches no parameter (paths look like "
                             f"{paths[:3]}; the pattern must match the whole path)")


def param_table(cfg: OptimConfig, params: Any) -> list[dict[str, Any]]:
    """One row per parameter (path, shape, frozen, lr_scale, decay): what the trainer logs at start-up."""
    return [{"path": (p := param_path(kp)), "shape": tuple(x.shape), "frozen": is_frozen(cfg, p),
             "lr_scale": lr_scale(cfg, p), "decay": decays(cfg, p)}
            for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]]


# --------------------------------------------------------------------------------------------- transforms


def schedule(cfg: OptimConfig) -> optax.Schedule:
    """Learning rate at optimizer update t: linear warm-up `init_lr` -> `lr` over `warmup_steps`, then cosine
    to `end_lr` at `total_steps`, constant after."""
    return optax.warmup_cosine_decay_schedule(cfg.init_lr, cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.end_lr)


def learning_rate(cfg: OptimConfig, step: int | jax.Array) -> jax.Array:
    """The base learning rate in effect at micro-step `step` (`TrainState.step`), for the metrics."""
    return schedule(cfg)(step // cfg.grad_accum_steps)


def _scale_by_path(fn: Callable[[str], float]) -> optax.GradientTransformation:
    """Stateless: multiplies each update by `fn(its path)` (a Python float, static)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda kp, u: u * jnp.asarray(fn(param_path(kp)), u.dtype),
                                                updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _decay_by_path(weight_decay: float, fn: Callable[[str], bool]) -> optax.GradientTransformation:
    """Stateless: adds `weight_decay * param` to the updates of the parameters whose path `fn` accepts."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs the params: call tx.update(grads, opt_state, params)")
        return jax.tree_util.tree_map_with_path(
            lambda kp, u, p: u + weight_decay * p.astype(u.dtype) if fn(param_path(kp)) else u, updates,
            params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class AccumulateState(NamedTuple):
    micro_step: jax.Array  # int32[]: micro-batches accumulated since the last update
    acc: Any  # f32 sum of their gradients (params' structure)
    inner: Any  # the inner optimizer's state


def accumulate(inner: optax.GradientTransformation, every_k: int) -> optax.GradientTransformation:
    """Runs `inner` on the mean of every `every_k` consecutive gradients; zero updates in between.

    The inner optimizer runs only on the k-th call (`lax.cond`, so only one branch executes on device); the
    accumulator is f32 whatever the gradients' dtype. `every_k == 1` returns `inner` itself.
    """
    if every_k == 1:
        return inner

    def init(params):
        acc = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        return AccumulateState(jnp.zeros((), jnp.int32), acc, inner.init(params))

    def update(grads, state, params=None):
        acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), state.acc, grads)

        def emit(_):
            mean = jax.tree.map(lambda a, g: (a / every_k).astype(g.dtype), acc, grads)
            updates, inner_state = inner.update(mean, state.inner, params)
            return updates, AccumulateState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, acc),
                                            inner_state)

        def hold(_):
            zeros = jax.tree.map(jnp.zeros_like, grads)
            return zeros, AccumulateState(state.micro_step + 1, acc, state.inner)

        return jax.lax.cond(state.micro_step + 1 >= every_k, emit, hold, None)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The optimizer of `cfg` (see the module docstring). `tx.init(params)` checks the group patterns."""
    mu_dtype = None if cfg.mu_dtype is None else jnp.dtype(cfg.mu_dtype)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps, mu_dtype=mu_dtype))
    if cfg.weight_decay > 0:
        parts.append(_decay_by_path(cfg.weight_decay, functools.partial(decays, cfg)))
    parts.append(optax.scale_by_learning_rate(schedule(cfg)))
    if any(g.lr_scale != 1.0 for g in cfg.groups if not g.frozen):
        parts.append(_scale_by_path(functools.partial(lr_scale, cfg)))
    trainable = accumulate(optax.chain(*parts), cfg.grad_accum_steps)

    def labels(params):
        check_groups(cfg, params)
        return map_paths(lambda p: FROZEN if is_frozen(cfg, p) else TRAINABLE, params)

    return optax.multi_transform({TRAINABLE: trainable, FROZEN: optax.set_to_zero()}, labels)
