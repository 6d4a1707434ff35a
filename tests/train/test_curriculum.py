"""The curriculum scheduler on simulated loss curves: `adaptive` advances where the authors' rule stays in Easy.

The simulation is the trainer and the pipeline in miniature: each step the pipeline draws (domain, stage) pairs
with `draw`, the "model" returns a per-example loss from a curve of the step plus seeded noise, and the trainer
feeds `observe`d means back one step late.
"""

import dataclasses
import json
import re

import numpy as np
import pytest

from medclm_jax.train import curriculum as cur

E, M, H = cur.EASY, cur.MEDIUM, cur.HARD
RECORDS = {"nodule_xray": {"easy": 400, "medium": 400, "hard": 100},
           "mass_ct": {"easy": 400, "medium": 400, "hard": 100}}
ADAPTIVE = cur.AdaptiveConfig(min_easy_steps=50, max_easy_steps=600, medium_ramp_steps=100, plateau_window=50,
                              max_medium_steps=800)


def adaptive_cfg(**kw) -> cur.CurriculumConfig:
    return cur.CurriculumConfig(policy="adaptive", ema_decay=0.95, update_every=1,
                                adaptive=dataclasses.replace(ADAPTIVE, **kw))


def exp_curves(tau: float, easy=(3.0, 0.5), medium=(3.5, 0.8), hard=(4.0, 1.5)):
    """Loss of each stage at step t: start -> end with time constant tau (the issue's curves)."""
    ends = np.array([easy, medium, hard])
    return lambda t: ends[:, 1] + (ends[:, 0] - ends[:, 1]) * np.exp(-t / tau)


# nodule_xray learns fast, mass_ct slowly; Medium stays above Easy throughout.
ABOVE = {"nodule_xray": exp_curves(150.0), "mass_ct": exp_curves(400.0)}


def simulate(cfg, curves, steps, *, records=RECORDS, seed=0, batch=32, lag=1, noise=0.05, roundtrip_at=None):
    """Runs the loop; returns (final state, stage probabilities f[steps, D, 3], drawn (domain, stage) per step)."""
    state = cur.init(cfg, records)
    names = state.domains
    pending, history, drawn = [], [], []
    probs = None
    for t in range(steps):
        if roundtrip_at is not None and t == roundtrip_at:
            state = cur.CurriculumState.from_json(state.to_json())
        if t % cfg.update_every == 0:
            probs = cur.probabilities(cfg, state, t)
        d, s = cur.draw(probs, seed, t, batch)
        table = np.stack([curves[n](t) if n in curves else np.ones(3) for n in names])
        loss = table[d, s] + noise * np.random.default_rng([seed, t, 7]).standard_normal(batch)
        pending.append((t, *cur.observe(d, s, loss, np.ones(batch), len(names))))
        if len(pending) > lag:
            state = cur.update(cfg, state, *pending.pop(0))
        history.append(probs.stage)
        drawn.append((d, s))
    return state, np.array(history), drawn


# An update for step s is fed during step s + 1, after that step's batch was drawn: it shows from step s + 2 on.
SHOWS = 2


def entry(state, d, stage):
    ps = state.policy_state
    return int(ps[f"{stage}_step"][d]), cur.ENTRY_REASONS[ps[f"{stage}_by"][d]]


# --------------------------------------------------------------------------------- adaptive advances, reference not


def test_adaptive_reaches_medium_then_hard_on_every_domain_where_medium_stays_above_easy():
    for curve in ABOVE.values():  # the premise: Medium is harder than Easy at every step
        assert all(curve(t)[M] > curve(t)[E] for t in range(0, 2000, 10))
    cfg = adaptive_cfg()
    a = cfg.adaptive
    state, hist, _ = simulate(cfg, ABOVE, 1600)
    bound = a.max_easy_steps + a.max_medium_steps  # the dwells: whatever the losses
    for d, name in enumerate(state.domains):
        med, _ = entry(state, d, "medium")
        hard, _ = entry(state, d, "hard")
        assert 0 <= med < hard <= bound, (name, med, hard)
        after = hist[hard + SHOWS:, d]
        assert (after[:, H] >= a.hard_start - 1e-12).all()
    assert (hist[:, :, E] >= a.easy_floor - 1e-12).all()  # the Easy floor, always
    in_hard = hist[:, :, H] > 0
    assert (hist[:, :, M][in_hard] >= a.medium_floor - 1e-12).all()  # the Medium floor once Hard is in
    np.testing.assert_allclose(hist.sum(-1), 1.0)
    # the slow domain enters Medium later than the fast one
    assert entry(state, 0, "medium")[0] > entry(state, 1, "medium")[0]  # domains sort: 0 mass_ct, 1 nodule_xray


