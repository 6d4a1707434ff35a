"""The scheduler's `reference` policy (the authors' released rule) against an independent plain-Python model of it.

Each test is written from the module's docstring and the comments of the reference section: per-epoch means over the
observed (domain, stage) pairs, loss EMAs m <- (1 - rate) m + rate x only where observed, a global EMA of the mean of
those pair means, the plateau / rise rule for the Hard budget lambda_h, and the mix beta(e) * sigmoid((g - center) /
temperature) with lambda_h from `hard_epoch`. Hand-made losses are fed epoch by epoch with constants that make every
branch fire; `policy_state` (saved in checkpoints: keys, types and values), `probabilities` and `summary` are compared
with the model after every update.
"""

import dataclasses
import json
import math
import statistics
import warnings

import numpy as np
import pytest

from medclm_jax.train import curriculum as cur

E, M, H = cur.EASY, cur.MEDIUM, cur.HARD
KEYS = {"epoch", "acc_sum", "acc_count", "m_easy", "m_med", "m_global", "history", "lambda_h"}
TIGHT = dict(rtol=1e-12, atol=1e-15)


class Model:
    """The reference rule in plain Python (lists and floats), one instance per run."""

    def __init__(self, r: cur.ReferenceConfig, n: int):
        self.r, self.n = r, n
        self.epoch = 0
        self.acc = {}  # (d, s) -> [sum of count * loss, sum of count] of the open epoch
        self.m_easy, self.m_med = [r.ema_init] * n, [r.ema_init] * n
        self.m_global, self.history, self.lambda_h = r.global_init, [], r.hard_init
        self.events = []  # (kind, lambda_h after) per closed epoch: "up", "down" or "" (unchanged)

    def feed(self, epoch, loss, count):
        if epoch > self.epoch:
            if self.acc:
                self.close()
            self.epoch, self.acc = epoch, {}
        for d in range(self.n):
            for s in range(3):
                if count[d][s] > 0:
                    a = self.acc.setdefault((d, s), [0.0, 0.0])
                    a[0] += count[d][s] * loss[d][s]
                    a[1] += count[d][s]

    def gap(self, d):
        e, m = self.m_easy[d], self.m_med[d]
        return 0.0 if e < 1e-8 else (e - m) / (e + 1e-8)

    def close(self):
        r = self.r
        means = {k: s / c for k, (s, c) in self.acc.items()}
        for d in range(self.n):
            if (d, E) in means:
                self.m_easy[d] = (1 - r.ema_rate) * self.m_easy[d] + r.ema_rate * means[d, E]
            if (d, M) in means:
                self.m_med[d] = (1 - r.ema_rate) * self.m_med[d] + r.ema_rate * means[d, M]
        self.m_global = (1 - r.ema_rate) * self.m_global + r.ema_rate * sum(means.values()) / len(means)
        self.history = (self.history + [self.m_global])[-max(r.plateau_epochs, 2):]
        recent = self.history[-r.plateau_epochs:]
        plateau = len(self.history) >= r.plateau_epochs and all(
            abs(recent[i + 1] - recent[i]) <= r.plateau_eps for i in range(len(recent) - 1))
        before = self.lambda_h
        if plateau and statistics.median(self.gap(d) for d in range(self.n)) >= r.hard_gap:
            self.lambda_h = min(self.lambda_h + r.hard_up, r.hard_max)
        elif len(self.history) >= 2 and self.history[-1] - self.history[-2] >= r.rise:
            self.lambda_h = max(0.0, (1 - r.hard_down) * self.lambda_h)
        kind = "up" if self.lambda_h > before else "down" if self.lambda_h < before else ""
        rise = self.history[-1] - self.history[-2] if len(self.history) > 1 else 0.0
        self.events.append((kind, self.lambda_h, rise))

    def mix(self, epoch):
        r = self.r
        if epoch < r.warmup_epochs:
            return [[1.0, 0.0, 0.0]] * self.n
        beta = 0.0 if epoch <= r.warmup_epochs else min(1.0, (epoch - r.warmup_epochs) / r.ramp_epochs)
        lam = self.lambda_h if epoch >= r.hard_epoch else 0.0
        rows = []
        for d in range(self.n):
            p = beta / (1.0 + math.exp(-(self.gap(d) - r.gap_center) / r.gap_temperature))
            rows.append([(1 - lam) * (1 - p), (1 - lam) * p, lam])
        return rows


