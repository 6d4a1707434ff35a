"""The span loss against by-hand numpy arithmetic: shift alignment, span/stage weighting, token means, padding,
empty spans, z-loss, per-(domain, stage) sums, the hand-written gradient, bf16 logits and compiled memory."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclm_jax.train import curriculum, losses

V = 7
# Jitted once per (shapes, config): eager calls would compile op by op.
span_loss = jax.jit(losses.span_loss, static_argnums=(2, 3))
# Rows (T = 8): easy, medium, hard, easy with an empty reasoning span, a padding row (copy of row 0, weight 0).
# span marks the target tokens themselves: 0 prompt, 1 reasoning, 2 answer, 0 padding.
SPAN = np.array([[0, 0, 1, 1, 1, 2, 2, 0],
                 [0, 0, 0, 1, 2, 2, 2, 2],
                 [0, 0, 0, 0, 2, 2, 0, 0],
                 [0, 0, 0, 2, 2, 2, 0, 0],
                 [0] * 8], np.int32)
STAGE = np.array([0, 1, 2, 0, 0], np.int32)
DOMAIN = np.array([1, 0, 1, 1, 1], np.int32)
WEIGHT = np.array([1, 1, 1, 1, 0], np.float32)


@pytest.fixture(autouse=True)
def _retrace_under_mutmut():
    """Under mutmut only: it maps each test to the functions it reaches by recording their calls in one process,
    and a jitted function called again with the same shapes is not traced again, so without this only the first
    test of each shape would be mapped to `span_loss` (and the others never run against its mutants)."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":  # the mapping run; a mutant's own run keeps one mutant
        jax.clear_caches()
    yield


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    b, t = SPAN.shape
    text = rng.integers(0, V, (b, t)).astype(np.int32)
    text[4] = text[0]
    logits = rng.normal(0, 2.0, (b, t, V)).astype(np.float32)
    batch = {"text": text, "span": SPAN, "stage": STAGE, "domain": DOMAIN, "weight": WEIGHT}
    return logits, batch


def by_hand(logits, batch, stage_weights=((0.8, 0.2), (0.8, 0.2), (1.0, 0.0))):
    """Per-row token-mean NLL of each span, with an explicit loop over the shift: position t predicts t + 1."""
    logits = np.asarray(logits, np.float64)
    b, t = batch["text"].shape
    rows = []
    for i in range(b):
        nll = {1: [], 2: []}
        for pos in range(t - 1):
            target, span = batch["text"][i, pos + 1], batch["span"][i, pos + 1]
            if span:
                z = logits[i, pos]
                nll[span].append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[target])
        ans = np.mean(nll[2]) if nll[2] else 0.0
        cot = np.mean(nll[1]) if nll[1] else 0.0
        wa, wc = stage_weights[batch["stage"][i]]
        rows.append(dict(ans=ans, cot=cot, n_ans=len(nll[2]), n_cot=len(nll[1]), s_ans=sum(nll[2]),
                         s_cot=sum(nll[1]), wa=wa, wc=wc, ex=wa * ans + wc * cot))
    return rows


def test_span_loss_equals_hand_arithmetic_per_example():
    logits, batch = make_batch()
    loss, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=2)
    rows = by_hand(logits, batch)
    real = [r for r, w in zip(rows, WEIGHT) if w]
    np.testing.assert_allclose(float(loss), np.mean([r["ex"] for r in real]), rtol=1e-5)
    np.testing.assert_allclose(aux["loss_ans"], [r["ans"] for r in rows], rtol=1e-5)
    np.testing.assert_allclose(aux["loss_cot"], [r["cot"] for r in rows], rtol=1e-5, atol=1e-7)
    # Counts are of target tokens: row 1's last answer token (t = 7) is predicted at t = 6 and counts.
    np.testing.assert_array_equal(aux["tokens_ans"], [2, 4, 2, 3, 0])
    np.testing.assert_array_equal(aux["tokens_cot"], [3, 1, 0, 0, 0])
    # Hard uses L_ans only; the easy row without reasoning is 0.8 * L_ans (its empty span adds 0, not NaN).
    np.testing.assert_allclose(aux["loss_example"][2], rows[2]["ans"], rtol=1e-5)
    np.testing.assert_allclose(aux["loss_example"][3], 0.8 * rows[3]["ans"], rtol=1e-5)
    assert aux["loss_example"][4] == 0 and float(aux["examples"]) == 4