def test_reference_with_the_authors_constants_stays_in_easy_on_the_same_curves():
    spe = 20  # steps per epoch: 80 epochs, far past the authors' Hard epoch 19
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=spe)
    state, hist, drawn = simulate(cfg, ABOVE, 80 * spe)
    epochs = np.arange(len(hist)) // spe
    assert (hist[epochs < 4, :, E] == 1.0).all()  # Easy-only warm-up
    # Their Medium EMA starts at 1e-3 (g_d ~ 1), so the first ramp epoch samples Medium at beta = 0.1; once a
    # Medium loss is seen, g_d < 0 and Medium's probability collapses to beta * sigmoid(-5) < 0.7%.
    assert hist[epochs >= 7, :, M].max() < 0.01
    assert (hist[:, :, H] == 0).all()  # Hard never starts
    assert state.policy_state["lambda_h"] == 0.0
    assert (cur._reference_gap(state.policy_state) < 0).all()
    assert (cur.phases(cfg, state, len(hist)) == E).all()
    # ... while adaptive, on identical curves and steps, is in Hard everywhere.
    a_state, _, _ = simulate(adaptive_cfg(), ABOVE, 80 * spe)
    assert (cur.phases(adaptive_cfg(), a_state, 80 * spe) == H).all()


# ------------------------------------------------------------------------------------------------ each gate


def test_medium_entered_by_the_gap_rule_before_the_max_dwell():
    # Medium starts far above Easy (ratio 1.5) and converges to within 10% of it.
    curves = {n: exp_curves(100.0, easy=(3.0, 0.5), medium=(4.5, 0.55)) for n in RECORDS}
    cfg = adaptive_cfg()
    state, _, _ = simulate(cfg, curves, 700)
    for d in range(2):
        step, why = entry(state, d, "medium")
        assert why == "gap" and cfg.adaptive.min_easy_steps <= step < cfg.adaptive.max_easy_steps
        easy, med = curves["mass_ct"](step)[:2]
        assert med <= 1.3 * easy  # it fired where the curves had (nearly) closed the gap, not at the start
        assert curves["mass_ct"](0)[M] > 1.25 * curves["mass_ct"](0)[E]


def test_medium_entered_by_the_max_dwell_when_the_gap_never_closes():
    curves = {n: exp_curves(100.0, easy=(2.0, 0.3), medium=(3.0, 2.0)) for n in RECORDS}
    cfg = adaptive_cfg()
    state, hist, _ = simulate(cfg, curves, 700)
    for d in range(2):
        assert entry(state, d, "medium") == (cfg.adaptive.max_easy_steps, "dwell")
    assert (hist[: cfg.adaptive.max_easy_steps + SHOWS, :, M] == cfg.adaptive.probe).all()  # only the probe before


def test_easy_not_yet_learned_blocks_the_gap_gate():
    # Easy and Medium equally bad and flat: the gap is "closed" from step 0 but nothing was learned.
    curves = {n: (lambda t: np.array([3.0, 3.1, 3.2])) for n in RECORDS}
    state, _, _ = simulate(adaptive_cfg(), curves, 700)
    assert entry(state, 0, "medium") == (ADAPTIVE.max_easy_steps, "dwell")


def test_hard_added_when_the_medium_loss_plateaus():
    curves = {n: exp_curves(40.0, easy=(3.0, 0.5), medium=(3.5, 0.6)) for n in RECORDS}
    cfg = adaptive_cfg()
    state, hist, _ = simulate(cfg, curves, 900)
    for d in range(2):
        med, _ = entry(state, d, "medium")
        hard, why = entry(state, d, "hard")
        assert why == "plateau" and hard - med < cfg.adaptive.max_medium_steps
        assert hard - med >= cfg.adaptive.plateau_window
        np.testing.assert_allclose(hist[hard + SHOWS, d, H], cfg.adaptive.hard_start)


def test_hard_added_by_the_max_dwell_when_medium_keeps_improving():
    # Medium falls linearly (>= 2.5% per window): never a plateau; Easy far below: Medium by dwell too.
    curves = {n: (lambda t: np.array([0.5, 4.0 - 0.002 * t, 4.0])) for n in RECORDS}
    cfg = adaptive_cfg()
    state, _, _ = simulate(cfg, curves, 1500)
    a = cfg.adaptive
    for d in range(2):
        assert entry(state, d, "medium") == (a.max_easy_steps, "dwell")
        assert entry(state, d, "hard") == (a.max_easy_steps + a.max_medium_steps, "dwell")