def assert_state_matches(state, model):
    """policy_state has exactly the documented keys, with checkpoint-stable types and the model's values."""
    ps, n = state.policy_state, model.n
    assert set(ps) == KEYS
    assert isinstance(ps["epoch"], int) and ps["epoch"] == model.epoch
    for k in ("acc_sum", "acc_count"):
        assert isinstance(ps[k], np.ndarray) and ps[k].shape == (n, 3) and ps[k].dtype == np.float64
    acc_sum = [[model.acc.get((d, s), [0.0, 0.0])[0] for s in range(3)] for d in range(n)]
    acc_count = [[model.acc.get((d, s), [0.0, 0.0])[1] for s in range(3)] for d in range(n)]
    np.testing.assert_allclose(ps["acc_sum"], acc_sum, **TIGHT)
    np.testing.assert_allclose(ps["acc_count"], acc_count, **TIGHT)
    for k, v in (("m_easy", model.m_easy), ("m_med", model.m_med)):
        assert isinstance(ps[k], np.ndarray) and ps[k].shape == (n,)
        np.testing.assert_allclose(ps[k], v, **TIGHT)
    for k, v in (("m_global", model.m_global), ("lambda_h", model.lambda_h)):
        assert type(ps[k]) is float, (k, type(ps[k]))
        assert ps[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    assert type(ps["history"]) is list and all(isinstance(x, float) for x in ps["history"])
    np.testing.assert_allclose(ps["history"], model.history, **TIGHT)
    json.loads(state.to_json())


def assert_probabilities_match(cfg, state, model, epochs):
    for e in range(epochs):
        for step in (e * cfg.steps_per_epoch, (e + 1) * cfg.steps_per_epoch - 1):  # both ends of the epoch
            stage = cur.probabilities(cfg, state, step).stage
            np.testing.assert_allclose(stage, model.mix(e), **TIGHT, err_msg=f"epoch {e}")


# Epoch levels (easy, medium, hard): Medium BELOW Easy (positive gap, so the Hard budget can grow), Hard at their mean
# (an unobserved Hard pair leaves the global mean flat), flat (plateau),
# then a rise (the budget shrinks), flat again, then a fall (no change), flat.
LEVELS = [(2.0, 1.0, 1.5)] * 7 + [(2.6, 1.6, 2.1)] * 5 + [(2.0, 1.0, 1.5)] * 6


def schedule(spe, start_epoch, skip_epoch):
    """(step, loss f[2, 3], count f[2, 3]) per update: two updates an epoch with different counts and losses;
    Hard of domain 0 unobserved (NaN loss, count 0) in even epochs; Medium of domain 1 unobserved in epoch 5; epoch 3
    made of fractional counts summing to 1 (padding-weighted examples); epoch `skip_epoch` never fed."""
    out = []
    for e, level in enumerate(LEVELS):
        if e < start_epoch or e == skip_epoch:
            continue
        for step, jitter, c in ((e * spe + 1, -0.05, 3.0), (e * spe + spe - 1, 0.1, 1.0)):
            loss = np.array([level, level]) + jitter + np.array([[0.0], [0.02]])
            count = np.array([[c, c, c], [c, 2 * c, 1.0]])
            if e == 3:
                count = np.full((2, 3), 1 / 12)
            if e % 2 == 0:
                count[0, H], loss[0, H] = 0.0, np.nan
            if e == 5:
                count[1, M] = 0.0
            out.append((step, loss, count))
    return out


SCENARIOS = {
    # Hard budget allowed two epochs after the warm-up; data from step 1 (epoch 0); epoch 10 never fed.
    "hard_after_warmup": (cur.ReferenceConfig(warmup_epochs=2, ramp_epochs=4.0, hard_epoch=4, ema_rate=0.8,
                                              plateau_epochs=3, plateau_eps=0.05, hard_gap=0.3, hard_up=0.1,
                                              hard_max=0.2, hard_down=0.5, rise=0.2), 0, 10),
    # Hard epoch before the end of the warm-up (the warm-up wins), a budget from the start, the shortest plateau
    # (history of 2), and the first update only in epoch 1.
    "hard_before_warmup_end": (cur.ReferenceConfig(warmup_epochs=3, ramp_epochs=2.5, hard_epoch=2, ema_rate=0.7,
                                                   plateau_epochs=2, plateau_eps=0.05, hard_gap=0.3, hard_up=0.1,
                                                   hard_max=0.25, hard_down=0.5, rise=0.2, hard_init=0.05), 1, 14),
}


def run(name, check=None):
    r, start, skip = SCENARIOS[name]
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=4, reference=r)
    records = {"nodule_xray": {"easy": 40, "medium": 40, "hard": 10}, "mass_ct": {"easy": 40, "medium": 40, "hard": 10}}
    state = cur.init(cfg, records)
    model = Model(r, 2)
    if check:
        check(cfg, state, model)
    for step, loss, count in schedule(cfg.steps_per_epoch, start, skip):
        state = cur.update(cfg, state, step, loss, count)
        model.feed(step // cfg.steps_per_epoch, loss.tolist(), count.tolist())
        if check:
            check(cfg, state, model)
    return cfg, state, model


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_reference_state_and_probabilities_follow_the_rule_epoch_by_epoch(name):
    """A wrong EMA, global mean, history length, plateau or rise test, Hard budget step, warm-up, ramp, sigmoid or
    hard-epoch gate makes policy_state or the stage probabilities depart from the model at some epoch; an epoch of
    unobserved pairs must close without any numpy warning in the trainer's log (no 0/0, no uninitialized output) and
    without a spurious close when nothing was accumulated."""
    def check(cfg, state, model):
        assert_state_matches(state, model)
        assert_probabilities_match(cfg, state, model, 20)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, model = run(name, check)
    # the losses drive every branch: the budget grows on plateaus up to its cap, shrinks on a rise, not on a fall
    kinds = [k for k, _, _ in model.events]
    assert "up" in kinds and "down" in kinds
    r = SCENARIOS[name][0]
    assert max(lam for _, lam, _ in model.events) == pytest.approx(r.hard_max)
    assert any(k == "" and rise <= -r.rise and lam > 0 for k, lam, rise in model.events)


def test_reference_summary_logs_epoch_budget_global_loss_and_each_domains_gap():
    """The log line carries the reference's own numbers under their documented keys, as plain JSON numbers."""
    cfg, state, model = run("hard_after_warmup")
    for step in (0, 4 * 7 + 3, 80):
        out = cur.summary(cfg, state, step)
        json.dumps(out, allow_nan=False)
        assert out["curriculum/reference/epoch"] == step // 4 and type(out["curriculum/reference/epoch"]) is int
        assert out["curriculum/reference/lambda_h"] == pytest.approx(model.lambda_h, rel=1e-12)
        assert out["curriculum/reference/m_global"] == pytest.approx(model.m_global, rel=1e-12)
        for d, name in enumerate(state.domains):
            assert out[f"curriculum/domain/{name}/gap"] == pytest.approx(model.gap(d), rel=1e-12)
            assert type(out[f"curriculum/domain/{name}/gap"]) is float
    assert model.lambda_h > 0 and model.m_global > 1 and all(model.gap(d) > 0.3 for d in range(2))
    fresh = cur.summary(cfg, cur.init(cfg, {"a": {"easy": 1, "medium": 1, "hard": 1}}), 5)
    assert {k: v for k, v in fresh.items() if "/reference/" in k or k.endswith("/gap")} == {
        "curriculum/reference/epoch": 1, "curriculum/reference/lambda_h": 0.0,
        "curriculum/reference/m_global": cfg.reference.global_init, "curriculum/domain/a/gap": 0.0}


def one_domain(ref_kw, epochs, **cfg_kw):
    """One domain, one step per epoch, fed (easy, medium) losses per epoch with Hard unobserved; returns the states
    after each update."""
    cfg = cur.CurriculumConfig(policy="reference", steps_per_epoch=1,
                               reference=dataclasses.replace(cur.ReferenceConfig(), **ref_kw), **cfg_kw)
    state = cur.init(cfg, {"d": {"easy": 10, "medium": 10, "hard": 10}})
    states = []
    for step, (easy, medium) in enumerate(epochs):
        loss = np.array([[np.nan if easy is None else easy, np.nan if medium is None else medium, np.nan]])
        state = cur.update(cfg, state, step, loss, np.where(np.isnan(loss), 0.0, 2.0))
        states.append(state)
    return cfg, states


@pytest.mark.parametrize("ema_init", [0.0, 1e-8, 2e-8])
def test_gap_guard_against_a_vanishing_easy_ema(ema_init):
    """g = (m_easy - m_med) / (m_easy + 1e-8), and 0 while m_easy < 1e-8 (strictly): Easy never observed, Medium
    observed; a wrong guard (none, <=, 1 instead of 0) or a wrong denominator changes the logged gap."""
    cfg, states = one_domain(dict(ema_init=ema_init, ema_rate=0.5), [(None, 2.0), (None, 2.0)])
    ps = states[-1].policy_state
    assert ps["m_easy"][0] == ema_init and ps["m_med"][0] == pytest.approx(0.5 * ema_init + 1.0)
    want = 0.0 if ema_init < 1e-8 else (ema_init - ps["m_med"][0]) / (ema_init + 1e-8)
    assert cur.summary(cfg, states[-1], 1)["curriculum/domain/d/gap"] == pytest.approx(want, rel=1e-12)


def test_plateau_and_hard_gap_thresholds_are_inclusive():
    """Globals 1.0, 1.25, 1.5 (ema_rate 1: exact) with plateau_eps 0.25: every step equals eps, a plateau; Easy ==
    Medium gives a median gap of exactly 0 == hard_gap: the budget grows by hard_up on that third close."""
    ref = dict(ema_rate=1.0, plateau_epochs=3, plateau_eps=0.25, hard_gap=0.0, hard_up=0.125, rise=1.0)
    _, states = one_domain(ref, [(1.0, 1.0), (1.25, 1.25), (1.5, 1.5), (9.0, 9.0)])
    assert [s.policy_state["history"] for s in states[1:]] == [[1.0], [1.0, 1.25], [1.0, 1.25, 1.5]]
    assert [s.policy_state["lambda_h"] for s in states] == [0.0, 0.0, 0.0, 0.125]


def test_rise_threshold_is_inclusive_from_the_second_epoch_and_a_fall_changes_nothing():
    """Globals 1.0 -> 1.25 with rise 0.25: the budget (0.5) is multiplied by 1 - hard_down (0.5) at the second
    close already; the fall back to 1.0 leaves it alone."""
    ref = dict(ema_rate=1.0, plateau_epochs=3, rise=0.25, hard_init=0.5, hard_down=0.5, hard_up=0.125)
    _, states = one_domain(ref, [(1.0, 1.0), (1.25, 1.25), (1.0, 1.0), (1.0, 1.0)])
    assert [s.policy_state["lambda_h"] for s in states] == [0.5, 0.5, 0.25, 0.25]
    assert states[-1].policy_state["history"] == [1.0, 1.25, 1.0]