def test_span_loss_batch_token_mean():
    logits, batch = make_batch(1)
    loss, _ = span_loss(jnp.asarray(logits), batch, losses.LossConfig(token_mean="batch"), num_domains=2)
    rows = [r for r, w in zip(by_hand(logits, batch), WEIGHT) if w]
    want = (sum(r["wa"] * r["s_ans"] for r in rows) / sum(r["n_ans"] for r in rows)
            + sum(r["wc"] * r["s_cot"] for r in rows) / sum(r["n_cot"] for r in rows))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_custom_stage_weights():
    logits, batch = make_batch(2)
    cfg = losses.LossConfig(stage_weights=((0.5, 0.5), (1.0, 0.0), (0.3, 0.0)))
    loss, _ = span_loss(jnp.asarray(logits), batch, cfg, num_domains=2)
    rows = by_hand(logits, batch, cfg.stage_weights)
    np.testing.assert_allclose(float(loss), np.mean([r["ex"] for r in rows[:4]]), rtol=1e-5)


def test_padding_rows_change_nothing():
    logits, batch = make_batch(3)
    loss, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=2)
    trimmed = {k: v[:4] for k, v in batch.items()}
    loss4, _ = span_loss(jnp.asarray(logits[:4]), trimmed, losses.LossConfig(), num_domains=2)
    np.testing.assert_allclose(float(loss), float(loss4), rtol=1e-6)
    # The padding row's logits get no gradient, even with a garbage span.
    batch["span"] = batch["span"].copy()
    batch["span"][4] = SPAN[0]
    grad = jax.jit(jax.grad(lambda x: losses.span_loss(x, batch, losses.LossConfig(), 2)[0]))(logits)
    assert np.abs(np.asarray(grad[4])).max() == 0 and np.abs(np.asarray(grad[:4])).max() > 0
    assert float(aux["count"].sum()) == 4


def test_shift_alignment_by_hand():
    """Logits that put all mass on text[t + 1] at position t give ~0 loss; on text[t] (no shift) a large one."""
    _, batch = make_batch(4)
    text = batch["text"]
    nxt = np.concatenate([text[:, 1:], text[:, :1]], axis=1)
    shifted = 30.0 * np.eye(V, dtype=np.float32)[nxt]
    unshifted = 30.0 * np.eye(V, dtype=np.float32)[text]
    cfg = losses.LossConfig()
    good, _ = span_loss(jnp.asarray(shifted), batch, cfg, 2)
    assert float(good) < 1e-6
    bad, _ = span_loss(jnp.asarray(unshifted), batch, cfg, 2)
    assert float(bad) > 5.0
    # The prediction of the first target token is made at the position before it (a prompt token).
    target, tspan = losses.shifted_targets(jnp.asarray(text), jnp.asarray(SPAN))
    assert int(tspan[0, 1]) == 1 and int(target[0, 1]) == text[0, 2]
    assert int(tspan[1, 6]) == 2 and int(tspan[1, 7]) == 0  # the last position has no target


def test_empty_spans_give_zero_not_nan():
    logits, batch = make_batch(5)
    batch = dict(batch, span=np.zeros_like(SPAN))
    for mode in losses.TOKEN_MEANS:
        fn = lambda x: losses.span_loss(x, batch, losses.LossConfig(token_mean=mode, z_loss=1e-3), 2)  # noqa
        (loss, aux), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(logits))
        assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all() and float(np.abs(grad).max()) == 0
        assert all(np.isfinite(np.asarray(v)).all() for v in aux.values())
    all_padding = dict(make_batch(5)[1], weight=np.zeros(5, np.float32))
    loss, _ = span_loss(jnp.asarray(logits), all_padding, losses.LossConfig(), 2)
    assert float(loss) == 0.0