def test_hard_budget_grows_on_hard_plateaus_up_to_its_max():
    curves = {n: exp_curves(40.0) for n in RECORDS}
    cfg = adaptive_cfg()
    state, hist, _ = simulate(cfg, curves, 1500)
    a = cfg.adaptive
    np.testing.assert_allclose(state.policy_state["hard_budget"], a.hard_max)
    np.testing.assert_allclose(hist[-1, :, H], a.hard_max)
    np.testing.assert_allclose(hist[-1, :, E] + hist[-1, :, M], 1 - a.hard_max)
    assert (np.diff(hist[:, :, H], axis=0) >= 0).all()  # the budget only grows


# ------------------------------------------------------------------------------------ the other policies


def test_fixed_follows_its_boundaries_exactly():
    fixed = cur.FixedConfig(boundaries=(100, 250), mixes=((1, 0, 0), (0.5, 0.5, 0), (0.2, 0.3, 0.5)))
    cfg = cur.CurriculumConfig(policy="fixed", fixed=fixed)
    state = cur.init(cfg, RECORDS)
    for step, mix in [(0, (1, 0, 0)), (99, (1, 0, 0)), (100, (0.5, 0.5, 0)), (249, (0.5, 0.5, 0)),
                      (250, (0.2, 0.3, 0.5)), (10_000, (0.2, 0.3, 0.5))]:
        np.testing.assert_array_equal(cur.probabilities(cfg, state, step).stage, np.array([mix, mix], float))
    _, hist, _ = simulate(cfg, ABOVE, 300)  # and losses change nothing
    np.testing.assert_array_equal(hist[99, 0], [1, 0, 0])
    np.testing.assert_array_equal(hist[100, 0], [0.5, 0.5, 0])


def test_uniform_is_a_third_each_from_step_zero():
    cfg = cur.CurriculumConfig(policy="uniform")
    _, hist, _ = simulate(cfg, ABOVE, 50)
    np.testing.assert_allclose(hist, 1 / 3)


def test_hard_only_is_all_hard_and_skips_domains_without_hard_records():
    cfg = cur.CurriculumConfig(policy="hard_only")
    records = dict(RECORDS, effusion_xray={"easy": 50, "medium": 50, "hard": 0})
    state, hist, drawn = simulate(cfg, ABOVE, 50, records=records)
    d = state.domains.index("effusion_xray")
    assert (hist[:, [i for i in range(3) if i != d]] == [0, 0, 1]).all()
    assert (hist[:, d] == 0).all()
    assert all((dom != d).all() and (st == H).all() for dom, st in drawn)


# ------------------------------------------------------------------------------------ missing pools


def test_a_domain_without_hard_records_never_gets_hard():
    records = dict(RECORDS, effusion_xray={"easy": 300, "medium": 300, "hard": 0})
    curves = dict(ABOVE, effusion_xray=exp_curves(100.0))
    cfg = adaptive_cfg()
    state, hist, drawn = simulate(cfg, curves, 1600, records=records)
    d = state.domains.index("effusion_xray")
    assert (hist[:, d, H] == 0).all()
    np.testing.assert_allclose(hist[:, d].sum(-1), 1.0)  # renormalized over Easy and Medium
    assert not any(((dom == d) & (st == H)).any() for dom, st in drawn)
    assert hist[-1, d, M] > 0.5  # it still advanced through Medium
    assert (cur.phases(cfg, state, 1600)[[i for i in range(3) if i != d]] == H).all()


def test_a_domain_with_only_hard_records_is_sampled_from_its_hard_phase():
    records = dict(RECORDS, effusion_xray={"easy": 0, "medium": 0, "hard": 80})
    curves = dict(ABOVE, effusion_xray=exp_curves(100.0))
    cfg = adaptive_cfg()
    state, hist, drawn = simulate(cfg, curves, 1600, records=records)
    d = state.domains.index("effusion_xray")
    hard, _ = entry(state, d, "hard")
    assert 0 < hard <= ADAPTIVE.max_easy_steps + ADAPTIVE.max_medium_steps
    assert (hist[: hard + SHOWS, d] == 0).all()  # idle, not stuck: the other domains fill the batches
    assert (hist[hard + SHOWS:, d] == [0, 0, 1]).all()
    assert any((dom == d).any() for dom, _ in drawn[hard + SHOWS:])


