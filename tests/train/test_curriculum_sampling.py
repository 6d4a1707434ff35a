"""The scheduler's update and sampling contract: `observe`, `update`, `probabilities`, `sample_stage`, `draw`, `phases`
and `summary`, and the stateless policies (uniform, hard_only, fixed) end to end.

Each test is written from the module's docstring/contract (medclm_jax/train/curriculum.py), on small hand-made
inputs whose expected values are worked out in the test.
"""

import dataclasses
import json

import numpy as np
import pytest

from medclm_jax.train import curriculum as cur

E, M, H = cur.EASY, cur.MEDIUM, cur.HARD
FULL = {"a": {"easy": 10, "medium": 10, "hard": 10}, "b": {"easy": 10, "medium": 10, "hard": 10}}


# ------------------------------------------------------------------------------------------------------ observe


def test_observe_is_a_weighted_mean_and_a_weight_sum_per_cell():
    """Several rows per cell with weights other than 0/1: mean = sum(w * loss) / sum(w), count = sum(w). A wrong
    implementation dividing the loss by its weight, or counting rows instead of weights, gives other numbers."""
    mean, count = cur.observe([0, 0, 0, 1, 1], [M, M, M, H, E], [1.0, 4.0, 100.0, 2.0, 5.0], [2.0, 0.5, 0.0, 0.25, 3],
                              2)
    assert count[0, M] == 2.5 and count[1, H] == 0.25 and count[1, E] == 3.0 and count.sum() == 5.75
    assert mean[0, M] == pytest.approx((2.0 * 1.0 + 0.5 * 4.0) / 2.5)  # the weight-0 row (loss 100) is ignored
    assert mean[1, H] == pytest.approx(2.0) and mean[1, E] == pytest.approx(5.0)


