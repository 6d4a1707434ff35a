"""The training loss: token-mean cross-entropy over the answer and reasoning spans, weighted per stage.

The paper's loss (docs/design.md, "Curriculum"): Easy/Medium `0.8·L_ans + 0.2·L_cot`, Hard `L_ans`, where L_ans
and L_cot are token-mean cross-entropies over the answer span and the reasoning span (the batch's `span`: 1
reasoning, 2 answer; `medclm_jax/data/batch.py`).

Shift alignment (next-token prediction): the model's logits at position t predict `text[t + 1]`
(`model.vlm.VLM.__call__`), while `span` / `mask_loss` mark the *target tokens* themselves. So the loss at
position t uses target `text[t + 1]` and span `span[t + 1]`; the last position has no target (span 0). The shift
is applied to the small int arrays, never to the [B, T, V] logits (a slice of the logits would be a copy, and its
gradient a padded copy).

Token mean (`LossConfig.token_mean`):
  example  (default) each example's span losses are token means over its own span, L_ans[b] = sum_t nll / n_ans[b];
           the batch loss is the weighted mean over real rows of l[b] = w_ans(stage)·L_ans[b] + w_cot(stage)·
           L_cot[b]. Why: it is the paper's definition read per example, every example counts the same whatever
           its length (a 100-token CoT does not outweigh a 5-token answer of another row), an example's gradient
           does not depend on what else is in its batch, and the batch loss is exactly the mean of the
           per-example losses the curriculum scheduler sees (`curriculum.observe`/`update`), so the scheduler
           tracks the very quantity being minimized.
  batch    the token means are over the batch: L_ans = sum over all answer tokens of the batch of
           w_ans(stage)·nll / (answer tokens in the batch), likewise L_cot, total = L_ans + L_cot (the PyTorch
           `CrossEntropyLoss(reduction='mean')` convention over a masked batch, as the authors' code computes it).
           Long examples weigh more. The per-example aux outputs are the same in both modes.
An empty span (no answer or no reasoning tokens in a row) contributes 0, never 0/0 = NaN; padding rows (`weight`
0) contribute nothing to the loss, its gradient or the sums.

Memory: the logits may be bf16 or f32 [B, T, V] (V = 257k for Gemma). `token_nll` has a hand-written gradient:
the forward takes the max and the target logit in the logits' own dtype (both exact) and upcasts only inside
sum(exp(x - max)); it saves the logits themselves and lse f32[B, T]; the backward writes d(logits) =
(softmax - onehot) · g in the logits' dtype in one elementwise pass. So beyond the gradient itself there is no
f32 [B, T, V] temporary for f32 logits, and at most one for bf16 logits (XLA:CPU materializes exp(x - max) before
reducing it; GPU/TPU fuse it into the reduction); autodiff of `jax.nn.log_softmax` keeps one more in each case.
tests/train/test_losses.py checks both bounds on the compiled program (`memory_analysis`).

Per-(domain, stage) sums: fixed-shape f32[D, 3] arrays (D = `num_domains`, static), so the train step returns
them as device arrays and the trainer reads them one step late without a host sync per step; mean = sum / count
(`curriculum.update` takes those means and counts). A domain id outside [0, D) is dropped from the sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from medclm_jax.data.prompts import SPAN_ANSWER, SPAN_REASONING
from medclm_jax.records.schema import STAGES

Array = jax.Array
TOKEN_MEANS = ("example", "batch")
NUM_STAGES = len(STAGES)  # easy 0, medium 1, hard 2 (`data.views.STAGE_IDS`)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss's constants (`configs/train.py` holds them as `config.loss`; `from_dict` reads them).

    Attributes:
      stage_weights: per stage (easy, medium, hard), the (answer, reasoning) span weights; the paper's
        Easy/Medium 0.8·L_ans + 0.2·L_cot and Hard L_ans.
      token_mean: 'example' (per-example token means, then the weighted mean over the batch) or 'batch' (token
        means over the whole batch); see the module docstring.
      z_loss: coefficient of the z-loss, mean over target tokens of log(Z)^2 (PaLM's 1e-4 keeps the softmax
        normalizer near 1 in bf16); 0 = off.
    """

    stage_weights: tuple[tuple[float, float], ...] = ((0.8, 0.2), (0.8, 0.2), (1.0, 0.0))
    token_mean: str = "example"
    z_loss: float = 0.0

    def __post_init__(self):
        w = tuple(tuple(float(x) for x in pair) for pair in self.stage_weights)
        if len(w) != NUM_STAGES or any(len(p) != 2 or min(p) < 0 for p in w):
            raise ValueError(f"loss.stage_weights {self.stage_weights}: need {NUM_STAGES} pairs (answer, reasoning) "
                             f"of weights >= 0, one per stage {STAGES}")
        object.__setattr__(self, "stage_weights", w)
        if self.token_mean not in TOKEN_MEANS:
            raise ValueError(f"loss.token_mean {self.token_mean!r}: expected one of {TOKEN_MEANS}")
        if self.z_loss < 0:
            raise ValueError(f"loss.z_loss {self.z_loss}: must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossConfig":
        """From a mapping or ml-collections ConfigDict; an unknown key is an error that names it."""
        d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"loss: unknown keys {unknown} (known: {[f.name for f in dataclasses.fields(cls)]})")
        return cls(**d)


