"""The template backend (the default): deterministic Easy/Medium/Hard question, reasoning and answer.

Every random choice comes from `random.Random` seeded by a hash of (synth.seed, SynthInput.key, stage), so the
same record always gets the same wording on any machine and in any worker order, while different records get
different paraphrases. Each stage draws a question *kind* first, then a wording from `phrasebook`:

  Easy    (box drawn)   class | location | closed (yes / absent class -> no)      CoT cites the box
  Medium  (no box)      class about a named region | class of the whole image | location or organ of a named
                        class | closed about a named region                       CoT still cites the box
  Hard    (no box)      class of the whole image | organ of a named class | closed | any abnormality   no CoT

Answerability on images with several lesions: a question either names the class/region it asks about and its
answer covers every lesion of that class/region, or it asks about the whole image and its answer lists every
class ("nodule and pleural effusion"). Negative images get "no" questions and a CoT without a box.
"""

from __future__ import annotations

import collections
import hashlib
import random
import threading
from typing import Iterable, Optional, Sequence

from data_gen.rationale import join_words, with_article
from data_gen.synth import phrasebook as pb
from data_gen.synth.scene import Lesion, Scene, answer_classes, classes_with_articles
from data_gen.synth.settings import SynthSettings
from data_gen.types import CurriculumQA, QAView, SynthInput

STAGES = ("easy", "medium", "hard")
_MAX_OTHERS_IN_COT = 3


def stable_rng(seed: int, key: str, stage: str) -> random.Random:
    """A Random seeded by sha256(seed, key, stage): independent of PYTHONHASHSEED, process and order."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{key}\x1f{stage}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def bank(stage: str, kind: str, modality: str) -> list[str]:
    """The question wordings of one (stage, kind) as a modality sees them (shared + its own)."""
    entry = pb.QUESTIONS[(stage, kind)]
    return list(entry["all"]) + list(entry.get(modality, []))


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _modality_pick(rng: random.Random, entry: dict, modality: str) -> str:
    return _pick(rng, list(entry["all"]) + list(entry.get(modality, [])))


def _choose_kind(rng: random.Random, weighted: Sequence[tuple[str, float, bool]]) -> str:
    """Weighted choice among the kinds whose condition holds (the first is the fallback)."""
    allowed = [(k, w) for k, w, ok in weighted if ok and w > 0]
    if not allowed:
        return weighted[0][0]
    r = rng.random() * sum(w for _, w in allowed)
    for k, w in allowed:
        r -= w
        if r < 0:
            return k
    return allowed[-1][0]


class _Plan:
    """A chosen question: its text, answer and what the CoT's conclusion needs."""

    def __init__(self, kind: str, question: str, answer: str, closed: bool = False, absent: str = "",
                 covered: Sequence[Lesion] = (), conclusion: Optional[str] = None):
        self.kind, self.question, self.answer, self.closed = kind, question, answer, closed
        self.absent, self.covered = absent, list(covered)
        self.conclusion = conclusion or kind
        # the classes an open class answer lists (for "a nodule and a pleural effusion" in the conclusion)
        self.classes = list(dict.fromkeys(les.cls for les in covered))


def _fill(template: str, **kw: str) -> str:
    text = template.format(**kw)
    return text[:1].upper() + text[1:]


def _be(noun_phrase: str) -> str:
    """'is' or 'are' for an anatomical noun phrase ('ribs are', 'vertebrae are', 'pancreas is', 'pelvis is')."""
    last = noun_phrase.split()[-1] if noun_phrase.split() else ""
    plural = last.endswith("ae") or (last.endswith("s") and not last.endswith(("ss", "us", "is", "as", "os")))
    return "are" if plural else "is"


def _region_choice(rng: random.Random, target: Lesion) -> str:
    """The place a Medium question names: the host organ or the finer region (when they differ)."""
    options = list(dict.fromkeys(p for p in (target.region, target.organ) if p))
    return _pick(rng, options) if options else ""


