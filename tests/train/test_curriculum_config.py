"""The scheduler's configuration, state serialization and `init`: what is refused (and that the error names the key
and the offending value), what is accepted at the edges, the exact JSON round trip, and the state `init` builds.

Each test is written from the module's docstring/contract (`medclm_jax/train/curriculum.py`).
"""

import dataclasses
import json
import re
import warnings

import ml_collections
import numpy as np
import pytest

from medclm_jax.train import curriculum as cur

SHARES = ("probe", "easy_min_drop", "medium_target", "plateau_tol", "hard_start", "hard_step", "hard_max",
          "easy_floor", "medium_floor")


def adaptive(**kw) -> cur.CurriculumConfig:
    """A config whose `adaptive` section has these overrides (CurriculumConfig runs its validation)."""
    return cur.CurriculumConfig(adaptive=cur.AdaptiveConfig(**kw))


def refused(match_key: str, *values, **kw):
    """Builds `adaptive(**kw)` and checks the error names `curriculum.adaptive.<key>` and each value."""
    with pytest.raises(cur.CurriculumError, match=rf"curriculum\.adaptive\.{match_key}:") as err:
        adaptive(**kw)
    for v in values:
        assert str(v) in str(err.value), (str(v), str(err.value))


# ---------------------------------------------------------------------------------------------- adaptive


@pytest.mark.parametrize("key", SHARES)
@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_every_adaptive_share_outside_0_1_is_refused_naming_the_key_and_value(key, value):
    """A share below 0 or above 1 (1.5, which a looser bound such as 2 would let through) is refused, and the
    message names the key and the value (not another key, not a bare message)."""
    refused(key, value, **{key: value})


# The companions make the edge value consistent with the other rules (floors, probe <= target, start <= max).
EDGE_COMPANIONS = {
    ("probe", 1.0): dict(medium_target=1.0, easy_floor=0.0),
    ("medium_target", 0.0): dict(probe=0.0),
    ("medium_target", 1.0): dict(easy_floor=0.0),
    ("hard_start", 1.0): dict(hard_max=1.0, medium_floor=0.0, easy_floor=0.0),
    ("hard_max", 0.0): dict(hard_start=0.0),
    ("hard_max", 1.0): dict(medium_floor=0.0, easy_floor=0.0),
    ("easy_floor", 1.0): dict(probe=0.0, medium_target=0.0, hard_max=0.0, hard_start=0.0, medium_floor=0.0),
    ("medium_floor", 1.0): dict(hard_max=0.0, hard_start=0.0, easy_floor=0.0),
}


@pytest.mark.parametrize("key", SHARES)
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_every_adaptive_share_may_be_exactly_0_or_1(key, value):
    """[0, 1] is closed: a strict bound at either end would refuse e.g. `easy_floor` 0 or `hard_step` 1."""
    kw = {key: value, **EDGE_COMPANIONS.get((key, value), {})}
    assert getattr(adaptive(**kw).adaptive, key) == value


@pytest.mark.parametrize("kw,key,values", [
    (dict(medium_gap_tol=-0.1), "medium_gap_tol", [-0.1, ">= 0"]),
    (dict(min_easy_steps=-1), "min_easy_steps", [-1, 2000]),
    (dict(min_easy_steps=300, max_easy_steps=200), "min_easy_steps", [300, 200]),
    (dict(max_medium_steps=-1), "max_medium_steps", [-1, ">= 0"]),
    (dict(plateau_window=0), "plateau_window", [0, "> 0"]),
    (dict(probe=0.3, medium_target=0.2), "medium_target", ["probe (0.3)"]),
    (dict(hard_start=0.6), "hard_start", ["hard_max (0.5)"]),
    (dict(probe=0.875, medium_target=0.875, easy_floor=0.25), "probe", ["easy_floor (0.25)"]),
    (dict(hard_max=0.75, medium_floor=0.25, easy_floor=0.125), "hard_max", ["0.75 + 0.25 + 0.125"]),
    (dict(medium_target=0.9), "medium_target", ["easy_floor (0.1)"]),  # (1 - 0.5) * (1 - 0.9) < 0.1
])
def test_adaptive_rules_refuse_naming_the_key_and_the_numbers(kw, key, values):
    """Each rule of `AdaptiveConfig.validate` refuses a config that breaks it; the message names the key and
    the numbers involved (a wrong key, an upper-cased key or a bare message loses what the user must fix)."""
    refused(key, *values, **kw)