# ------------------------------------------------------------------------------------------- token NLL, fp32


def _nll_lse(logits: Array, targets: Array) -> tuple[Array, Array]:
    """(nll, lse) f32[...]. The max and the target logit are taken in the logits' own dtype (both exact), so
    the only f32 values over the vocabulary are those of exp(x - max), which fuse into their sum on GPU/TPU."""
    m = jnp.max(logits, axis=-1).astype(jnp.float32)
    lse = m + jnp.log(jnp.sum(jnp.exp(logits.astype(jnp.float32) - m[..., None]), axis=-1))
    # A gather of one logit per row; XLA's SPMD partitioner keeps it local on a vocab-sharded array (masked
    # gather + all-reduce). A masked sum over the vocabulary would cost a [B, T, V] pass (a buffer on XLA:CPU).
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - target_logit.astype(jnp.float32), lse


@jax.custom_vjp
def token_nll(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Per-token cross-entropy and log-normalizer, computed in f32 whatever the logits' dtype.

    Args:
      logits: f32 or bf16 [..., V].
      targets: int [...], ids in [0, V).

    Returns:
      (nll f32[...] = lse - logits[target], lse f32[...] = logsumexp(logits)). Both are differentiable (the
      z-loss uses lse); the gradient w.r.t. the logits has their dtype.
    """
    return _nll_lse(logits, targets)


def _token_nll_fwd(logits, targets):
    nll, lse = _nll_lse(logits, targets)
    return (nll, lse), (logits, targets, lse)


def _token_nll_bwd(res, g):
    logits, targets, lse = res
    g_nll, g_lse = g
    x = logits.astype(jnp.float32)
    p = jnp.exp(x - lse[..., None])
    hit = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == targets[..., None].astype(jnp.int32)
    # d nll / dx = softmax - onehot, d lse / dx = softmax.
    d = p * (g_nll + g_lse)[..., None] - jnp.where(hit, g_nll[..., None], 0.0)
    return d.astype(logits.dtype), None


token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


# ------------------------------------------------------------------------------------------- the span loss


def shifted_targets(text: Array, span: Array) -> tuple[Array, Array]:
    """Targets aligned with the logits: (target int32[B, T] = text[:, t + 1], its span int32[B, T]); position
    T - 1 has no next token, so its target is 0 and its span 0 (no loss)."""
    pad = ((0, 0), (0, 1))
    return jnp.pad(text[:, 1:], pad).astype(jnp.int32), jnp.pad(span[:, 1:], pad).astype(jnp.int32)


def _safe_div(a: Array, b: Array) -> Array:
    return a / jnp.maximum(b, 1e-9) * (b > 0)


def span_loss(logits: Array, batch: Mapping[str, Array], cfg: LossConfig, num_domains: int
              ) -> tuple[Array, dict[str, Array]]:
    """The curriculum loss of one batch.

    Args:
      logits: f32 or bf16 [B, T, V], the model's next-token logits aligned with `text`.
      batch: `text`, `span` int[B, T]; `stage`, `domain` int[B]; `weight` f32[B] (the batch contract).
      cfg: span weights, token-mean mode, z-loss.
      num_domains: D, static; the size of the per-(domain, stage) sums.

    Returns:
      (loss f32[] to differentiate, aux) with aux:
        loss_example f32[B]  w_ans(stage)·L_ans + w_cot(stage)·L_cot per row (0 on padding rows)
        loss_ans, loss_cot f32[B]  per-row token-mean NLL over the answer / reasoning span (0 where empty)
        tokens_ans, tokens_cot f32[B]  per-row span token counts
        ans, cot f32[]       weighted mean over real rows of loss_ans / loss_cot (metrics)
        z_loss f32[]         mean over target tokens of lse^2 (before the coefficient)
        examples f32[]       sum of `weight`
        sum_loss, sum_ans, sum_cot, count f32[D, 3]  per (domain, stage): sums over real rows of loss_example,
                             loss_ans, loss_cot, and of `weight` (mean = sum / count, 0 where count is 0).
    """
    target, tspan = shifted_targets(batch["text"], batch["span"])
    nll, lse = token_nll(logits, target)
    weight = batch["weight"].astype(jnp.float32)
    stage = batch["stage"].astype(jnp.int32)
    is_ans, is_cot = tspan == SPAN_ANSWER, tspan == SPAN_REASONING
    n_ans, n_cot = is_ans.sum(-1).astype(jnp.float32), is_cot.sum(-1).astype(jnp.float32)
    # `where`, not a product: a non-finite NLL off the spans (e.g. a -inf logit) must not leak in as 0 * inf.
    s_ans, s_cot = jnp.where(is_ans, nll, 0.0).sum(-1), jnp.where(is_cot, nll, 0.0).sum(-1)
    loss_ans, loss_cot = _safe_div(s_ans, n_ans), _safe_div(s_cot, n_cot)
    weights = jnp.asarray(cfg.stage_weights, jnp.float32)[jnp.clip(stage, 0, NUM_STAGES - 1)]  # [B, 2]
    w_ans, w_cot = weights[:, 0], weights[:, 1]
    loss_example = (w_ans * loss_ans + w_cot * loss_cot) * (weight > 0)
    examples = weight.sum()
    if cfg.token_mean == "example":
        total = _safe_div((weight * loss_example).sum(), examples)
    else:
        total = (_safe_div((weight * w_ans * s_ans).sum(), (weight * n_ans).sum())
                 + _safe_div((weight * w_cot * s_cot).sum(), (weight * n_cot).sum()))
    on_target = (tspan > 0) & (weight[:, None] > 0)
    z = _safe_div(jnp.where(on_target, lse * lse, 0.0).sum(), on_target.sum().astype(jnp.float32))
    if cfg.z_loss:
        total = total + cfg.z_loss * z
    aux = {"loss_example": loss_example, "loss_ans": loss_ans, "loss_cot": loss_cot, "tokens_ans": n_ans,
           "tokens_cot": n_cot, "ans": _safe_div((weight * loss_ans).sum(), examples),
           "cot": _safe_div((weight * loss_cot).sum(), examples), "z_loss": z, "examples": examples}
    aux.update(domain_stage_sums(batch["domain"], stage, weight, num_domains, sum_loss=loss_example,
                                 sum_ans=loss_ans, sum_cot=loss_cot))
    return total, aux


def domain_stage_sums(domain: Array, stage: Array, weight: Array, num_domains: int, **values: Array
                      ) -> dict[str, Array]:
    """Weighted per-(domain, stage) sums of per-row values, as fixed-shape f32[D, 3] arrays.

    Args:
      domain, stage: int[B] ids; rows outside [0, D) x [0, 3) are dropped.
      weight: f32[B] (0 = padding row).
      num_domains: D (static).
      **values: name -> f32[B].

    Returns:
      {name: sum_b weight[b]·values[name][b] over the rows of each cell} plus `count` = sum of weights.
    """
    cell = domain.astype(jnp.int32) * NUM_STAGES + stage.astype(jnp.int32)
    valid = (domain >= 0) & (domain < num_domains) & (stage >= 0) & (stage < NUM_STAGES)
    # A one-hot product summed elementwise (not a matmul, whose f32 precision is reduced on TPU).
    onehot = jax.nn.one_hot(jnp.where(valid, cell, -1), num_domains * NUM_STAGES, dtype=jnp.float32)
    w = weight.astype(jnp.float32)
    out = {name: (onehot * (w * v.astype(jnp.float32))[:, None]).sum(0) for name, v in values.items()}
    out["count"] = (onehot * w[:, None]).sum(0)
    return {k: v.reshape(num_domains, NUM_STAGES) for k, v in out.items()}