# ---- positive images -------------------------------------------------------------------------------------------
def _plan_positive(stage: str, scene: Scene, rng: random.Random, img: str) -> _Plan:
    t = scene.target
    assert t is not None
    mod = scene.modality
    has_absent = bool(scene.absent)
    region = _region_choice(rng, t)
    same_class = scene.of_class(t.cls)
    class_regions_known = all(les.region for les in same_class)
    class_organs_known = all(les.organ for les in same_class)
    if stage == "easy":
        kind = _choose_kind(rng, [("class", 0.45, True), ("location", 0.15, bool(t.region)),
                                  ("closed_yes", 0.2, True), ("closed_no", 0.2, has_absent)])
    elif stage == "medium":
        kind = _choose_kind(rng, [("class", 0.35, bool(region)), ("class_image", 0.15, True),
                                  ("location", 0.1, class_regions_known), ("organ", 0.1, class_organs_known),
                                  ("closed_yes", 0.1, True), ("closed_no", 0.2, has_absent)])
    else:
        kind = _choose_kind(rng, [("class", 0.35, True), ("organ", 0.15, class_organs_known),
                                  ("closed_yes", 0.2, True), ("closed_no", 0.2, has_absent), ("any", 0.1, True)])
    absent = _pick(rng, scene.absent) if kind == "closed_no" else ""
    fields = dict(img=img, cls=t.cls, a_cls=with_article(t.cls), region=region, organ=t.organ,
                  abs_a=with_article(absent) if absent else "")
    if kind in ("closed_yes", "closed_no"):
        if stage == "medium" and region:
            q_bank = bank("medium", "closed", mod)
        else:
            q_bank = bank("hard" if stage == "medium" else stage, "closed", mod)
        if kind == "closed_no":
            fields["a_cls"] = fields["abs_a"]
        question = _fill(_pick(rng, q_bank), **fields)
        yes = kind == "closed_yes"
        return _Plan(kind, question, "yes" if yes else "no", closed=True, absent=absent, covered=[t],
                     conclusion="yes" if yes else "no")
    if kind == "any":
        return _Plan(kind, _fill(_pick(rng, bank(stage, "any", mod)), **fields), "yes", closed=True,
                     covered=scene.lesions, conclusion="yes")
    if stage == "easy":  # the box names the lesion: the answer is the target alone
        q = _fill(_pick(rng, bank("easy", kind, mod)), **fields)
        return _Plan(kind, q, t.cls if kind == "class" else t.region, covered=[t])
    if kind == "class" and stage == "medium":
        covered = scene.covered(region)
        return _Plan(kind, _fill(_pick(rng, bank("medium", "class", mod)), **fields), answer_classes(covered),
                     covered=covered)
    if kind in ("class", "class_image"):  # whole image: every class
        q_kind = "class_image" if stage == "medium" else "class"
        return _Plan(q_kind, _fill(_pick(rng, bank(stage, q_kind, mod)), **fields),
                     answer_classes(scene.lesions), covered=scene.lesions, conclusion="class_image")
    places = [les.region if kind == "location" else les.organ for les in same_class]
    return _Plan(kind, _fill(_pick(rng, bank(stage, kind, mod)), **fields),
                 join_words(list(dict.fromkeys(places))), covered=same_class)


def _positive_cot(stage: str, scene: Scene, plan: _Plan, rng: random.Random, img: str) -> str:
    """modality -> anatomy -> location citing the box -> finding -> (other covered lesions) -> answer."""
    t = scene.target
    assert t is not None
    mod = scene.modality
    steps = [_fill(_modality_pick(rng, pb.COT_MODALITY, mod), img_a=with_article(img))]
    if t.organ:
        steps.append(_fill(_modality_pick(rng, pb.COT_ANATOMY, mod), organ=t.organ, be=_be(t.organ)))
    elif t.near:
        steps.append(_fill(_pick(rng, pb.COT_ANATOMY_NEAR), near=t.near))
    else:
        steps.append(_modality_pick(rng, pb.COT_ANATOMY_UNKNOWN, mod))
    loc_bank = pb.COT_LOCATION if t.region else pb.COT_LOCATION_UNKNOWN
    steps.append(_fill(_pick(rng, loc_bank[stage]), box=scene.box, region=t.region))
    steps.append(_fill(_pick(rng, pb.COT_FINDING), a_cls=with_article(t.cls), size=t.size))
    others = [les for les in dict.fromkeys(plan.covered) if (les.cls, les.region) != (t.cls, t.region)]
    for les in others[:_MAX_OTHERS_IN_COT]:
        other_bank = pb.COT_OTHER if les.region else pb.COT_OTHER_UNKNOWN
        steps.append(_fill(_pick(rng, other_bank), a_cls=with_article(les.cls), region=les.region))
    answer_np = plan.answer
    if plan.conclusion in ("class", "class_image"):
        answer_np = classes_with_articles(plan.classes)
    steps.append(_fill(_pick(rng, pb.COT_CONCLUSION[plan.conclusion]), answer=answer_np,
                       a_cls=with_article(t.cls), abs_a=with_article(plan.absent) if plan.absent else ""))
    return " ".join(steps)