def test_a_negative_medium_ramp_is_refused_naming_its_own_key():
    """A negative `medium_ramp_steps` is refused, and the message names that key (not `max_medium_steps`, which
    the user did not set)."""
    refused("medium_ramp_steps", -1, medium_ramp_steps=-1)


@pytest.mark.parametrize("kw", [
    dict(medium_gap_tol=0.0),
    dict(min_easy_steps=0),
    dict(min_easy_steps=500, max_easy_steps=500),
    dict(max_medium_steps=0),
    dict(medium_ramp_steps=0),
    dict(plateau_window=1),
    dict(probe=0.3, medium_target=0.3),
    dict(hard_start=0.5, hard_max=0.5),
    dict(probe=0.75, medium_target=0.75, easy_floor=0.25, hard_max=0.0, hard_start=0.0),  # 1 - probe == floor
    dict(hard_max=0.5, medium_floor=0.25, easy_floor=0.25, medium_target=0.5),  # the floors sum to exactly 1
    dict(hard_max=0.5, medium_target=0.5, easy_floor=0.25),  # (1 - hard_max) * (1 - target) == easy_floor
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_adaptive_rules_accept_their_boundary_values(kw):
    """Every rule is inclusive (`>=`, `<=`) or, for `plateau_window`, `> 0`: the edge itself is a valid config
    (a zero gap tolerance, no ramp, an immediate Hard dwell, Easy held at exactly its floor)."""
    cfg = adaptive(**kw)
    assert all(getattr(cfg.adaptive, k) == v for k, v in kw.items())


# ------------------------------------------------------------------------------------------------- fixed


def fixed(boundaries, mixes) -> cur.CurriculumConfig:
    return cur.CurriculumConfig(policy="fixed", fixed=cur.FixedConfig(tuple(boundaries), tuple(mixes)))


ONE_HOT = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@pytest.mark.parametrize("boundaries", [(0,), (-5,), (5, 3), (5, 5)])
def test_fixed_boundaries_must_be_positive_and_strictly_increasing(boundaries):
    """A boundary <= 0, or steps out of order or repeated, is refused; the message names the key and the list."""
    mixes = ONE_HOT[:len(boundaries) + 1]
    with pytest.raises(cur.CurriculumError, match=re.escape(f"curriculum.fixed.boundaries {list(boundaries)}")):
        fixed(boundaries, mixes)


def test_fixed_boundary_at_step_1_is_accepted():
    """Steps > 0: the first possible boundary is step 1 (Easy for step 0 only)."""
    cfg = fixed((1,), ONE_HOT[:2])
    state = cur.init(cfg, {"d": {"easy": 1, "medium": 1}})
    np.testing.assert_array_equal(cur.probabilities(cfg, state, 1).stage, [[0.0, 1.0, 0.0]])


@pytest.mark.parametrize("n", [1, 3])
def test_fixed_needs_one_mix_per_segment_and_says_how_many(n):
    """One boundary makes two segments: 1 or 3 mixes are refused with the count the user must give (2)."""
    with pytest.raises(cur.CurriculumError, match=r"curriculum\.fixed\.mixes: .*\(need 2: one per segment\)"):
        fixed((5,), ONE_HOT[:n])


@pytest.mark.parametrize("mix", [(1.5, -0.5, 0.0), (0.5, 0.5), (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)])
def test_fixed_mix_must_be_three_non_negative_shares_summing_to_1(mix):
    """A negative share (even summing to 1), two shares (summing to 1), or a sum of 1.5 or 0.9 is refused; the
    message names `curriculum.fixed.mixes[i]` and the mix."""
    with pytest.raises(cur.CurriculumError, match=re.escape(f"curriculum.fixed.mixes[1] {mix}")):
        fixed((5,), ((1.0, 0.0, 0.0), mix))


# ------------------------------------------------------------------------------------ CurriculumConfig


def test_unknown_policy_is_refused_naming_it_and_the_known_ones():
    """The message names the key, the value and the choices (not a TypeError, not a bare error)."""
    with pytest.raises(cur.CurriculumError, match=r"curriculum\.policy 'adaptiv' is not one of \[.*'adaptive'"):
        cur.CurriculumConfig(policy="adaptiv")


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_ema_decay_must_be_in_0_1_half_open(decay):
    """decay 1 would never forget (and never count a new loss as more than its share); 1.5 diverges."""
    with pytest.raises(cur.CurriculumError, match=re.escape(f"curriculum.ema_decay {decay}")):
        cur.CurriculumConfig(ema_decay=decay)
    assert cur.CurriculumConfig(ema_decay=0.0).ema_decay == 0.0


@pytest.mark.parametrize("kw,message", [(dict(update_every=0), "curriculum.update_every 0: need >= 1"),
                                        (dict(domain_temperature=-0.5), "curriculum.domain_temperature -0.5: need >= 0")])
def test_update_every_and_domain_temperature_are_each_checked(kw, message):
    """Either one out of range alone is refused (not only both together); the message names that key and its
    value."""
    with pytest.raises(cur.CurriculumError, match=re.escape(message)):
        cur.CurriculumConfig(**kw)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_domain_temperature_0_is_uniform_and_fractions_are_allowed(temperature):
    """Temperature 0: uniform over domains; 0.5: weights sqrt(records)."""
    cfg = cur.CurriculumConfig(domain_temperature=temperature)
    state = cur.init(cfg, {"a": {"easy": 1, "medium": 1}, "b": {"easy": 9, "medium": 9}})
    weight = np.array([1.0, 9.0]) ** temperature
    np.testing.assert_allclose(cur.probabilities(cfg, state, 0).domain, weight / weight.sum())


def test_reference_needs_steps_per_epoch_and_one_step_epochs_are_allowed():
    """`reference` refuses a missing or zero steps_per_epoch (naming the key); 1 step per epoch is valid."""
    for spe in (None, 0):
        with pytest.raises(cur.CurriculumError, match=r"curriculum\.steps_per_epoch"):
            cur.CurriculumConfig(policy="reference", steps_per_epoch=spe)
    assert cur.CurriculumConfig(policy="reference", steps_per_epoch=1).steps_per_epoch == 1


@pytest.mark.parametrize("key,value,why", [
    ("ramp_epochs", 0.0, "0.0: must be > 0"), ("gap_temperature", 0.0, "0.0: must be > 0"),
    ("gap_temperature", -0.1, "-0.1: must be > 0"), ("warmup_epochs", -1, "-1: must be >= 0"),
    ("hard_epoch", -1, "-1: must be >= 0"), ("plateau_epochs", 0, "0: must be >= 1"),
    ("ema_rate", 1.5, "1.5 is not in [0, 1]"), ("ema_rate", -0.1, "-0.1 is not in [0, 1]"),
    ("hard_up", -0.05, "-0.05 is not in [0, 1]"), ("hard_down", 1.1, "1.1 is not in [0, 1]"),
    ("hard_max", 2.0, "2.0 is not in [0, 1]"), ("hard_init", -0.5, "-0.5 is not in [0, 1]"),
    ("plateau_eps", -0.01, "-0.01: must be >= 0"), ("rise", -0.05, "-0.05: must be >= 0"),
])
def test_reference_constants_are_checked_when_the_config_is_built(key, value, why):
    """A `reference` constant the rule cannot run with is refused up front, naming the key and the value: a ramp of
    0 epochs or a zero temperature was a bare ZeroDivisionError mid-run (at epoch warmup + 1), a rate above 1 an
    EMA that diverges."""
    with pytest.raises(cur.CurriculumError, match=re.escape(f"curriculum.reference.{key}: {why}")):
        cur.CurriculumConfig(policy="reference", steps_per_epoch=10,
                             reference=cur.ReferenceConfig(**{key: value}))


def test_reference_constants_accept_their_edges():
    """The authors' constants are valid; so are the edges of each range (one-epoch ramp and plateau, a rate or
    budget of exactly 0 or 1, no warm-up, Hard from epoch 0)."""
    for kw in (dict(), dict(ramp_epochs=1e-3, gap_temperature=1e-3, plateau_epochs=1, warmup_epochs=0, hard_epoch=0),
               dict(ema_rate=0.0, hard_up=0.0, hard_down=0.0, hard_max=0.0, hard_init=0.0, plateau_eps=0.0, rise=0.0),
               dict(ema_rate=1.0, hard_up=1.0, hard_down=1.0, hard_max=1.0, hard_init=1.0)):
        cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=10, reference=cur.ReferenceConfig(**kw))
        assert all(getattr(cfg.reference, k) == v for k, v in kw.items())


def test_from_dict_reads_every_section_of_a_config_dict():
    """`reference` is a section like `adaptive` and `fixed`: read into a ReferenceConfig (not left a dict),
    and its unknown keys are errors that name them."""
    d = ml_collections.ConfigDict({"policy": "reference", "steps_per_epoch": 10, "reference": {"hard_epoch": 7},
                                   "adaptive": {"probe": 0.2}})
    cfg = cur.CurriculumConfig.from_dict(d)
    assert cfg.reference == cur.ReferenceConfig(hard_epoch=7) and cfg.adaptive.probe == 0.2
    with pytest.raises(cur.CurriculumError, match=r"'curriculum\.reference\.hard_epochs'"):
        cur.CurriculumConfig.from_dict({"policy": "reference", "steps_per_epoch": 10,
                                        "reference": {"hard_epochs": 7}})


def test_from_dict_names_an_unknown_top_level_key_with_its_full_path():
    with pytest.raises(cur.CurriculumError, match=r"\['curriculum\.polcy'\]"):
        cur.CurriculumConfig.from_dict({"polcy": "uniform"})


# -------------------------------------------------------------------------------------------- loss_ema


def state_with(loss_sum, loss_weight) -> cur.CurriculumState:
    state = cur.init(cur.CurriculumConfig(), {"d": {"easy": 1, "medium": 1, "hard": 1}})
    return dataclasses.replace(state, loss_sum=np.array([loss_sum], np.float64),
                               loss_weight=np.array([loss_weight], np.float64))


def test_loss_ema_is_measured_from_any_count_by_default_and_from_min_examples_inclusive():
    """Default min_examples 0: a decayed count of 0.5 is measured (only a count of 0 is NaN); with
    min_examples 4 a count of exactly 4 is measured and 3.5 is not."""
    state = state_with([0.0, 1.0, 8.0], [0.0, 0.5, 4.0])
    np.testing.assert_array_equal(state.loss_ema(), [[np.nan, 2.0, 2.0]])
    np.testing.assert_array_equal(state.loss_ema(4.0), [[np.nan, np.nan, 2.0]])
    np.testing.assert_array_equal(state_with([7.0, 7.0, 7.0], [3.5, 3.5, 3.5]).loss_ema(4.0), np.full((1, 3), np.nan))


def test_loss_ema_of_a_never_seen_stage_is_nan_without_a_division_warning():
    """Count 0 is never divided (0 / 0 would warn "invalid value" in the trainer's log at every step)."""
    state = state_with([0.0, 0.0, 3.0], [0.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ema = state.loss_ema(0.0)
    np.testing.assert_array_equal(ema, [[np.nan, np.nan, 3.0]])


# ------------------------------------------------------------------------------------------------ JSON


def rich_state() -> cur.CurriculumState:
    """An adaptive state (all-NaN `easy_peak`, int64 steps) plus arrays of other dtypes and shapes, and numpy
    scalars as a policy computing with numpy may leave them."""
    cfg = cur.CurriculumConfig()
    state = cur.init(cfg, {"a": {"easy": 3, "medium": 4, "hard": 5}, "b": {"easy": 1}})
    ps = dict(state.policy_state)
    ps["easy_peak"] = np.array([np.nan, 2.5])
    ps.update(f32=np.array([[0.1, np.nan], [3.0, -1.5]], np.float32), empty=np.zeros((0, 3), np.int64),
              count=np.int64(7), share=np.float32(0.25), history=[1.0, 0.5], flag=True)
    return dataclasses.replace(state, step=12, loss_sum=np.array([[1.0, 0.1, np.nan], [0.0, 0.0, 0.0]]),
                               policy_state=ps)


def test_json_round_trip_keeps_values_nan_dtype_and_shape():
    """NaN comes back as NaN (not None, not an object array), int64 stays int64, float32 stays float32 and every
    shape (2-D, empty) is kept; numpy scalars are written as plain numbers."""
    state = rich_state()
    back = cur.CurriculumState.from_json(state.to_json())
    assert (back.policy, back.domains, back.step) == (state.policy, state.domains, state.step)
    for name in ("records", "loss_sum", "loss_weight"):
        a, b = getattr(state, name), getattr(back, name)
        assert (b.dtype, b.shape) == (a.dtype, a.shape), name
        np.testing.assert_array_equal(b, a)
    assert set(back.policy_state) == set(state.policy_state)
    for k, v in state.policy_state.items():
        if isinstance(v, np.ndarray):
            assert (back.policy_state[k].dtype, back.policy_state[k].shape) == (v.dtype, v.shape), k
            np.testing.assert_array_equal(back.policy_state[k], v)
        else:
            assert back.policy_state[k] == v, k
    assert back.policy_state["easy_peak"].dtype == np.float64 and np.isnan(back.policy_state["easy_peak"][0])
    assert back.policy_state["count"] == 7 and back.policy_state["share"] == 0.25
    assert back.to_json() == state.to_json()


def test_json_is_strict_json_without_nan_literals():
    """NaN is written as null: `NaN` is not JSON (RFC 8259) and strict readers of the checkpoint reject it."""
    text = rich_state().to_json()

    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")

    json.loads(text, parse_constant=no_constants)
    assert "NaN" not in text


def test_json_text_is_canonical_whatever_the_order_of_the_policy_state():
    """Equal states give identical text (keys sorted), so the text can be compared and diffed as the state."""
    state = rich_state()
    reordered = dataclasses.replace(state, policy_state=dict(reversed(list(state.policy_state.items()))))
    assert reordered.to_json() == state.to_json()
    text = state.to_json()
    assert list(json.loads(text)) == sorted(json.loads(text))


@pytest.mark.parametrize("fmt,version,shown", [
    ("something-else", 1, "format 'something-else'"),
    ("medclm-curriculum-state", 2, "version 2"),
    (None, None, "format None, version None"),
])
def test_from_json_refuses_another_format_or_version_and_says_which(fmt, version, shown):
    """Either a wrong format or a wrong version alone is refused; the message shows what the text holds."""
    d = json.loads(cur.init(cur.CurriculumConfig(), {"a": {"easy": 1}}).to_json())
    d.pop("format"), d.pop("version")
    d.update({k: v for k, v in (("format", fmt), ("version", version)) if v is not None})
    with pytest.raises(cur.CurriculumError, match=re.escape(shown)):
        cur.CurriculumState.from_json(json.dumps(d))


# ------------------------------------------------------------------------------------------------ init


def test_init_builds_the_state_before_step_0():
    """step -1 (nothing observed), int64 records per (domain, stage) in domain order, float64 zero loss sums and
    weights, and the policy's own initial state."""
    cfg = cur.CurriculumConfig()
    state = cur.init(cfg, {"b": {"easy": 2, "medium": 3, "hard": 4}, "a": {"easy": 5, "medium": 6}})
    assert state.policy == "adaptive" and state.domains == ("a", "b") and state.step == -1
    assert state.records.dtype == np.int64
    np.testing.assert_array_equal(state.records, [[5, 6, 0], [2, 3, 4]])
    for arr in (state.loss_sum, state.loss_weight):
        assert arr.dtype == np.float64 and arr.shape == (2, 3) and not arr.any()
    assert state.loss_sum is not state.loss_weight
    np.testing.assert_array_equal(state.policy_state["medium_step"], [-1, -1])
    # the first update may be at step 0
    new = cur.update(cfg, state, 0, np.ones((2, 3)), np.ones((2, 3)))
    assert new.step == 0


def test_init_keeps_the_given_domain_order_and_domains_without_records():
    """`domains` fixes the ids (not re-sorted); a listed domain without records gets a zero row and is never
    sampled; a missing stage counts 0 records."""
    cfg = cur.CurriculumConfig(policy="uniform")
    state = cur.init(cfg, {"a": {"easy": 1, "medium": 2}, "b": {"hard": 3}}, domains=["b", "c", "a"])
    assert state.domains == ("b", "c", "a")
    np.testing.assert_array_equal(state.records, [[0, 0, 3], [0, 0, 0], [1, 2, 0]])
    probs = cur.probabilities(cfg, state, 0)
    assert probs.domain[1] == 0 and not probs.stage[1].any()


@pytest.mark.parametrize("records,domains,match", [
    ({"a": {"easy": 1}}, ["a", "a"], r"each once; got \['a', 'a'\]"),
    ({}, None, r"need at least one domain"),
    ({"a": {"easy": 1}, "b": {"easy": 1}}, ["a"], r"domains \['b'\] have records but are not in the domain list"),
    ({"a": {"easy": 1, "medium": -1}}, None, r"(?i)record counts must be >= 0"),
])
def test_init_refuses_bad_domain_lists_and_negative_counts(records, domains, match):
    """Duplicates, no domain at all, records of an unlisted domain (silently dropped data) and negative counts
    are refused with a message that says which."""
    with pytest.raises(cur.CurriculumError, match=match):
        cur.init(cur.CurriculumConfig(), records, domains)


def test_init_checks_later_segments_for_fixed_only():
    """The `fixed` boundaries are segments of `fixed` alone: under `reference` (whose later mix depends on the
    updates to come) `init` checks only step 0, even though its authors' Hard budget started at 1 would sample
    Hard only from epoch 19 on, which this dataset has no records for."""
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=1, reference=cur.ReferenceConfig(hard_init=1.0))
    state = cur.init(cfg, {"a": {"easy": 5, "medium": 5}})
    assert cur.probabilities(cfg, state, 0).stage[0, 0] == 1.0
    with pytest.raises(cur.CurriculumError, match="samples no domain at step 1000"):
        cur.probabilities(cfg, state, 1000)