def test_a_policy_that_could_sample_nothing_is_refused_at_init():
    no_hard = {n: dict(c, hard=0) for n, c in RECORDS.items()}
    with pytest.raises(cur.CurriculumError, match="samples no domain at step 0"):
        cur.init(cur.CurriculumConfig(policy="hard_only"), no_hard)
    fixed = cur.FixedConfig(boundaries=(10,), mixes=((1, 0, 0), (0, 0, 1)))
    with pytest.raises(cur.CurriculumError, match="at step 10"):
        cur.init(cur.CurriculumConfig(policy="fixed", fixed=fixed), no_hard)


# ------------------------------------------------------------------------------ determinism and checkpoints


@pytest.mark.parametrize("policy", sorted(cur.POLICIES))
def test_every_policy_is_deterministic_under_a_seed(policy):
    cfg = cur.CurriculumConfig(policy=policy, steps_per_epoch=20, adaptive=ADAPTIVE, update_every=5)
    a = simulate(cfg, ABOVE, 700, seed=3)
    b = simulate(cfg, ABOVE, 700, seed=3)
    assert a[0].to_json() == b[0].to_json()
    np.testing.assert_array_equal(a[1], b[1])
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a[2], b[2]))
    c = simulate(cfg, ABOVE, 700, seed=4)
    assert any((x[0] != y[0]).any() or (x[1] != y[1]).any() for x, y in zip(a[2], c[2]))  # the seed matters


@pytest.mark.parametrize("policy", ["adaptive", "reference"])
def test_json_round_trip_mid_run_continues_exactly_like_an_uninterrupted_run(policy):
    cfg = cur.CurriculumConfig(policy=policy, steps_per_epoch=20, adaptive=ADAPTIVE, ema_decay=0.95)
    whole, hist, _ = simulate(cfg, ABOVE, 1200)
    resumed, hist2, _ = simulate(cfg, ABOVE, 1200, roundtrip_at=613)  # mid-phase, mid-epoch, mid-window
    np.testing.assert_array_equal(hist, hist2)
    assert whole.to_json() == resumed.to_json()
    mid, _, _ = simulate(cfg, ABOVE, 613)
    back = cur.CurriculumState.from_json(mid.to_json())
    assert back.to_json() == mid.to_json()
    for k, v in mid.policy_state.items():  # exact, NaN (unset) entries included
        np.testing.assert_array_equal(np.asarray(back.policy_state[k]), np.asarray(v))
    json.loads(mid.to_json())  # plain JSON


def test_a_state_restored_under_another_policy_is_refused():
    state = cur.init(adaptive_cfg(), RECORDS)
    with pytest.raises(cur.CurriculumError, match="written by policy 'adaptive'"):
        cur.probabilities(cur.CurriculumConfig(policy="uniform"), state, 0)


# ------------------------------------------------------------------------------------ update and sampling


def test_update_refuses_non_finite_losses_and_steps_that_do_not_increase():
    cfg = adaptive_cfg()
    state = cur.init(cfg, RECORDS)
    loss, count = np.ones((2, 3)), np.ones((2, 3))
    state = cur.update(cfg, state, 5, loss, count)
    with pytest.raises(cur.CurriculumError, match="steps must increase"):
        cur.update(cfg, state, 5, loss, count)
    loss[1, 2] = np.nan
    with pytest.raises(cur.CurriculumError, match=r"non-finite loss for \[\('nodule_xray', 'hard'\)\]"):
        cur.update(cfg, state, 6, loss, count)
    count[1, 2] = 0  # a NaN with no examples is just "not observed"
    cur.update(cfg, state, 6, loss, count)


def test_update_refuses_a_step_that_is_not_an_integer():
    """Steps are training-step indices: a float step would be truncated (0.5 and then 0.7 both land on step 0, and
    a domain could enter Medium and Hard in the same step), so it is refused; numpy integers are steps too."""
    cfg = adaptive_cfg()
    state = cur.init(cfg, RECORDS)
    loss, count = np.ones((2, 3)), np.ones((2, 3))
    for bad in (0.5, np.float64(3.0), True, "4"):
        with pytest.raises(cur.CurriculumError, match=re.escape(f"update at step {bad!r}: the step must be an integer")):
            cur.update(cfg, state, bad, loss, count)
    state = cur.update(cfg, state, np.int64(3), loss, count)
    assert type(state.step) is int and state.step == 3
    assert type(json.loads(state.to_json())["step"]) is int