def test_z_loss_value():
    logits, batch = make_batch(6)
    base, _ = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), 2)
    with_z, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(z_loss=1e-2), 2)
    lse = np_logsumexp(logits)  # [B, T]
    on = np.zeros(SPAN.shape, bool)
    on[:, :-1] = SPAN[:, 1:] > 0
    on &= WEIGHT[:, None] > 0
    z = (lse[on] ** 2).mean()
    np.testing.assert_allclose(float(aux["z_loss"]), z, rtol=1e-5)
    np.testing.assert_allclose(float(with_z) - float(base), 1e-2 * z, rtol=1e-4)


def test_domain_stage_sums_equal_a_loop_and_feed_the_curriculum():
    rng = np.random.default_rng(7)
    b, t, d = 24, 10, 3
    span = rng.integers(0, 3, (b, t)).astype(np.int32)
    batch = {"text": rng.integers(0, V, (b, t)).astype(np.int32), "span": span,
             "stage": rng.integers(0, 3, b).astype(np.int32), "domain": rng.integers(0, d, b).astype(np.int32),
             "weight": (rng.random(b) > 0.2).astype(np.float32)}
    logits = rng.normal(size=(b, t, V)).astype(np.float32)
    _, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=d)
    ex, ans = np.asarray(aux["loss_example"]), np.asarray(aux["loss_ans"])
    want_sum, want_ans, want_n = np.zeros((d, 3)), np.zeros((d, 3)), np.zeros((d, 3))
    for i in range(b):
        if batch["weight"][i]:
            cell = batch["domain"][i], batch["stage"][i]
            want_sum[cell] += ex[i]
            want_ans[cell] += ans[i]
            want_n[cell] += 1
    assert aux["sum_loss"].shape == (d, 3)
    np.testing.assert_allclose(aux["sum_loss"], want_sum, rtol=1e-5)
    np.testing.assert_allclose(aux["sum_ans"], want_ans, rtol=1e-5)
    np.testing.assert_array_equal(aux["count"], want_n)
    # The same numbers `curriculum.observe` makes on the host from per-example losses.
    mean, count = curriculum.observe(batch["domain"], batch["stage"], ex, batch["weight"], d)
    np.testing.assert_allclose(np.asarray(aux["sum_loss"]) / np.maximum(want_n, 1), mean, rtol=1e-5)
    np.testing.assert_array_equal(count, want_n)


def naive_nll(logits, targets):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_nll_value_and_gradient_match_log_softmax(dtype):
    rng = np.random.default_rng(8)
    logits = jnp.asarray(rng.normal(0, 3, (3, 5, 11)), dtype)
    targets = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
    w = jnp.asarray(rng.random((3, 5)), jnp.float32)
    nll, lse = losses.token_nll(logits, targets)
    assert nll.dtype == jnp.float32
    np.testing.assert_allclose(nll, naive_nll(logits, targets), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lse, jax.nn.logsumexp(logits.astype(jnp.float32), -1), rtol=1e-6)

    def ours(x):
        nll, lse = losses.token_nll(x, targets)
        return (w * nll).sum() + 0.1 * (lse ** 2).sum()

    def naive(x):
        return (w * naive_nll(x, targets)).sum() + 0.1 * (jax.nn.logsumexp(x.astype(jnp.float32), -1) ** 2).sum()

    g, g_ref = jax.jit(jax.grad(ours))(logits), jax.jit(jax.grad(naive))(logits)
    assert g.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), rtol=tol, atol=tol)


def test_bf16_logits_give_the_f32_loss_of_their_values():
    logits, batch = make_batch(9)
    bf = jnp.asarray(logits, jnp.bfloat16)
    fn = jax.jit(lambda x: losses.span_loss(x, batch, losses.LossConfig(), 2)[0])
    np.testing.assert_allclose(float(fn(bf)), float(fn(bf.astype(jnp.float32))), rtol=1e-6)
    assert jax.jit(jax.grad(fn))(bf).dtype == jnp.bfloat16