def test_observe_reports_zero_not_nan_or_garbage_for_cells_without_examples():
    """The mean is 0 where a cell has no example (observe's docstring): a division without its `where`/`out` leaves
    NaN (0 / 0) or uninitialized memory there, which `update` would multiply by a zero count (NaN * 0 is NaN)."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        d_count = 1 + trial % 7
        b = int(rng.integers(1, 3 * d_count + 1))
        domain, stage = rng.integers(0, d_count, b), rng.integers(0, 3, b)
        weight = rng.choice([0.0, 0.5, 1.0, 2.0], b)
        mean, count = cur.observe(domain, stage, rng.uniform(1.0, 9.0, b), weight, d_count)
        assert mean.shape == count.shape == (d_count, 3)
        np.testing.assert_array_equal(mean[count == 0], 0.0)
        assert (mean[count > 0] >= 1.0).all()


def test_observe_of_an_empty_batch_is_all_zeros():
    """A host with no rows this step (B = 0, plain empty lists) observes nothing; ids not converted to integers
    would fail to index (an empty list is a float array to numpy)."""
    mean, count = cur.observe([], [], [], [], 3)
    np.testing.assert_array_equal(mean, np.zeros((3, 3)))
    np.testing.assert_array_equal(count, np.zeros((3, 3)))
    _, count = cur.observe(np.array([], np.int64), [], [], [], 2)
    np.testing.assert_array_equal(count, np.zeros((2, 3)))
    _, count = cur.observe(np.array([], np.int64), np.array([], np.int64), [], [], 2)
    np.testing.assert_array_equal(count, np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------------- update


def cfg_of(policy="adaptive", **kw):
    return cur.CurriculumConfig(policy=policy, update_every=1, steps_per_epoch=3 if policy == "reference" else None,
                                **kw)


def test_update_decays_the_emas_by_the_steps_elapsed_even_after_step_zero():
    """EMA weights decay by ema_decay ** (step - state.step); the first update (state.step -1) is not decayed. A
    state updated at step 0 is a real previous step: treating it like "no update yet" would skip the decay."""
    cfg = dataclasses.replace(cfg_of(), ema_decay=0.5, min_examples=0.0)
    state = cur.init(cfg, FULL)
    one = np.zeros((2, 3))
    one[0, E] = 1.0
    state = cur.update(cfg, state, 0, np.full((2, 3), 2.0), one)
    assert state.step == 0 and state.loss_weight[0, E] == 1.0 and state.loss_sum[0, E] == 2.0  # not decayed
    state = cur.update(cfg, state, 2, np.full((2, 3), 6.0), one)  # two steps later: old weight 0.25
    assert state.loss_weight[0, E] == pytest.approx(1.25)
    assert state.loss_ema()[0, E] == pytest.approx((0.25 * 2.0 + 6.0) / 1.25)
    state = cur.update(cfg, state, 3, np.full((2, 3), 6.0), np.zeros((2, 3)))  # nothing seen: decays only
    assert state.loss_weight[0, E] == pytest.approx(0.625) and state.loss_ema()[0, E] == pytest.approx(5.2)


def test_update_errors_name_the_offending_shapes_and_values():
    """Each refusal says what was wrong: the shapes given and expected, the steps, the negative count."""
    cfg = cfg_of()
    state = cur.init(cfg, FULL)
    good = np.ones((2, 3))
    for loss, count, bad in [(good, np.ones((2, 2)), r"count \(2, 2\)"), (np.ones((3, 3)), good, r"loss \(3, 3\)"),
                             (np.ones(6), np.ones(6), r"loss \(6,\)")]:
        with pytest.raises(cur.CurriculumError, match=bad) as err:
            cur.update(cfg, state, 0, loss, count)
        assert "must be (2, 3)" in str(err.value)
    state = cur.update(cfg, state, 7, good, good)
    with pytest.raises(cur.CurriculumError, match=r"update at step 3 after step 7: steps must increase"):
        cur.update(cfg, state, 3, good, good)
    negative = good.copy()
    negative[0, 1] = -1.0
    with pytest.raises(cur.CurriculumError, match="negative count"):
        cur.update(cfg, state, 8, good, negative)
    nan = good.copy()
    nan[0, H] = np.inf
    with pytest.raises(cur.CurriculumError, match=r"non-finite loss for \[\('a', 'hard'\)\]"):
        cur.update(cfg, state, 8, nan, good)


@pytest.mark.parametrize("policy", ["adaptive", "reference", "uniform"])
def test_update_is_the_same_for_integer_and_float_inputs(policy):
    """`loss` and `count` are taken as float64 whatever the caller's dtype: the saved state (so the checkpoint) is
    the same for integer counts as for the same counts as floats, across a `reference` epoch boundary too (a state
    that kept the caller's integer dtype would write other JSON)."""
    cfg = cfg_of(policy)
    states = []
    for dtype in (np.int64, np.float64, np.float32):
        state = cur.init(cfg, FULL)
        for step in range(8):  # epochs of 3 steps
            loss = (np.arange(6).reshape(2, 3) + step) % 4 + 1
            count = np.array([[3, 0, 1], [2, 2, 0]]) * (step % 3)
            state = cur.update(cfg, state, step, loss.astype(dtype), count.astype(dtype))
        states.append(state.to_json())
    assert states[0] == states[1] == states[2]


# ------------------------------------------------------------------------------------------------ probabilities


RECORDS_AB = {"a": {"easy": 100, "medium": 50, "hard": 44}, "b": {"easy": 10, "medium": 30, "hard": 6}}


@pytest.mark.parametrize("temperature,expected", [(1.0, [144 / 180, 36 / 180]), (0.0, [0.5, 0.5]),
                                                  (0.5, [2 / 3, 1 / 3])])
def test_domain_mix_is_size_to_the_temperature(temperature, expected):
    """Domain weight = size ** domain_temperature with size = max(easy, medium) + hard (an easy_medium record counts
    for both stages): 144 and 36 records here, so 0 is uniform, 1 proportional, 0.5 proportional to 12 and 6."""
    cfg = cur.CurriculumConfig(policy="uniform", domain_temperature=temperature)
    state = cur.init(cfg, RECORDS_AB)
    probs = cur.probabilities(cfg, state, 0)
    assert probs.domains == state.domains == ("a", "b")
    np.testing.assert_allclose(probs.domain, expected, rtol=1e-12)
    np.testing.assert_allclose(probs.stage, 1 / 3)


def test_a_single_record_is_available_and_a_single_domain_is_sampled():
    """One record per stage is enough to sample that stage, and one domain of total weight 1 (temperature 0, or one
    record) is a valid domain mix, not "samples no domain"."""
    for temperature in (0.0, 1.0):
        cfg = cur.CurriculumConfig(policy="uniform", domain_temperature=temperature)
        state = cur.init(cfg, {"only": {"easy": 1, "medium": 1, "hard": 0}})
        probs = cur.probabilities(cfg, state, 0)
        assert probs.domains == ("only",)
        np.testing.assert_allclose(probs.stage, [[0.5, 0.5, 0.0]])
        np.testing.assert_allclose(probs.domain, [1.0])
    cfg = cur.CurriculumConfig(policy="hard_only")
    state = cur.init(cfg, {"a": {"easy": 5, "medium": 5, "hard": 1}, "b": {"easy": 5, "medium": 5, "hard": 0}})
    probs = cur.probabilities(cfg, state, 0)
    np.testing.assert_array_equal(probs.stage, [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(probs.domain, [1.0, 0.0])


# ----------------------------------------------------------------------------------------- sample_stage / draw


def test_sample_stage_with_hard_zeroed_splits_easy_and_medium_in_proportion():
    """The docstring's use: zero the Hard entry of a row (it no longer sums to 1) to pick Easy vs Medium. The cut
    is at u = p_easy / (p_easy + p_medium), inclusive on the upper side; u = 0 never picks a zero-probability
    entry; no u in [0, 1) picks Hard or an index past the row."""
    row = np.array([0.2, 0.3, 0.0])  # the mix (0.2, 0.3, 0.5) with Hard zeroed: total 0.5, cut at u = 0.4
    u = np.array([0.0, 0.2, 0.39999, 0.4, 0.7, np.nextafter(1.0, 0.0)])
    np.testing.assert_array_equal(cur.sample_stage(row, u), [E, E, E, M, M, M])
    np.testing.assert_array_equal(cur.sample_stage([0.0, 2.0, 2.0], [0.0, 0.49, 0.5, 0.99]), [M, M, H, H])
    np.testing.assert_array_equal(cur.sample_stage([0.0, 0.0, 3.0], [0.0, 0.5]), [H, H])


def test_sample_stage_accepts_any_leading_shape():
    """Probabilities f[..., 3] and u f[...]: a single row with a scalar u gives a scalar, a [2, 4, 3] batch of
    rows gives [2, 4] stages (the sum over the stage axis, not over another one)."""
    assert int(cur.sample_stage(np.array([0.5, 0.5, 0.0]), 0.75)) == M
    assert cur.sample_stage(np.array([0.5, 0.5, 0.0]), 0.75).shape == ()
    rows = np.tile(np.array([[0.25, 0.25, 0.5]]), (2, 4, 1))
    u = np.array([[0.0, 0.3, 0.6, 0.9], [0.1, 0.26, 0.49, 0.5]])
    out = cur.sample_stage(rows, u)
    assert out.shape == (2, 4) and out.dtype == np.int32
    np.testing.assert_array_equal(out, [[E, M, H, H], [E, M, M, H]])


def test_sample_stage_does_not_depend_on_the_dtype_of_the_probabilities():
    """float32 (or integer) rows pick the same stage as the same values in float64: the cumulative sums are taken
    in float64, so a cut does not move by float32 rounding."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        p32 = rng.random(3).astype(np.float32)
        cdf = np.cumsum(p32.astype(np.float64))
        cuts = cdf[:2] / cdf[-1]
        u = np.concatenate([c + np.linspace(-1e-7, 1e-7, 41) for c in cuts])
        u = u[(u >= 0) & (u < 1)]
        np.testing.assert_array_equal(cur.sample_stage(p32, u), cur.sample_stage(p32.astype(np.float64), u))
    counts = np.array([3, 1, 0])
    u = np.linspace(0, 1, 50, endpoint=False)
    np.testing.assert_array_equal(cur.sample_stage(counts, u), cur.sample_stage(counts / 4.0, u))


def test_draw_is_the_documented_stream():
    """`draw` is exactly what its docstring says: PCG64 seeded by SeedSequence([seed, step, process_index]), one
    `random((n, 2))` call, column 0 for the domain and column 1 for the stage, each by inverse CDF (so a resumed
    run draws the same examples as the uninterrupted one, under any version that keeps the contract)."""
    stage = np.array([[0.7, 0.3, 0.0], [0.1, 0.2, 0.7], [0.0, 0.5, 0.5]])
    probs = cur.Probabilities(("a", "b", "c"), stage, np.array([0.25, 0.35, 0.4]))
    for seed, step, process in [(0, 0, 0), (7, 123, 0), (7, 123, 3)]:
        u = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, process]))).random((64, 2))
        want_d = np.searchsorted(np.cumsum(probs.domain), u[:, 0], side="right")
        want_s = np.array([np.searchsorted(np.cumsum(stage[d]), x, side="right") for d, x in zip(want_d, u[:, 1])])
        d, s = cur.draw(probs, seed, step, 64, process_index=process)
        np.testing.assert_array_equal(d, want_d)
        np.testing.assert_array_equal(s, want_s)
    base = cur.draw(probs, 7, 123, 64)
    for other in (cur.draw(probs, 8, 123, 64), cur.draw(probs, 7, 124, 64), cur.draw(probs, 7, 123, 64, 1)):
        assert (other[0] != base[0]).any() or (other[1] != base[1]).any()  # seed, step and process all matter
    again = cur.draw(probs, 7, 123, 64)
    assert (again[0] == base[0]).all() and (again[1] == base[1]).all()


# ------------------------------------------------------------------------------------------------------ phases


FIXED_STEPS = cur.FixedConfig(boundaries=(10, 20, 30, 40, 50),
                              mixes=((1.0, 0.0, 0.0), (0.99, 0.01, 0.0), (0.991, 0.009, 0.0), (0.49, 0.5, 0.01),
                                     (0.491, 0.5, 0.009), (0.2, 0.3, 0.5)))


def test_phases_of_stateless_policies_use_the_min_share_inclusively():
    """Without explicit phases a domain is "in" the hardest stage with a share >= PHASE_MIN_SHARE (0.01): exactly
    0.01 counts, 0.009 does not; Easy is the floor. uniform and hard_only are in Hard from step 0."""
    assert cur.PHASE_MIN_SHARE == 0.01
    cfg = cur.CurriculumConfig(policy="fixed", fixed=FIXED_STEPS)
    state = cur.init(cfg, FULL)
    got = [cur.phases(cfg, state, step).tolist() for step in (0, 10, 20, 30, 40, 50)]
    assert got == [[E, E], [M, M], [E, E], [H, H], [M, M], [H, H]]
    for policy in ("uniform", "hard_only"):
        cfg = cur.CurriculumConfig(policy=policy)
        np.testing.assert_array_equal(cur.phases(cfg, cur.init(cfg, FULL), 0), [H, H])


# ----------------------------------------------------------------------------------------------------- summary


def test_summary_values_match_the_probabilities_phases_and_measured_emas():
    """Every logged number is the scheduler's own: updated_step, per-domain share and p_<stage> from
    `probabilities`, phase and domains_in from `phases`, loss_ema_<stage> only where measured (>= min_examples)."""
    cfg = cur.CurriculumConfig(policy="fixed", fixed=FIXED_STEPS, min_examples=4.0)
    records = {"a": {"easy": 30, "medium": 30, "hard": 0}, "b": {"easy": 10, "medium": 10, "hard": 10}}
    state = cur.init(cfg, records)
    count = np.array([[5.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    state = cur.update(cfg, state, 31, np.array([[2.0, 3.0, 0.0], [1.5, 0.0, 0.0]]), count)
    out = cur.summary(cfg, state, 32)  # mix (0.49, 0.5, 0.01): both domains "in" Hard, a has no Hard records
    json.dumps(out, allow_nan=False)
    probs = cur.probabilities(cfg, state, 32)
    assert out["curriculum/updated_step"] == 31
    assert [out[f"curriculum/domains_in/{s}"] for s in cur.STAGES] == [0, 0, 2]
    for d, name in enumerate(("a", "b")):
        key = f"curriculum/domain/{name}"
        assert out[f"{key}/phase"] == "hard"
        assert out[f"{key}/share"] == pytest.approx(probs.domain[d])
        for i, s in enumerate(cur.STAGES):
            assert out[f"{key}/p_{s}"] == pytest.approx(probs.stage[d, i])
    assert out["curriculum/domain/a/share"] == pytest.approx(0.6)  # sizes 30 and 20; a's row renormalized
    assert out["curriculum/domain/a/p_hard"] == 0.0 and out["curriculum/domain/a/p_easy"] == pytest.approx(0.49 / 0.99)
    assert out["curriculum/domain/a/loss_ema_easy"] == 2.0 and out["curriculum/domain/b/loss_ema_easy"] == 1.5
    ema_keys = sorted(k for k in out if "/loss_ema_" in k)
    assert ema_keys == ["curriculum/domain/a/loss_ema_easy", "curriculum/domain/b/loss_ema_easy"]  # 3 < 4: not yet
    overall = probs.domain @ probs.stage
    for i, s in enumerate(cur.STAGES):
        assert out[f"curriculum/mix/{s}"] == pytest.approx(overall[i])
    later = cur.summary(cfg, state, 12)  # the step given, not the state's: mix (0.99, 0.01, 0) -> Medium
    assert [later[f"curriculum/domains_in/{s}"] for s in cur.STAGES] == [0, 2, 0]


def test_summary_of_reference_reports_its_epoch_and_gaps():
    """`reference` adds its own numbers, computed for the step asked for (epoch = step // steps_per_epoch)."""
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=10)
    state = cur.init(cfg, FULL)
    out = cur.summary(cfg, state, 57)
    assert out["curriculum/reference/epoch"] == 5
    assert out["curriculum/reference/lambda_h"] == 0.0
    assert out["curriculum/reference/m_global"] == cfg.reference.global_init
    assert out["curriculum/domain/a/gap"] == 0.0  # m_easy = m_med = ema_init before any epoch closed
    assert out["curriculum/domain/b/phase"] == "easy"  # Medium at beta(5) * sigmoid(-5) < PHASE_MIN_SHARE
    assert cur.summary(cfg, state, 39)["curriculum/reference/epoch"] == 3


# ---------------------------------------------------------------------------------------- stateless policies


@pytest.mark.parametrize("policy,step,row", [("uniform", 0, [1 / 3] * 3), ("hard_only", 5, [0, 0, 1]),
                                             ("fixed", 0, [1, 0, 0]), ("fixed", 45, [0.491, 0.5, 0.009])])
def test_stateless_policies_init_update_mix_and_round_trip(policy, step, row):
    """uniform, hard_only and fixed keep no state of their own ({} through init and update), give every domain the
    same mix for the step (fixed: the segment of `step`), and their state survives the JSON round trip."""
    cfg = cur.CurriculumConfig(policy=policy, fixed=FIXED_STEPS)
    state = cur.init(cfg, FULL)
    assert dict(state.policy_state) == {}
    state = cur.update(cfg, state, 3, np.ones((2, 3)), np.ones((2, 3)))
    state = cur.update(cfg, state, 4, np.full((2, 3), 2.0), np.ones((2, 3)))
    assert dict(state.policy_state) == {} and state.step == 4
    back = cur.CurriculumState.from_json(state.to_json())
    assert back.to_json() == state.to_json() and dict(back.policy_state) == {}
    probs = cur.probabilities(cfg, back, step)
    np.testing.assert_allclose(probs.stage, [row, row], rtol=1e-12)
    np.testing.assert_allclose(probs.domain, [0.5, 0.5])