def test_loss_ema_is_a_count_weighted_step_decayed_average():
    cfg = dataclasses.replace(adaptive_cfg(), ema_decay=0.5, min_examples=0.0)
    state = cur.init(cfg, RECORDS)
    zeros = np.zeros((2, 3))
    c1, c2 = zeros.copy(), zeros.copy()
    c1[0, E], c2[0, E] = 3, 1
    state = cur.update(cfg, state, 10, np.full((2, 3), 2.0), c1)
    state = cur.update(cfg, state, 12, np.full((2, 3), 6.0), c2)  # two steps later: old weight 3 * 0.25
    assert state.loss_ema()[0, E] == pytest.approx((0.75 * 2.0 + 1 * 6.0) / 1.75)
    assert np.isnan(state.loss_ema()[0, M]) and np.isnan(state.loss_ema(min_examples=2)[0, E])


def test_observe_ignores_padding_rows():
    mean, count = cur.observe([0, 0, 1, 1], [E, E, H, H], [1.0, 3.0, 5.0, np.nan], [1, 1, 1, 0], 2)
    assert mean[0, E] == 2.0 and count[0, E] == 2 and mean[1, H] == 5.0 and count[1, H] == 1
    assert count.sum() == 3


def test_draw_follows_the_probabilities_and_never_draws_a_zero():
    stage = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.2, 0.0, 0.8]])
    probs = cur.Probabilities(("a", "b", "c"), stage, np.array([0.5, 0.0, 0.5]))
    d, s = cur.draw(probs, seed=1, step=0, n=200_000)
    freq = np.zeros((3, 3))
    np.add.at(freq, (d, s), 1)
    np.testing.assert_allclose(freq / len(d), probs.joint(), atol=0.005)
    assert freq[probs.joint() == 0].sum() == 0
    np.testing.assert_array_equal(cur.sample_stage(stage[0], np.array([0.0, 0.69, 0.7, 0.999])), [0, 0, 1, 1])
    d2, s2 = cur.draw(probs, seed=1, step=0, n=200_000, process_index=1)  # processes draw different examples
    assert (d2 != d).any()


# ------------------------------------------------------------------------------------ config, info, metrics


def test_config_rejects_floors_the_mix_cannot_keep_and_unknown_keys():
    with pytest.raises(cur.CurriculumError, match="curriculum.adaptive.hard_max"):
        cur.AdaptiveConfig(hard_max=0.8).validate()
    with pytest.raises(cur.CurriculumError, match="steps_per_epoch"):
        cur.CurriculumConfig(policy="reference")
    with pytest.raises(cur.CurriculumError, match=r"curriculum.adaptive.hard_budget"):
        cur.CurriculumConfig.from_dict({"adaptive": {"hard_budget": 0.3}})
    cfg = cur.CurriculumConfig.from_dict({"policy": "fixed", "fixed": {"boundaries": [5], "mixes": [[1, 0, 0],
                                                                                                   [0, 0, 1]]}})
    assert cfg.fixed.boundaries == (5,) and cfg.fixed.mixes[1] == (0.0, 0.0, 1.0)


def test_records_from_dataset_info():
    info = {"counts": {"per_split_domain_stage": {
        "train": {"nodule_xray": {"easy": 7, "medium": 7, "hard": 2}, "mass_ct": {"easy": 3, "medium": 3}}}}}
    records = cur.records_from_dataset_info(info)
    assert records["mass_ct"] == {"easy": 3, "medium": 3, "hard": 0}
    state = cur.init(cur.CurriculumConfig(), records)
    assert state.domains == ("mass_ct", "nodule_xray")
    np.testing.assert_allclose(cur.probabilities(cur.CurriculumConfig(), state, 0).domain, [3 / 12, 9 / 12])
    with pytest.raises(cur.CurriculumError, match="split 'val'"):
        cur.records_from_dataset_info(info, "val")


def test_summary_is_a_flat_json_line_with_the_mix_and_each_domains_phase():
    cfg = adaptive_cfg()
    state, _, _ = simulate(cfg, ABOVE, 900)
    out = cur.summary(cfg, state, 900)
    json.dumps(out, allow_nan=False)
    assert sum(out[f"curriculum/mix/{s}"] for s in cur.STAGES) == pytest.approx(1.0)
    assert sum(out[f"curriculum/domains_in/{s}"] for s in cur.STAGES) == 2
    assert out["curriculum/domain/nodule_xray/phase"] in cur.STAGES
    assert out["curriculum/domain/nodule_xray/medium_by"] in ("gap", "dwell")
    assert "curriculum/domain/nodule_xray/loss_ema_easy" in out