def _temp_bytes(fn, logits):
    b, t, _ = logits.shape
    batch = {"text": jax.ShapeDtypeStruct((b, t), jnp.int32), "span": jax.ShapeDtypeStruct((b, t), jnp.int32),
             "stage": jax.ShapeDtypeStruct((b,), jnp.int32), "domain": jax.ShapeDtypeStruct((b,), jnp.int32),
             "weight": jax.ShapeDtypeStruct((b,), jnp.float32)}
    return jax.jit(jax.grad(fn)).lower(logits, batch).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_holds_at_most_one_f32_copy_of_the_logits():
    b, t, v = 2, 256, 32768
    f32_copy = b * t * v * 4
    ours = lambda x, batch: losses.span_loss(x, batch, losses.LossConfig(z_loss=1e-4), 4)[0]  # noqa: E731

    def naive(x, batch):
        target, span = losses.shifted_targets(batch["text"], batch["span"])
        nll = naive_nll(x, target)
        return jnp.where(span > 0, nll, 0).sum() / jnp.maximum((span > 0).sum(), 1)

    f32 = jax.ShapeDtypeStruct((b, t, v), jnp.float32)
    bf16 = jax.ShapeDtypeStruct((b, t, v), jnp.bfloat16)
    # f32 logits: no [B, T, V] temporary besides the gradient itself (an output); autodiff keeps a full copy.
    assert _temp_bytes(ours, f32) < 0.05 * f32_copy <= _temp_bytes(naive, f32)
    # bf16 logits: at most one f32 copy (XLA:CPU does not fuse exp(x - max) into its sum); autodiff holds two.
    assert _temp_bytes(ours, bf16) <= 1.05 * f32_copy < _temp_bytes(naive, bf16)


def test_config_checks():
    with pytest.raises(ValueError, match="unknown keys"):
        losses.LossConfig.from_dict({"zloss": 1e-4})
    with pytest.raises(ValueError, match="stage_weights"):
        losses.LossConfig(stage_weights=((0.8, 0.2),))
    with pytest.raises(ValueError, match="token_mean"):
        losses.LossConfig(token_mean="token")
    assert losses.LossConfig.from_dict({"stage_weights": [[1, 0], [1, 0], [1, 0]]}).stage_weights[0] == (1.0, 0.0)


# mutation-testing gaps (benchmarks/results/mutation.md)


def test_aux_outputs_have_their_documented_dtype_and_shape():
    """Every aux output is f32 (token counts too: the trainer averages and logs them as floats)."""
    logits, batch = make_batch(10)
    _, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=2)
    b = SPAN.shape[0]
    shapes = {"loss_example": (b,), "loss_ans": (b,), "loss_cot": (b,), "tokens_ans": (b,), "tokens_cot": (b,),
              "ans": (), "cot": (), "z_loss": (), "examples": (), "sum_loss": (2, 3), "sum_ans": (2, 3),
              "sum_cot": (2, 3), "count": (2, 3)}
    assert {k: (v.dtype, v.shape) for k, v in aux.items()} == {k: (jnp.float32, s) for k, s in shapes.items()}


def test_a_padding_row_with_real_spans_reports_zero_loss():
    """A padding row is a copy of a real row (`data.batch`): its spans are not empty, yet its per-example loss,
    the one the curriculum would see, is 0; its token-mean span losses are still reported."""
    logits, batch = make_batch(11)
    batch["span"] = SPAN.copy()
    batch["span"][4] = SPAN[0]
    logits[4] = logits[0]
    _, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=2)
    assert float(aux["loss_example"][4]) == 0.0 and float(aux["loss_example"][0]) > 0
    np.testing.assert_allclose(aux["loss_ans"][4], aux["loss_ans"][0], rtol=1e-6)


# mutation-testing gaps (losses.py, round 3)


def np_logsumexp(x):
    """Plain float64 numpy log-sum-exp over the last axis, max taken per position."""
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


def np_log_softmax(x):
    return np.asarray(x, np.float64) - np_logsumexp(x)[..., None]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_nll_is_stable_per_position_whatever_the_other_positions_logits(dtype):
    """Positions whose logits lie hundreds apart: an implementation that subtracts one max over the whole array
    (not per position) underflows exp() at the low positions and returns inf/NaN there."""
    rng = np.random.default_rng(12)
    logits = rng.normal(0, 2, (2, 3, 11)) + np.array([[0.0, -300.0, 250.0], [-120.0, 40.0, 0.0]])[..., None]
    logits = np.asarray(jnp.asarray(logits, dtype).astype(jnp.float32))  # the values the function sees
    targets = rng.integers(0, 11, (2, 3)).astype(np.int32)
    nll, lse = losses.token_nll(jnp.asarray(logits, dtype), jnp.asarray(targets))
    want = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, np_logsumexp(logits), rtol=1e-6)


