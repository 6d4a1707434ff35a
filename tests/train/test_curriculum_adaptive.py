"""The `adaptive` curriculum policy's exact numbers: its initial state, the Medium ramp, the Hard-phase mix, the
phase and the summary of each domain when domains are in different phases.

Each test is written from the module's docstring/contract (`medclm_jax/train/curriculum.py`): the scheduler is fed
by hand with `ema_decay` 0, so each loss EMA is the last loss fed and every gate fires at a step known in advance.
`policy_state` is saved with the checkpoint (`to_json`), so its dtypes are part of the contract too.
"""

import dataclasses
import json

import numpy as np
import pytest

from medclm_jax.train import curriculum as cur

E, M, H = cur.EASY, cur.MEDIUM, cur.HARD


def adaptive(**kw) -> cur.CurriculumConfig:
    """`ema_decay` 0 and `min_examples` 0: each EMA is the loss of the last update."""
    return cur.CurriculumConfig(policy="adaptive", ema_decay=0.0, min_examples=0.0, update_every=1,
                                adaptive=dataclasses.replace(cur.AdaptiveConfig(), **kw))


def feed(cfg, records, losses, steps):
    """`losses(step)` -> f[D, 3], 10 examples of every (domain, stage) at every step in `steps`."""
    state = cur.init(cfg, records)
    for step in steps:
        state = cur.update(cfg, state, step, np.asarray(losses(step), float), np.full(state.records.shape, 10.0))
    return state


ONE = {"d": {"easy": 10, "medium": 10, "hard": 10}}


def dwell_at_10(ramp_steps):
    """One domain that enters Medium by the dwell at step 10 (Medium loss far above Easy), fed up to step 10."""
    cfg = adaptive(min_easy_steps=10, max_easy_steps=10, medium_ramp_steps=ramp_steps, max_medium_steps=1000)
    state = feed(cfg, ONE, lambda t: [[1.0, 3.0, 4.0]], range(11))
    assert int(state.policy_state["medium_step"][0]) == 10
    return cfg, state


def medium_share(cfg, state, step):
    stage = cur.probabilities(cfg, state, step).stage[0]
    assert stage[H] == 0 and stage.sum() == pytest.approx(1.0)
    return stage[M]


# --------------------------------------------------------------------------------------------------- init


def test_initial_policy_state_has_int64_steps_and_nan_references():
    """`policy_state` goes into the checkpoint: step and reason arrays are int64 (-1 / 0: not yet), the easy peak
    and plateau reference are float64 NaN (nothing measured), the budget float64 0. A wrong init would store an
    object array of None for the reference, or float steps, and the checkpoint would say so."""
    state = cur.init(adaptive(), {"a": {"easy": 5, "medium": 5, "hard": 5}, "b": {"easy": 5, "medium": 5}})
    ps = state.policy_state
    want = {"medium_step": ("int64", -1), "medium_by": ("int64", 0), "hard_step": ("int64", -1),
            "hard_by": ("int64", 0), "plateau_ref_step": ("int64", 0), "hard_budget": ("float64", 0.0)}
    assert set(ps) == set(want) | {"easy_peak", "plateau_ref"}
    for k, (dtype, value) in want.items():
        assert ps[k].dtype == np.dtype(dtype) and ps[k].shape == (2,), k
        np.testing.assert_array_equal(ps[k], value)
    for k in ("easy_peak", "plateau_ref"):
        assert ps[k].dtype == np.float64 and np.isnan(ps[k]).all(), k
    saved = json.loads(state.to_json())["policy_state"]
    assert {k: v["dtype"] for k, v in saved.items()} == {**{k: d for k, (d, _) in want.items()},
                                                         "easy_peak": "float64", "plateau_ref": "float64"}
    assert saved["plateau_ref"]["data"] == [None, None]  # NaN written as null, read back as NaN
    back = cur.CurriculumState.from_json(state.to_json()).policy_state
    for k, v in ps.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


def test_policy_state_steps_stay_int64_after_updates():
    """The entry and plateau-window steps written by `update` are int64 like those of `init` (a float array would
    write 10.0 into the checkpoint)."""
    cfg, state = dwell_at_10(100)
    ps = state.policy_state
    for k in ("medium_step", "medium_by", "hard_step", "hard_by", "plateau_ref_step"):
        assert ps[k].dtype == np.int64, k
    assert int(ps["plateau_ref_step"][0]) == 10 and ps["plateau_ref"][0] == 3.0
    saved = json.loads(state.to_json())["policy_state"]
    assert saved["plateau_ref_step"] == {"dtype": "int64", "shape": [1], "data": [10]}