def test_epoch_mapping_drives_the_reference_warmup():
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=10)
    state = cur.init(cfg, RECORDS)
    assert cur.epoch_of(39, 10) == 3 and cur.epoch_of(40, 10) == 4
    np.testing.assert_array_equal(cur.probabilities(cfg, state, 39).stage[:, E], 1.0)


# ----------------------------------------------------------- mutation-testing gaps (benchmarks/results/mutation.md)
# One domain fed by hand with `ema_decay` 0 (each EMA is the last loss fed): Medium by dwell at step 10, then the
# plateau test of the Medium EMA every `plateau_window` (5) steps.

PLATEAU = dict(min_easy_steps=10, max_easy_steps=10, plateau_window=5, plateau_tol=0.25, max_medium_steps=1000)


def feed_medium(medium_losses, easy_losses=None, **kw):
    """Easy 1.0 by default: Medium 2.0 > (1 + medium_gap_tol) * Easy, so no gap entry."""
    cfg = cur.CurriculumConfig(policy="adaptive", ema_decay=0.0, update_every=1,
                               adaptive=dataclasses.replace(cur.AdaptiveConfig(), **{**PLATEAU, **kw}))
    state = cur.init(cfg, {"d": {"easy": 10, "medium": 10, "hard": 10}})
    easy_losses = [1.0] * len(medium_losses) if easy_losses is None else easy_losses
    for step, (e, m) in enumerate(zip(easy_losses, medium_losses)):
        state = cur.update(cfg, state, step, np.array([[e, m, 3.0]]), np.full((1, 3), 10.0))
    return state


def test_plateau_is_tested_exactly_one_window_after_medium_began():
    state = feed_medium([2.0] * 16)  # no gain at all
    assert entry(state, 0, "medium") == (10, "dwell") and entry(state, 0, "hard") == (15, "plateau")


@pytest.mark.parametrize("last,hard", [(1.5, (15, "plateau")), (1.49, (-1, ""))])
def test_plateau_tolerance_is_relative_and_inclusive(last, hard):
    """Medium EMA 2.0 when Medium began; a window later 1.5: a gain of exactly plateau_tol (0.25) x 2.0 is a
    plateau, a little more is progress."""
    assert entry(feed_medium([2.0] * 15 + [last]), 0, "hard") == hard


@pytest.mark.parametrize("policy", ["adaptive", "reference"])
def test_update_leaves_the_state_it_was_given_unchanged(policy):
    """States are values: the trainer checkpoints the state it holds while the next one is computed."""
    cfg = cur.CurriculumConfig(policy=policy, ema_decay=0.0, update_every=1, steps_per_epoch=2,
                               adaptive=dataclasses.replace(cur.AdaptiveConfig(), **PLATEAU))
    state = cur.init(cfg, {"d": {"easy": 10, "medium": 10, "hard": 10}})
    for step in range(12):
        before = state.to_json()
        new = cur.update(cfg, state, step, np.array([[1.0, 2.0, 3.0]]), np.full((1, 3), 10.0))
        assert state.to_json() == before and new.to_json() != before
        state = new
    assert policy == "reference" or entry(state, 0, "medium") == (10, "dwell")


def test_medium_entered_at_step_0_stays_entered():
    """max_easy_steps 0 (Medium from the start): the domain enters Medium once, at step 0, and its plateau window
    counts from there."""
    state = feed_medium([2.0] * 6, min_easy_steps=0, max_easy_steps=0)
    assert entry(state, 0, "medium") == (0, "dwell") and entry(state, 0, "hard") == (5, "plateau")


def test_gap_entry_is_allowed_at_min_easy_steps_itself():
    """Easy fell from 2.0 to 1.0 and Medium matches it from step 1 on: Medium by the gap gate at step 10 =
    min_easy_steps, not one step later."""
    state = feed_medium([1.0] * 12, [2.0] + [1.0] * 11, max_easy_steps=100)
    assert entry(state, 0, "medium") == (10, "gap")


def test_gap_gate_thresholds_are_inclusive():
    """Medium exactly (1 + medium_gap_tol) x Easy, Easy exactly (1 - easy_min_drop) x its peak: the gate opens."""
    state = feed_medium([1.5] * 12, [2.0] + [1.0] * 11, max_easy_steps=100, medium_gap_tol=0.5, easy_min_drop=0.5)
    assert entry(state, 0, "medium") == (10, "gap")