def test_z_loss_ignores_a_padding_row_with_real_spans():
    """A padding row copied from a real row keeps its spans: with a z-loss on, its lse^2 must neither enter the
    reported z-loss nor give its logits a gradient (a check `weight >= 0` would count it)."""
    logits, batch = make_batch(13)
    batch["span"] = SPAN.copy()
    batch["span"][4] = SPAN[0]
    logits[4] += 5.0  # a different log-normalizer from row 0's, so counting it changes the mean
    cfg = losses.LossConfig(z_loss=1e-2)
    fn = lambda x: losses.span_loss(x, batch, cfg, 2)  # noqa: E731
    (_, aux), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(logits))
    lse = np_logsumexp(logits)
    on = np.zeros(SPAN.shape, bool)
    on[:4, :-1] = SPAN[:4, 1:] > 0  # real rows only
    np.testing.assert_allclose(float(aux["z_loss"]), (lse[on] ** 2).mean(), rtol=1e-5)
    assert np.abs(np.asarray(grad[4])).max() == 0


def test_aux_ans_and_cot_are_the_mean_over_real_rows():
    """`ans` / `cot` are the weight-averaged per-row span losses over real rows (the metrics the trainer logs);
    a wrong combination of weight and loss, or a padding row counted, gives other numbers."""
    logits, batch = make_batch(14)
    _, aux = span_loss(jnp.asarray(logits), batch, losses.LossConfig(), num_domains=2)
    real = by_hand(logits, batch)[:4]
    np.testing.assert_allclose(float(aux["ans"]), np.mean([r["ans"] for r in real]), rtol=1e-5)
    np.testing.assert_allclose(float(aux["cot"]), np.mean([r["cot"] for r in real]), rtol=1e-5)


def test_domain_stage_sums_drop_rows_outside_the_domain_stage_grid():
    """Rows with a domain outside [0, D) or a stage outside [0, 3) are dropped, not folded into a neighbouring
    cell (domain 0 stage 3 would land on domain 1 stage 0, domain 1 stage -1 on domain 0 stage 2)."""
    domain = np.array([0, 1, 2, -1, 1, 0, 1, 1], np.int32)
    stage = np.array([0, 2, 0, 1, -1, 3, 1, 0], np.int32)
    weight = np.array([1, 1, 1, 1, 1, 1, 0, 1], np.float32)
    value = 2.0 ** np.arange(8, dtype=np.float32)  # each row's contribution is visible on its own
    out = losses.domain_stage_sums(jnp.asarray(domain), jnp.asarray(stage), jnp.asarray(weight), 2,
                                   v=jnp.asarray(value))
    want_v, want_n = np.zeros((2, 3)), np.zeros((2, 3))
    want_v[0, 0], want_v[1, 2], want_v[1, 0] = 1, 2, 128  # rows 0, 1, 7; row 6 is padding (weight 0)
    want_n[0, 0], want_n[1, 2], want_n[1, 0] = 1, 1, 1
    assert set(out) == {"v", "count"}
    np.testing.assert_array_equal(out["v"], want_v)
    np.testing.assert_array_equal(out["count"], want_n)


def test_config_refuses_a_negative_weight_a_bad_pair_and_a_negative_z_loss():
    """Each stage needs a pair (answer, reasoning) of weights >= 0, and the z-loss coefficient is >= 0; the error
    names the offending field."""
    with pytest.raises(ValueError, match="stage_weights"):
        losses.LossConfig(stage_weights=((0.8, 0.2), (0.8, 0.2), (1.0, -0.1)))
    with pytest.raises(ValueError, match="stage_weights"):
        losses.LossConfig(stage_weights=((0.8, 0.2), (0.8, 0.2, 0.0), (1.0, 0.0)))
    with pytest.raises(ValueError, match="z_loss"):
        losses.LossConfig(z_loss=-1e-4)
    assert losses.LossConfig(stage_weights=((0, 0), (0, 1), (1, 0)), z_loss=0.0).stage_weights[0] == (0.0, 0.0)