# ---------------------------------------------------------------------------------------------- Medium ramp


def test_medium_share_ramps_linearly_from_the_probe_to_the_target():
    """Medium entered at step 10 with `medium_ramp_steps` 100: its share is the probe (0.1) up to step 10, then
    probe + (target - probe) * (step - 10) / 100, and the target (0.6) from step 110 on. A ramp that counts from 0
    instead of the entry step, multiplies instead of divides, jumps to the target at once, or ramps to
    target + probe would give other numbers at the intermediate steps."""
    cfg, state = dwell_at_10(100)
    a = cfg.adaptive
    for step, want in [(10, 0.1), (11, 0.105), (35, 0.225), (60, 0.35), (109, 0.595), (110, 0.6), (111, 0.6),
                       (5000, 0.6)]:
        assert medium_share(cfg, state, step) == pytest.approx(want, abs=1e-12), step
        assert want == pytest.approx(a.probe + (a.medium_target - a.probe) * min(1, (step - 10) / 100))


def test_medium_ramp_is_clipped_to_the_probe_before_the_entry_step():
    """The ramp is clipped to [0, 1]: asked for a step before the domain entered Medium (a state ahead of the
    step, e.g. a look back from the log), Medium's share is the probe, never below it (an unclipped ramp gives
    0.075 at step 5 and a negative share further back)."""
    cfg, state = dwell_at_10(100)
    for step in (0, 5, 9):
        assert medium_share(cfg, state, step) == pytest.approx(0.1, abs=1e-12), step
    assert (cur.probabilities(cfg, state, 0).stage >= 0).all()


def test_medium_ramp_of_one_step():
    """`medium_ramp_steps` 1: the probe at the entry step, the target one step later (not half-way)."""
    cfg, state = dwell_at_10(1)
    assert medium_share(cfg, state, 10) == pytest.approx(0.1, abs=1e-12)
    assert medium_share(cfg, state, 11) == pytest.approx(0.6, abs=1e-12)
    assert medium_share(cfg, state, 12) == pytest.approx(0.6, abs=1e-12)


def test_medium_ramp_of_zero_steps_jumps_to_the_target_at_the_entry_step():
    """`medium_ramp_steps` 0: no ramp, Medium's share is the target from the entry step itself (not the probe,
    and not probe + 2 x (target - probe)); before Medium began it is the probe."""
    cfg, state = dwell_at_10(0)
    for step in (10, 11, 500):
        assert medium_share(cfg, state, step) == pytest.approx(0.6, abs=1e-12), step
    easy = feed(cfg, ONE, lambda t: [[1.0, 3.0, 4.0]], range(5))  # still in Easy
    assert medium_share(cfg, easy, 100) == pytest.approx(0.1, abs=1e-12)
    np.testing.assert_allclose(cur.probabilities(cfg, easy, 100).stage, [[0.9, 0.1, 0.0]])


# ------------------------------------------------------------------------ domains in different phases

THREE = {n: {"easy": 10, "medium": 10, "hard": 10} for n in ("a_easy", "b_medium", "c_hard")}


