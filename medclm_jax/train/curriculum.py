"""The curriculum scheduler: how often each domain is trained as Easy, Medium or Hard, step by step.

Why train/ and not data/: the scheduler's state is fed by the trainer (per-(domain, stage) losses, one step late)
and saved with the trainer's checkpoint; the input pipeline only *reads* it, through `probabilities` and `draw`,
which are pure functions of (config, state, step, seed). The module is plain numpy (no jax, nothing imported from
`medclm_jax.train` besides itself), so the pipeline's workers and the tests import it cheaply (for that,
`medclm_jax/train/__init__.py` must stay free of imports).

The contract (D domains, the 3 stages of `schema.STAGES` in that order):
  records        int[D, 3] train records per (domain, stage) (`records_from_dataset_info`); a record of pool
                 `easy_medium` counts for Easy and Medium, one of pool `hard` for Hard. Domain id = index into
                 `state.domains` (sorted names by default), the batch's `domain` ids index the same order.
  `init(cfg, records)`                   -> CurriculumState
  `update(cfg, state, step, loss, count)` -> CurriculumState: `loss` f[D, 3] mean per-example loss and `count`
                 f[D, 3] examples of training step `step` (`observe` makes both from a batch). Steps are integers
                 and must increase; they may lag the step being trained and skip steps (the trainer may call every
                 k steps).
  `probabilities(cfg, state, step)`      -> Probabilities: for the batch of training step `step`, `stage` f[D, 3]
                 (each row sums to 1, or is all 0 for a domain not sampled now) and `domain` f[D] (sums to 1).
  `draw(probs, seed, step, n)`           -> (domain int[n], stage int[n]) for the pipeline: the stream is a pure
                 function of (seed, step, process, probabilities), so of (seed, step, scheduler state).
  `summary(cfg, state, step)`            -> flat dict of floats/ints/strings for the trainer's JSONL log;
                 `phases(cfg, state, step)` -> int[D], the stage each domain has reached.
  `CurriculumState.to_json()` / `from_json` -> exact round trip (floats written as their shortest repr).
The scheduler holds no RNG: it returns probabilities and sampling is the pipeline's, through `draw`.

Stages a domain has no records for: the policy's mix is multiplied by availability and renormalized over the
stages the domain has. If the mix puts no mass on any of them (e.g. a domain with only Hard records while the
curriculum is still in Easy), the domain is not sampled for now: its row is 0 and the domain mix renormalizes over
the other domains. `init` refuses a config and dataset under which no domain could be sampled at the start (or, for
`fixed`, in some segment); under `reference`, and `adaptive` with `easy_floor` > 0 (the default), every domain with
Easy records always has Easy mass, so the pipeline never waits on the scheduler.

Policies (registry `POLICIES`; docs/design.md, "Curriculum"):
  adaptive   ours. Per domain, phases Easy -> Medium -> Hard that never go back. Easy phase: Easy plus a Medium
             *probe* (so the Medium loss is measured: the authors' Easy-only warm-up measures nothing). Medium is
             entered when the Medium loss EMA is within `medium_gap_tol` of the Easy EMA and Easy has been learned
             (its EMA dropped `easy_min_drop` below its peak, so the untrained start, where every stage is equally
             bad, does not count), after `min_easy_steps`; or at `max_easy_steps` whatever the losses. Medium's
             share then ramps from the probe to `medium_target` over `medium_ramp_steps`. Hard is added (budget
             `hard_start`) when the Medium EMA stops improving (relative gain <= `plateau_tol` over a
             `plateau_window`) or `max_medium_steps` after Medium began; each later Hard plateau adds `hard_step`,
             up to `hard_max`. Easy >= `easy_floor` at all times and Medium >= `medium_floor` in the Hard phase
             (against forgetting; checked by `AdaptiveConfig.validate`). Provable progress: every domain is in
             Medium by the first update at step >= `max_easy_steps` and in Hard `max_medium_steps` later.
  reference  the authors' released rule, with their released constants: per-epoch loss EMAs, Medium
             probability beta(e) * sigmoid((g_d - 0.5) / 0.1) with g_d = (m_easy - m_med) / m_easy, Hard budget from
             epoch 19. Kept to show its flaw: Medium's loss is normally above Easy's, so g_d < 0, Medium's
             probability is ~0 and the Hard budget never grows: it stays in Easy. Needs `steps_per_epoch`.
  fixed      step boundaries and one (easy, medium, hard) mix per segment, the same for every domain.
  uniform    1/3 each from step 0 (ablation).     hard_only   Hard only (ablation).
Every policy is a pure function of (config, state, step): deterministic by construction.

Loss EMAs (all policies, for the gates and the log): per (domain, stage), a count-weighted average decayed by
`ema_decay` per training step, `sum_t decay^(T - t) n_t l_t / sum_t decay^(T - t) n_t`: no initial value to
forget (the authors' second version started at +inf and never left Easy), noisy one-example means weigh little,
and every stage has the same lag in steps whatever its share. It counts as measured once the decayed count
reaches `min_examples`.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from medclm_jax.records import schema

STAGES = schema.STAGES
EASY, MEDIUM, HARD = range(len(STAGES))
PHASE_MIN_SHARE = 0.01  # a policy without explicit phases is "in" the hardest stage with at least this share
ENTRY_REASONS = ("", "gap", "dwell", "plateau")  # why an adaptive domain entered Medium / Hard (0: not yet)


class CurriculumError(ValueError):
    """A config, dataset or state the scheduler cannot run with; the message names the key and what to do."""


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise CurriculumError(f"{key}: {why}")


# --------------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
    """Constants of `adaptive` (steps are training steps; shares are probabilities within a domain)."""

    probe: float = 0.1  # Medium's share in the Easy phase, so its loss is measured
    min_easy_steps: int = 200  # no gap-gated Medium before this step (EMAs need history)
    max_easy_steps: int = 2000  # Medium at this step whatever the losses
    medium_gap_tol: float = 0.25  # gate: m_medium <= (1 + tol) * m_easy ...
    easy_min_drop: float = 0.2  # ... and m_easy <= (1 - drop) * peak(m_easy)
    medium_ramp_steps: int = 500  # Medium's share goes linearly from `probe` to `medium_target`
    medium_target: float = 0.6
    plateau_window: int = 200  # plateau: relative gain of the frontier EMA over one window <= plateau_tol
    plateau_tol: float = 0.02
    max_medium_steps: int = 3000  # Hard this many steps after Medium began, plateau or not
    hard_start: float = 0.2  # Hard's share when Hard is added
    hard_step: float = 0.1  # added on each plateau of the Hard EMA
    hard_max: float = 0.5
    easy_floor: float = 0.1  # Easy's share never drops below this
    medium_floor: float = 0.2  # Medium's share in the Hard phase never drops below this

    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            _need(ok, f"curriculum.adaptive.{key}", why)

        for k in ("probe", "easy_min_drop", "medium_target", "plateau_tol", "hard_start", "hard_step", "hard_max",
                  "easy_floor", "medium_floor"):
            need(0.0 <= getattr(self, k) <= 1.0, k, f"{getattr(self, k)} is not in [0, 1]")
        need(self.medium_gap_tol >= 0.0, "medium_gap_tol", f"{self.medium_gap_tol}: must be >= 0")
        need(0 <= self.min_easy_steps <= self.max_easy_steps, "min_easy_steps",
             f"need 0 <= min_easy_steps ({self.min_easy_steps}) <= max_easy_steps ({self.max_easy_steps})")
        need(self.max_medium_steps >= 0, "max_medium_steps", f"{self.max_medium_steps}: must be >= 0")
        need(self.medium_ramp_steps >= 0, "medium_ramp_steps", f"{self.medium_ramp_steps}: must be >= 0")
        need(self.plateau_window > 0, "plateau_window", f"{self.plateau_window}: must be > 0")
        need(self.probe <= self.medium_target, "medium_target", f"must be >= probe ({self.probe})")
        need(self.hard_start <= self.hard_max, "hard_start", f"must be <= hard_max ({self.hard_max})")
        need(1.0 - self.probe >= self.easy_floor, "probe", f"leaves Easy below easy_floor ({self.easy_floor})")
        need(1.0 - self.hard_max - self.medium_floor >= self.easy_floor, "hard_max",
             f"hard_max + medium_floor + easy_floor must be <= 1 "
             f"({self.hard_max} + {self.medium_floor} + {self.easy_floor})")
        need((1.0 - self.hard_max) * (1.0 - self.medium_target) >= self.easy_floor, "medium_target",
             f"(1 - hard_max) * (1 - medium_target) must be >= easy_floor ({self.easy_floor})")


@dataclasses.dataclass(frozen=True)
class FixedConfig:
    """`fixed`: mix i applies to steps [boundaries[i-1], boundaries[i]); len(mixes) == len(boundaries) + 1."""

    boundaries: tuple[int, ...] = (1000, 3000)
    mixes: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.4, 0.6, 0.0), (0.2, 0.3, 0.5))

    def validate(self) -> None:
        b = list(self.boundaries)
        if any(x <= 0 for x in b) or b != sorted(set(b)):
            raise CurriculumError(f"curriculum.fixed.boundaries {b}: need strictly increasing steps > 0")
        if len(self.mixes) != len(b) + 1:
            raise CurriculumError(f"curriculum.fixed.mixes: {len(self.mixes)} mixes for {len(b)} boundaries "
                                  f"(need {len(b) + 1}: one per segment)")
        for i, m in enumerate(self.mixes):
            if len(m) != 3 or min(m) < 0 or abs(sum(m) - 1.0) > 1e-6:
                raise CurriculumError(f"curriculum.fixed.mixes[{i}] {m}: need 3 shares >= 0 (easy, medium, hard) "
                                      "summing to 1")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """The authors' released constants (their config names in comments). Epochs are `step // steps_per_epoch`."""

    warmup_epochs: int = 4  # easy_warmup_epochs: Easy only before this epoch
    ramp_epochs: float = 10.0  # ramp_kappa: beta(e) = min(1, (e - warmup) / ramp), 0 for e <= warmup
    gap_center: float = 0.5  # gamma
    gap_temperature: float = 0.1  # tau
    hard_epoch: int = 19  # hard_transition_epoch
    ema_rate: float = 0.9  # weight of the new epoch mean: m <- (1 - rate) m + rate x
    ema_init: float = 1e-3  # initial m_easy, m_med
    global_init: float = 1e-4  # initial global loss EMA
    plateau_epochs: int = 5  # plateau_patience: last values all within plateau_eps of each other
    plateau_eps: float = 0.01
    hard_gap: float = 0.6  # gamma_H: median gap needed to grow the Hard budget
    hard_up: float = 0.05
    hard_down: float = 0.1  # budget *= (1 - down) when the global EMA rises by >= rise
    rise: float = 0.05
    hard_max: float = 0.3
    hard_init: float = 0.0

    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            _need(ok, f"curriculum.reference.{key}", why)

        for k in ("warmup_epochs", "hard_epoch"):
            need(getattr(self, k) >= 0, k, f"{getattr(self, k)}: must be >= 0")
        for k in ("ramp_epochs", "gap_temperature"):  # divisors of the Medium probability
            need(getattr(self, k) > 0, k, f"{getattr(self, k)}: must be > 0")
        need(self.plateau_epochs >= 1, "plateau_epochs", f"{self.plateau_epochs}: must be >= 1")
        for k in ("ema_rate", "hard_up", "hard_down", "hard_max", "hard_init"):
            need(0.0 <= getattr(self, k) <= 1.0, k, f"{getattr(self, k)} is not in [0, 1]")
        for k in ("plateau_eps", "rise"):
            need(getattr(self, k) >= 0.0, k, f"{getattr(self, k)}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """The scheduler's configuration (`configs/train.py` holds it as `config.curriculum`; `from_dict` reads it).

    Attributes:
      policy: a name in `POLICIES`.
      ema_decay: per-step decay of the loss EMAs (0.98: a window of ~50 steps).
      min_examples: decayed example count at which a loss EMA counts as measured.
      domain_temperature: domain d is drawn with weight records_d ** temperature (1 proportional to data,
        0 uniform over domains).
      update_every: the pipeline re-reads `probabilities` every this many steps.
      steps_per_epoch: maps steps to the authors' epochs (`reference` only).
    """

    policy: str = "adaptive"
    ema_decay: float = 0.98
    min_examples: float = 4.0
    domain_temperature: float = 1.0
    update_every: int = 10
    steps_per_epoch: int | None = None
    adaptive: AdaptiveConfig = AdaptiveConfig()
    fixed: FixedConfig = FixedConfig()
    reference: ReferenceConfig = ReferenceConfig()

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise CurriculumError(f"curriculum.policy {self.policy!r} is not one of {sorted(POLICIES)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise CurriculumError(f"curriculum.ema_decay {self.ema_decay}: need 0 <= decay < 1")
        if self.update_every < 1:
            raise CurriculumError(f"curriculum.update_every {self.update_every}: need >= 1")
        if self.domain_temperature < 0:
            raise CurriculumError(f"curriculum.domain_temperature {self.domain_temperature}: need >= 0")
        if self.policy == "reference" and not (self.steps_per_epoch or 0) > 0:
            raise CurriculumError("curriculum.steps_per_epoch must be set (> 0) for policy 'reference': its "
                                  "constants are in epochs")
        self.adaptive.validate()
        self.fixed.validate()
        self.reference.validate()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CurriculumConfig":
        """From a (nested) mapping or ml-collections ConfigDict; an unknown key is an error that names it."""
        d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        subs = {"adaptive": AdaptiveConfig, "fixed": FixedConfig, "reference": ReferenceConfig}
        kw = {k: _build(subs[k], v, f"curriculum.{k}") if k in subs else v for k, v in d.items()}
        return _build(cls, kw, "curriculum")


def _build(cls, d: Mapping[str, Any], where: str):
    if isinstance(d, cls):
        return d
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CurriculumError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}; known: {sorted(known)}")
    fix = {"boundaries": lambda v: tuple(int(x) for x in v), "mixes": lambda v: tuple(tuple(map(float, m)) for m in v)}
    return cls(**{k: fix[k](v) if k in fix else v for k, v in d.items()})


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The epoch (0-based) a training step belongs to."""
    return int(step) // int(steps_per_epoch)


# ---------------------------------------------------------------------------------------------------- state


@dataclasses.dataclass(frozen=True, eq=False)
class CurriculumState:
    """Everything the scheduler knows; saved with the checkpoint as `to_json()`.

    Attributes:
      policy: the policy that wrote it (a restore under another policy is refused).
      domains: domain names; index = the batch's domain id.
      records: int64[D, 3] train records per (domain, stage).
      step: the last training step whose observations are in (-1 before the first).
      loss_sum, loss_weight: float64[D, 3] decayed sums of count * mean loss and of counts (the loss EMAs).
      policy_state: the policy's own arrays and numbers (see each policy).
    """

    policy: str
    domains: tuple[str, ...]
    records: np.ndarray
    step: int
    loss_sum: np.ndarray
    loss_weight: np.ndarray
    policy_state: Mapping[str, Any]

    def loss_ema(self, min_examples: float = 0.0) -> np.ndarray:
        """float64[D, 3] loss EMAs; NaN where the decayed count is 0 or below `min_examples`."""
        ok = (self.loss_weight > 0) & (self.loss_weight >= min_examples)
        return np.divide(self.loss_sum, self.loss_weight, out=np.full(self.loss_sum.shape, np.nan), where=ok)

    def to_json(self) -> str:
        return json.dumps({
            "format": "medclm-curriculum-state", "version": 1, "policy": self.policy,
            "domains": list(self.domains), "step": self.step, "records": _enc(self.records),
            "loss_sum": _enc(self.loss_sum), "loss_weight": _enc(self.loss_weight),
            "policy_state": {k: _enc(v) for k, v in self.policy_state.items()},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CurriculumState":
        d = json.loads(text)
        if d.get("format") != "medclm-curriculum-state" or d.get("version") != 1:
            raise CurriculumError(f"not a version-1 curriculum state: format {d.get('format')!r}, "
                                  f"version {d.get('version')!r}")
        return cls(policy=d["policy"], domains=tuple(d["domains"]), step=int(d["step"]), records=_dec(d["records"]),
                   loss_sum=_dec(d["loss_sum"]), loss_weight=_dec(d["loss_weight"]),
                   policy_state={k: _dec(v) for k, v in d["policy_state"].items()})


def _enc(v):
    if isinstance(v, np.ndarray):
        data = [None if isinstance(x, float) and math.isnan(x) else x for x in v.ravel().tolist()]
        return {"dtype": v.dtype.name, "shape": list(v.shape), "data": data}
    return v.item() if isinstance(v, np.generic) else v


def _dec(v):
    if isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}:
        data = [np.nan if x is None else x for x in v["data"]]
        return np.array(data, dtype=v["dtype"]).reshape(v["shape"])
    return v


def records_from_dataset_info(info: Mapping[str, Any], split: str = "train") -> dict[str, dict[str, int]]:
    """{domain: {stage: records}} of one split of a `dataset_info.json` dict (its `per_split_domain_stage`)."""
    per = info["counts"]["per_split_domain_stage"].get(split)
    if not per:
        raise CurriculumError(f"dataset_info has no records for split {split!r} "
                              f"(splits: {sorted(info['counts']['per_split_domain_stage'])})")
    return {d: {s: int(c.get(s, 0)) for s in STAGES} for d, c in per.items()}


def init(cfg: CurriculumConfig, records: Mapping[str, Mapping[str, int]],
         domains: Sequence[str] | None = None) -> CurriculumState:
    """The state before step 0. `domains` (default: sorted names of `records`) fixes the domain ids; a domain
    listed without records is never sampled."""
    domains = tuple(sorted(records) if domains is None else domains)
    if not domains or len(set(domains)) != len(domains):
        raise CurriculumError(f"need at least one domain, each once; got {list(domains)}")
    missing = sorted(set(records) - set(domains))
    if missing:
        raise CurriculumError(f"domains {missing} have records but are not in the domain list")
    counts = np.array([[int(records.get(d, {}).get(s, 0)) for s in STAGES] for d in domains], np.int64)
    if (counts < 0).any():
        raise CurriculumError("record counts must be >= 0")
    zeros = np.zeros(counts.shape, np.float64)
    state = CurriculumState(cfg.policy, domains, counts, -1, zeros, zeros.copy(),
                            POLICIES[cfg.policy].init(cfg, len(domains)))
    steps = [0] + list(cfg.fixed.boundaries if cfg.policy == "fixed" else [])
    for step in steps:  # refuse now what would stop the pipeline later
        probabilities(cfg, state, step)
    return state


# ------------------------------------------------------------------------------------ update / probabilities


def observe(domain: np.ndarray, stage: np.ndarray, loss: np.ndarray, weight: np.ndarray,
            num_domains: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-(domain, stage) mean loss and count of one batch, the arguments of `update`.

    Args: domain, stage int[B] ids; loss f[B] per-example loss; weight f[B] (0 = padding row, ignored).
    Returns: (mean f64[D, 3], 0 where no example; count f64[D, 3] sum of weights).
    """
    domain, stage = np.asarray(domain, np.int64), np.asarray(stage, np.int64)
    weight = np.asarray(weight, np.float64)
    total = np.zeros((num_domains, len(STAGES)))
    count = np.zeros_like(total)
    np.add.at(total, (domain, stage), np.where(weight > 0, np.asarray(loss, np.float64) * weight, 0.0))
    np.add.at(count, (domain, stage), weight)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), count


def _policy(cfg: CurriculumConfig, state: CurriculumState) -> "Policy":
    if state.policy != cfg.policy:
        raise CurriculumError(f"the curriculum state was written by policy {state.policy!r} but "
                              f"curriculum.policy is {cfg.policy!r}: restore with the same policy or start afresh")
    return POLICIES[cfg.policy]


def update(cfg: CurriculumConfig, state: CurriculumState, step: int, loss: np.ndarray,
           count: np.ndarray) -> CurriculumState:
    """Feeds the losses of training step `step` (mean f[D, 3], count f[D, 3]); returns the new state.

    A trainer that feeds every k steps passes the mean over those k steps' examples and their total count, with
    `step` the last of them; the EMAs decay by `ema_decay ** (step - state.step)`.
    """
    policy = _policy(cfg, state)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise CurriculumError(f"update at step {step!r}: the step must be an integer training step (a float step "
                              "would be truncated, and two updates could land on the same step)")
    step = int(step)
    loss, count = np.asarray(loss, np.float64), np.asarray(count, np.float64)
    shape = state.records.shape
    if loss.shape != shape or count.shape != shape:
        raise CurriculumError(f"update at step {step}: loss {loss.shape} and count {count.shape} must be {shape} "
                              "(domains x stages)")
    if step <= state.step:
        raise CurriculumError(f"update at step {step} after step {state.step}: steps must increase (was a batch "
                              "fed twice, or the state restored from a later checkpoint?)")
    seen = count > 0
    if (count < 0).any() or not np.isfinite(loss[seen]).all():
        bad = [(state.domains[d], STAGES[s]) for d, s in zip(*np.nonzero(seen & ~np.isfinite(loss)))]
        raise CurriculumError(f"update at step {step}: non-finite loss for {bad} (or a negative count): a NaN "
                              "would poison the loss EMAs for good")
    decay = cfg.ema_decay ** (step - state.step) if state.step >= 0 else 1.0
    fed = dataclasses.replace(state, step=step,
                              loss_sum=decay * state.loss_sum + count * np.where(seen, loss, 0.0),
                              loss_weight=decay * state.loss_weight + count)
    return dataclasses.replace(fed, policy_state=policy.update(cfg, fed, step, loss, count))


@dataclasses.dataclass(frozen=True, eq=False)
class Probabilities:
    """What the pipeline samples from at one step: `stage` f64[D, 3] rows sum to 1 (0 for a domain not sampled
    now), `domain` f64[D] sums to 1."""

    domains: tuple[str, ...]
    stage: np.ndarray
    domain: np.ndarray

    def joint(self) -> np.ndarray:
        """f64[D, 3] probability of drawing (domain, stage)."""
        return self.domain[:, None] * self.stage


def probabilities(cfg: CurriculumConfig, state: CurriculumState, step: int) -> Probabilities:
    """The sampling probabilities for the batch of training step `step` (the state may lag it)."""
    mix = np.asarray(_policy(cfg, state).mix(cfg, state, int(step)), np.float64)
    p = np.where(state.records > 0, mix, 0.0)
    total = p.sum(axis=1)
    live = total > 0
    stage = np.divide(p, total[:, None], out=np.zeros_like(p), where=live[:, None])
    size = np.maximum(state.records[:, EASY], state.records[:, MEDIUM]) + state.records[:, HARD]
    weight = np.where(live, size.astype(np.float64) ** cfg.domain_temperature, 0.0)
    if weight.sum() <= 0:
        raise CurriculumError(f"policy {cfg.policy!r} samples no domain at step {step}: its stage mix needs "
                              f"stages no domain has records for (records per domain and stage "
                              f"{dict(zip(state.domains, state.records.tolist()))}); choose another policy or "
                              "rebuild the data with both pools")
    return Probabilities(state.domains, stage, weight / weight.sum())


def _inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index k with cdf[k-1] <= u * total < cdf[k]: zero-probability entries are never chosen."""
    cdf = np.cumsum(p, axis=-1)
    return (np.asarray(u)[..., None] * cdf[..., -1:] >= cdf).sum(axis=-1).astype(np.int32)


def sample_stage(stage_probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Stage ids int32[...] from probabilities f[..., 3] and uniforms u f[...] in [0, 1) (inverse CDF).

    To pick Easy vs Medium for a record of pool `easy_medium` already drawn, zero the Hard entry first.
    """
    return _inverse_cdf(np.asarray(stage_probs, np.float64), u)


def draw(probs: Probabilities, seed: int, step: int, n: int, process_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (domain, stage) of each of the `n` examples process `process_index` contributes to step `step`.

    Uses numpy's PCG64 seeded by SeedSequence([seed, step, process_index]) and only `Generator.random`
    (whose stream numpy keeps stable), then inverse CDFs: a pure function of its arguments.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(step), int(process_index)])))
    u = rng.random((n, 2))
    domain = _inverse_cdf(probs.domain, u[:, 0])
    return domain, sample_stage(probs.stage[domain], u[:, 1])


def phases(cfg: CurriculumConfig, state: CurriculumState, step: int) -> np.ndarray:
    """int[D]: the stage each domain has reached (0 easy, 1 medium, 2 hard)."""
    policy = _policy(cfg, state)
    if policy.phase is not None:
        return policy.phase(cfg, state, step)
    mix = np.asarray(policy.mix(cfg, state, step))
    return np.array([max(s for s in range(len(STAGES)) if s == EASY or row[s] >= PHASE_MIN_SHARE) for row in mix])


def summary(cfg: CurriculumConfig, state: CurriculumState, step: int) -> dict[str, Any]:
    """Flat metrics for the JSONL log: overall mix, domains per phase, and per domain its probabilities, phase,
    measured loss EMAs and the policy's own numbers."""
    probs = probabilities(cfg, state, step)
    phase = phases(cfg, state, step)
    overall = probs.domain @ probs.stage
    ema = state.loss_ema(cfg.min_examples)
    out: dict[str, Any] = {"curriculum/updated_step": state.step}
    out.update({f"curriculum/mix/{s}": float(overall[i]) for i, s in enumerate(STAGES)})
    out.update({f"curriculum/domains_in/{s}": int((phase == i).sum()) for i, s in enumerate(STAGES)})
    for d, name in enumerate(state.domains):
        key = f"curriculum/domain/{name}"
        out[f"{key}/phase"] = STAGES[phase[d]]
        out[f"{key}/share"] = float(probs.domain[d])
        for i, s in enumerate(STAGES):
            out[f"{key}/p_{s}"] = float(probs.stage[d, i])
            if np.isfinite(ema[d, i]):
                out[f"{key}/loss_ema_{s}"] = float(ema[d, i])
    if POLICIES[cfg.policy].summary is not None:
        out.update(POLICIES[cfg.policy].summary(cfg, state, step))
    return out


# ------------------------------------------------------------------------------------------------- policies


class Policy(NamedTuple):
    """init(cfg, D) -> policy_state; update(cfg, state with the new EMAs, step, loss, count) -> policy_state;
    mix(cfg, state, step) -> f[D, 3] shares before availability; phase / summary optional."""

    init: Callable[[CurriculumConfig, int], dict]
    update: Callable[..., dict]
    mix: Callable[[CurriculumConfig, CurriculumState, int], np.ndarray]
    phase: Callable[[CurriculumConfig, CurriculumState, int], np.ndarray] | None = None
    summary: Callable[[CurriculumConfig, CurriculumState, int], dict] | None = None


POLICIES: dict[str, Policy] = {}


# Stateless policies: one (easy, medium, hard) mix per step, the same for every domain. Module-level functions, not
# lambdas built at import, so that everything they compute runs when the scheduler is called.


def _no_state(cfg: CurriculumConfig, n: int) -> dict:
    return {}


def _same_state(cfg: CurriculumConfig, state: CurriculumState, *_) -> dict:
    return dict(state.policy_state)


def _tiled(shares: Callable[[CurriculumConfig, int], Sequence[float]], cfg: CurriculumConfig,
           state: CurriculumState, step: int) -> np.ndarray:
    return np.tile(shares(cfg, step), (len(state.domains), 1))


def _uniform_shares(cfg: CurriculumConfig, step: int) -> tuple[float, float, float]:
    return (1 / 3, 1 / 3, 1 / 3)


def _hard_only_shares(cfg: CurriculumConfig, step: int) -> tuple[float, float, float]:
    return (0.0, 0.0, 1.0)


def _fixed_shares(cfg: CurriculumConfig, step: int) -> tuple[float, float, float]:
    return cfg.fixed.mixes[bisect.bisect_right(cfg.fixed.boundaries, step)]


POLICIES["uniform"] = Policy(_no_state, _same_state, functools.partial(_tiled, _uniform_shares))
POLICIES["hard_only"] = Policy(_no_state, _same_state, functools.partial(_tiled, _hard_only_shares))
POLICIES["fixed"] = Policy(_no_state, _same_state, functools.partial(_tiled, _fixed_shares))


# adaptive ----------------------------------------------------------------------------------------------------
# policy_state (arrays over domains): medium_step / hard_step (step entered, -1 not yet), medium_by / hard_by
# (index into ENTRY_REASONS), easy_peak (highest measured Easy EMA), plateau_ref / plateau_ref_step (the frontier
# EMA at the start of the current plateau window), hard_budget.


def _adaptive_init(cfg: CurriculumConfig, n: int) -> dict:
    never = np.full(n, -1, np.int64)
    return {"medium_step": never, "medium_by": np.zeros(n, np.int64), "hard_step": never.copy(),
            "hard_by": np.zeros(n, np.int64), "easy_peak": np.full(n, np.nan), "plateau_ref": np.full(n, np.nan),
            "plateau_ref_step": np.zeros(n, np.int64), "hard_budget": np.zeros(n)}


def _plateaued(a: AdaptiveConfig, ps: dict, d: int, value: float, step: int) -> bool:
    """True when a plateau window ends with a relative gain <= plateau_tol (a rise counts: no improvement)."""
    if step - ps["plateau_ref_step"][d] < a.plateau_window:
        return False
    ref = ps["plateau_ref"][d]
    ps["plateau_ref"][d], ps["plateau_ref_step"][d] = value, step
    return bool(np.isfinite(ref) and np.isfinite(value) and ref - value <= a.plateau_tol * ref)


def _adaptive_update(cfg: CurriculumConfig, state: CurriculumState, step: int, loss, count) -> dict:
    a = cfg.adaptive
    ps = {k: np.array(v, copy=True) for k, v in state.policy_state.items()}
    ema = state.loss_ema(cfg.min_examples)
    ps["easy_peak"] = np.fmax(ps["easy_peak"], ema[:, EASY])
    for d in range(len(state.domains)):
        m_easy, m_med, m_hard = ema[d]
        if ps["medium_step"][d] < 0:
            caught_up = (step >= a.min_easy_steps and np.isfinite(m_easy) and np.isfinite(m_med)
                         and m_med <= (1.0 + a.medium_gap_tol) * m_easy
                         and m_easy <= (1.0 - a.easy_min_drop) * ps["easy_peak"][d])
            if caught_up or step >= a.max_easy_steps:
                ps["medium_step"][d], ps["medium_by"][d] = step, ENTRY_REASONS.index("gap" if caught_up else "dwell")
                ps["plateau_ref"][d], ps["plateau_ref_step"][d] = m_med, step
        elif ps["hard_step"][d] < 0:
            flat = _plateaued(a, ps, d, m_med, step)
            if flat or step - ps["medium_step"][d] >= a.max_medium_steps:
                ps["hard_step"][d], ps["hard_by"][d] = step, ENTRY_REASONS.index("plateau" if flat else "dwell")
                ps["hard_budget"][d] = a.hard_start
                ps["plateau_ref"][d], ps["plateau_ref_step"][d] = m_hard, step
        elif _plateaued(a, ps, d, m_hard, step):
            ps["hard_budget"][d] = min(a.hard_max, ps["hard_budget"][d] + a.hard_step)
    return ps


def _adaptive_mix(cfg: CurriculumConfig, state: CurriculumState, step: int) -> np.ndarray:
    a, ps = cfg.adaptive, state.policy_state
    began = ps["medium_step"] >= 0
    ramp = np.clip((step - ps["medium_step"]) / max(a.medium_ramp_steps, 1), 0.0, 1.0)
    ramp = np.where(a.medium_ramp_steps == 0, 1.0, ramp)
    medium = np.where(began, a.probe + (a.medium_target - a.probe) * ramp, a.probe)
    hard = np.where(ps["hard_step"] >= 0, ps["hard_budget"], 0.0)
    medium = np.where(hard > 0, np.maximum(a.medium_floor, (1.0 - hard) * medium), medium)
    return np.stack([1.0 - hard - medium, medium, hard], axis=1)


def _adaptive_phase(cfg: CurriculumConfig, state: CurriculumState, step: int) -> np.ndarray:
    ps = state.policy_state
    return np.where(ps["hard_step"] >= 0, HARD, np.where(ps["medium_step"] >= 0, MEDIUM, EASY))


def _adaptive_summary(cfg: CurriculumConfig, state: CurriculumState, step: int) -> dict:
    ps, out = state.policy_state, {}
    for d, name in enumerate(state.domains):
        key = f"curriculum/domain/{name}"
        out[f"{key}/hard_budget"] = float(ps["hard_budget"][d])
        out[f"{key}/medium_by"] = ENTRY_REASONS[ps["medium_by"][d]]
        out[f"{key}/hard_by"] = ENTRY_REASONS[ps["hard_by"][d]]
    return out


POLICIES["adaptive"] = Policy(_adaptive_init, _adaptive_update, _adaptive_mix, _adaptive_phase, _adaptive_summary)


# reference ---------------------------------------------------------------------------------------------------
# The authors' rule, reproduced to show its flaw. Their trainer fed one mean loss per (domain, stage) per epoch;
# here an epoch's observations are accumulated (acc_sum / acc_count) and closed when the first observation of a
# later epoch arrives. policy_state: epoch, acc_sum, acc_count, m_easy, m_med, m_global, history (last global
# EMAs), lambda_h.


def _reference_init(cfg: CurriculumConfig, n: int) -> dict:
    r = cfg.reference
    return {"epoch": 0, "acc_sum": np.zeros((n, 3)), "acc_count": np.zeros((n, 3)),
            "m_easy": np.full(n, r.ema_init), "m_med": np.full(n, r.ema_init), "m_global": r.global_init,
            "history": [], "lambda_h": r.hard_init}


def _reference_gap(ps: Mapping[str, Any]) -> np.ndarray:
    m_easy, m_med = ps["m_easy"], ps["m_med"]
    return np.where(m_easy < 1e-8, 0.0, (m_easy - m_med) / (m_easy + 1e-8))


def _reference_close_epoch(r: ReferenceConfig, ps: dict) -> None:
    # Their global loss is the mean of the epoch's per-(domain, stage) means, here over the pairs observed.
    seen = ps["acc_count"] > 0
    mean = np.divide(ps["acc_sum"], ps["acc_count"], out=np.zeros_like(ps["acc_sum"]), where=seen)
    for col, key in ((EASY, "m_easy"), (MEDIUM, "m_med")):
        ps[key] = np.where(seen[:, col], (1 - r.ema_rate) * ps[key] + r.ema_rate * mean[:, col], ps[key])
    ps["m_global"] = (1 - r.ema_rate) * ps["m_global"] + r.ema_rate * float(mean[seen].mean())
    hist = (list(ps["history"]) + [ps["m_global"]])[-max(r.plateau_epochs, 2):]
    ps["history"] = hist
    recent = hist[-r.plateau_epochs:]
    plateau = len(hist) >= r.plateau_epochs and all(abs(b - a) <= r.plateau_eps for a, b in zip(recent, recent[1:]))
    if plateau and float(np.median(_reference_gap(ps))) >= r.hard_gap:
        ps["lambda_h"] = min(ps["lambda_h"] + r.hard_up, r.hard_max)
    elif len(hist) >= 2 and hist[-1] - hist[-2] >= r.rise:
        ps["lambda_h"] = max(0.0, (1 - r.hard_down) * ps["lambda_h"])


def _reference_update(cfg: CurriculumConfig, state: CurriculumState, step: int, loss, count) -> dict:
    ps = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in state.policy_state.items()}
    epoch = epoch_of(step, cfg.steps_per_epoch)
    if epoch > ps["epoch"]:
        if ps["acc_count"].sum() > 0:
            _reference_close_epoch(cfg.reference, ps)
        ps["epoch"], ps["acc_sum"], ps["acc_count"] = epoch, np.zeros_like(ps["acc_sum"]), np.zeros_like(count)
    ps["acc_sum"] = ps["acc_sum"] + count * np.where(count > 0, loss, 0.0)
    ps["acc_count"] = ps["acc_count"] + count
    ps["m_global"], ps["lambda_h"] = float(ps["m_global"]), float(ps["lambda_h"])
    return ps


def _reference_mix(cfg: CurriculumConfig, state: CurriculumState, step: int) -> np.ndarray:
    r, ps = cfg.reference, state.policy_state
    n = len(state.domains)
    epoch = epoch_of(step, cfg.steps_per_epoch)
    if epoch < r.warmup_epochs:
        return np.tile([1.0, 0.0, 0.0], (n, 1))
    beta = 0.0 if epoch <= r.warmup_epochs else min(1.0, (epoch - r.warmup_epochs) / r.ramp_epochs)
    p_med = beta / (1.0 + np.exp(-(_reference_gap(ps) - r.gap_center) / r.gap_temperature))
    lam = ps["lambda_h"] if epoch >= r.hard_epoch else 0.0
    return np.stack([(1 - lam) * (1 - p_med), (1 - lam) * p_med, np.full(n, lam)], axis=1)


def _reference_summary(cfg: CurriculumConfig, state: CurriculumState, step: int) -> dict:
    ps = state.policy_state
    out = {"curriculum/reference/epoch": epoch_of(step, cfg.steps_per_epoch),
           "curriculum/reference/lambda_h": float(ps["lambda_h"]),
           "curriculum/reference/m_global": float(ps["m_global"])}
    out.update({f"curriculum/domain/{name}/gap": float(g) for name, g in zip(state.domains, _reference_gap(ps))})
    return out


POLICIES["reference"] = Policy(_reference_init, _reference_update, _reference_mix, None, _reference_summary)