# ---- negative images -------------------------------------------------------------------------------------------
def _plan_negative(stage: str, scene: Scene, rng: random.Random, img: str) -> _Plan:
    mod = scene.modality
    has_absent = bool(scene.absent)
    organ = _pick(rng, scene.organs_examined) if scene.organs_examined else ""
    kind = _choose_kind(rng, [("any", 0.5, True), ("closed", 0.5, has_absent)])
    absent = _pick(rng, scene.absent) if kind == "closed" else ""
    fields = dict(img=img, region=organ, a_cls=with_article(absent) if absent else "")
    if stage == "medium" and organ:  # Medium names a structure; Easy/Hard ask about the whole image
        q_bank = bank("medium", kind, mod)
    elif kind == "any":
        q_bank = bank("easy" if stage == "easy" else "hard", "any", mod)
    else:
        q_bank = bank("hard", "closed", mod)
    return _Plan(kind, _fill(_pick(rng, q_bank), **fields), "no", closed=True, absent=absent)


def _negative_cot(scene: Scene, plan: _Plan, rng: random.Random, img: str) -> str:
    """modality -> anatomy (the examined structures) -> no focal lesion (no box) -> answer."""
    steps = [_fill(_modality_pick(rng, pb.COT_MODALITY, scene.modality), img_a=with_article(img))]
    if scene.organs_examined:
        steps.append(_fill(_pick(rng, pb.COT_NEGATIVE_ANATOMY), organs=join_words(list(scene.organs_examined))))
    else:
        steps.append(_pick(rng, pb.COT_NEGATIVE_ANATOMY_NONE))
    steps.append(_pick(rng, pb.COT_NEGATIVE_FINDING))
    steps.append(_fill(_pick(rng, pb.COT_NEGATIVE_CONCLUSION[plan.kind]),
                       abs_a=with_article(plan.absent) if plan.absent else ""))
    return " ".join(steps)


# ---- the backend -----------------------------------------------------------------------------------------------
def synthesize_views(inp: SynthInput, seed: int = 0) -> CurriculumQA:
    """The pure function behind TemplateSynthesizer: SynthInput -> the three views (backend 'template')."""
    scene = Scene.from_input(inp)
    views = {}
    for stage in STAGES:
        rng = stable_rng(seed, inp.key, stage)
        img = _pick(rng, scene.image_nouns())
        if scene.negative:
            plan = _plan_negative(stage, scene, rng, img)
            cot = _negative_cot(scene, plan, rng, img) if stage != "hard" else ""
        else:
            plan = _plan_positive(stage, scene, rng, img)
            cot = _positive_cot(stage, scene, plan, rng, img) if stage != "hard" else ""
        views[stage] = QAView(question=plan.question, answer=plan.answer, cot=cot,
                              answer_type="closed" if plan.closed else "open")
    return CurriculumQA(easy=views["easy"], medium=views["medium"], hard=views["hard"], backend="template")


class TemplateSynthesizer:
    """`QASynthesizer` over `synthesize_views`; thread-safe, picklable, with a count of records written."""

    name = "template"

    def __init__(self, settings: SynthSettings | None = None):
        self.settings = settings or SynthSettings()
        self.stats: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def synthesize(self, inp: SynthInput) -> CurriculumQA:
        qa = synthesize_views(inp, self.settings.seed)
        with self._lock:
            self.stats["template"] += 1
        return qa

    def synthesize_many(self, inputs: Iterable[SynthInput]) -> list[CurriculumQA]:
        return [self.synthesize(inp) for inp in inputs]

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