def three_phases(**kw):
    """Fed steps 0..12 with Easy 1.0 everywhere and `easy_min_drop` 0 (so the gap gate can open at step 0):
    - a_easy: Medium 5.0 > 1.25 x Easy: stays in Easy (max_easy_steps 100 is far);
    - b_medium: Medium 1.0 at step 0 (gap), then halving every 5 steps: no plateau, stays in Medium;
    - c_hard: Medium 1.0 at step 0 (gap), flat: plateau at step 5 (Hard, budget 0.2), Hard flat too: +0.1 at 10.
    """
    cfg = adaptive(min_easy_steps=0, max_easy_steps=100, easy_min_drop=0.0, medium_gap_tol=0.25,
                   medium_ramp_steps=100, plateau_window=5, plateau_tol=0.25, max_medium_steps=1000, **kw)

    def losses(t):
        return [[1.0, 5.0, 3.0], [1.0, 0.5 ** (t // 5), 3.0], [1.0, 1.0, 3.0]]

    return cfg, feed(cfg, THREE, losses, range(13))


def test_each_domain_has_its_own_phase_and_entry_steps():
    """One domain per phase: `phases` gives [Easy, Medium, Hard] (a domain that entered Medium at step 0 is in
    Medium, an Easy domain is 0, not None), and the entry steps and reasons are per domain."""
    cfg, state = three_phases()
    ps = state.policy_state
    assert state.domains == ("a_easy", "b_medium", "c_hard")
    np.testing.assert_array_equal(ps["medium_step"], [-1, 0, 0])
    np.testing.assert_array_equal(ps["hard_step"], [-1, -1, 5])
    gap, plateau = cur.ENTRY_REASONS.index("gap"), cur.ENTRY_REASONS.index("plateau")
    np.testing.assert_array_equal(ps["medium_by"], [0, gap, gap])
    np.testing.assert_array_equal(ps["hard_by"], [0, 0, plateau])
    np.testing.assert_allclose(ps["hard_budget"], [0.0, 0.0, 0.3])
    for step in (13, 1000):
        phase = cur.phases(cfg, state, step)
        assert phase.tolist() == [E, M, H] and phase.dtype.kind == "i"


def test_mix_per_phase_with_the_ramp_and_the_hard_phase_medium_floor():
    """Easy phase: (1 - probe, probe, 0). Medium phase (entered at step 0): the ramp at step 13 is 0.13, Medium
    0.1 + 0.5 x 0.13. Hard phase: medium = max(medium_floor, (1 - hard) x ramp share), easy = 1 - hard - medium:
    at step 13 the floor (0.7 x 0.165 < 0.2), once the ramp is done 0.7 x 0.6 = 0.42."""
    cfg, state = three_phases()
    np.testing.assert_allclose(cur.probabilities(cfg, state, 13).stage,
                               [[0.9, 0.1, 0.0], [0.835, 0.165, 0.0], [0.5, 0.2, 0.3]], atol=1e-12)
    np.testing.assert_allclose(cur.probabilities(cfg, state, 500).stage,
                               [[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.28, 0.42, 0.3]], atol=1e-12)
    cfg, state = three_phases(hard_max=0.4, medium_floor=0.45)  # a floor above 0.42 binds after the ramp too
    np.testing.assert_allclose(cur.probabilities(cfg, state, 500).stage[2], [0.25, 0.45, 0.3], atol=1e-12)


def test_hard_budget_grows_by_hard_step_per_plateau_and_stops_at_hard_max():
    """Hard flat: a plateau every window (5 steps) after Hard began at 5: 0.2, 0.3 at 10, 0.4 at 15, 0.5 at 20,
    then hard_max; the mix follows (medium 0.6 x (1 - hard) once the ramp is done)."""
    cfg = adaptive(min_easy_steps=0, max_easy_steps=100, easy_min_drop=0.0, medium_ramp_steps=0, plateau_window=5,
                   plateau_tol=0.25, max_medium_steps=1000)
    for last, budget in [(9, 0.2), (10, 0.3), (15, 0.4), (20, 0.5), (30, 0.5)]:
        state = feed(cfg, ONE, lambda t: [[1.0, 1.0, 3.0]], range(last + 1))
        assert state.policy_state["hard_budget"][0] == pytest.approx(budget), last
        medium = max(cfg.adaptive.medium_floor, (1 - budget) * 0.6)
        np.testing.assert_allclose(cur.probabilities(cfg, state, last + 1).stage[0],
                                   [1 - budget - medium, medium, budget], atol=1e-12)


# ------------------------------------------------------------------------------------------------- summary


def test_summary_reports_each_domains_budget_phase_and_entry_reasons():
    """Per domain: hard_budget as a float, medium_by / hard_by as the entry reason ("" while not entered), the
    phase by name; and the count of domains per phase."""
    cfg, state = three_phases()
    out = cur.summary(cfg, state, 13)
    json.dumps(out, allow_nan=False)
    want = {"a_easy": ("easy", 0.0, "", ""), "b_medium": ("medium", 0.0, "gap", ""),
            "c_hard": ("hard", 0.3, "gap", "plateau")}
    for name, (phase, budget, medium_by, hard_by) in want.items():
        key = f"curriculum/domain/{name}"
        assert out[f"{key}/phase"] == phase
        assert isinstance(out[f"{key}/hard_budget"], float) and out[f"{key}/hard_budget"] == pytest.approx(budget)
        assert out[f"{key}/medium_by"] == medium_by and out[f"{key}/hard_by"] == hard_by, name
    assert [out[f"curriculum/domains_in/{s}"] for s in cur.STAGES] == [1, 1, 1]
    dwell = feed(adaptive(min_easy_steps=0, max_easy_steps=0, max_medium_steps=3), ONE,
                 lambda t: [[1.0, 3.0 - 0.5 * t, 4.0]], range(4))  # Medium keeps improving: Hard by the dwell
    out = cur.summary(adaptive(min_easy_steps=0, max_easy_steps=0, max_medium_steps=3), dwell, 4)
    assert (out["curriculum/domain/d/medium_by"], out["curriculum/domain/d/hard_by"]) == ("dwell", "dwell")
    assert out["curriculum/domain/d/hard_budget"] == pytest.approx(0.2)
