"""What a backend needs to know about one image to ask answerable questions: its lesions as phrases.

`Scene.from_input(SynthInput)` turns the seed rationales of an image into plain phrases (class, organ, region)
once, and answers the questions every backend must settle before asking anything:
  * which classes the image holds (answers that "cover every lesion"),
  * which lesions lie inside a named region (so "What is the finding in the right lung?" lists all of them),
  * which vocabulary classes are safely absent (closed "no" questions), where "absent" excludes any class whose
    words overlap a present class ("mass" is not absent from an image with a "liver mass"),
  * what the image is called ("chest radiograph", "CT slice").
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

from data_gen.rationale import (class_phrase, join_words, organ_phrase, region_phrase, size_phrase,
                                with_article)
from data_gen.types import NO_FINDING, SeedRationale, SynthInput
from data_gen.synth.phrasebook import IMAGE_NOUNS
from medclm_jax.records.boxes import format_box

_MODALITY_KEYS = {"xray": "xray", "x-ray": "xray", "cr": "xray", "dx": "xray", "radiograph": "xray",
                  "ct": "ct", "mri": "mri", "mr": "mri"}
_CHEST_WORDS = ("lung", "heart", "pleura", "rib", "clavicle", "mediastin", "thora", "chest", "diaphragm",
                "trachea", "cardi", "hilum", "hilar", "costophrenic", "pulmonary", "pneumo", "aortic")


def modality_key(modality: str) -> str:
    """'xray' | 'ct' | 'mri' | 'generic' for the phrasebook."""
    return _MODALITY_KEYS.get((modality or "").strip().lower(), "generic")


def _words(phrase: str) -> frozenset[str]:
    return frozenset(w for w in re.split(r"[^a-z0-9]+", phrase.lower()) if w)


def classes_overlap(a: str, b: str) -> bool:
    """True when one class name could describe the other: 'mass' vs 'liver mass', 'nodule' vs 'nodule/mass'."""
    alts_a = [_words(x) for x in a.split("/") if x.strip()] + [_words(a)]
    alts_b = [_words(x) for x in b.split("/") if x.strip()] + [_words(b)]
    return any(x and y and (x <= y or y <= x) for x in alts_a for y in alts_b)


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One lesion as phrases: class ("nodule"), organ ("right lung" or ""), region ("right upper zone of the
    right lung" or ""), size (", measuring about 12 x 10 mm" or ""), location ("right upper zone" or "")."""

    cls: str
    organ: str
    region: str
    size: str = ""
    location: str = ""  # the linker's location as given ("right upper zone")
    near: str = ""  # nearest-organ fallback: the organ the lesion lies next to (organ and region are then "")

    @classmethod
    def from_seed(cls, seed: SeedRationale) -> "Lesion":
        size = f", {size_phrase(seed.size_mm)}" if size_phrase(seed.size_mm) else ""
        location = " ".join(seed.location.lower().split())
        phrase = class_phrase(seed.lesion_class)
        if location.startswith("near "):  # not *in* the organ: never named as its host
            near = region_phrase(seed.organ, location[len("near "):])
            return cls(cls=phrase, organ="", region="", size=size, location=location, near=near)
        if not organ_phrase(seed.organ):  # unknown organ: a side alone is no region to ask about
            return cls(cls=phrase, organ="", region="", size=size, location=location)
        return cls(cls=phrase, organ=organ_phrase(seed.organ), region=region_phrase(seed.organ, location),
                   size=size, location=location)

    def within(self, region: str) -> bool:
        """Whether this lesion lies in `region` (a region or organ phrase), using the part-of wording
        "X of the <region>" that `region_phrase` produces."""
        if not region:
            return False
        return any(p == region or p.endswith(f" of the {region}") for p in (self.region, self.organ) if p)


@dataclasses.dataclass(frozen=True)
class Scene:
    """One (image, target lesion) as phrases. `target` is None for a negative ("No finding") image."""

    modality: str  # phrasebook key
    target: Optional[Lesion]
    lesions: tuple[Lesion, ...]  # all lesions of the image, the target first
    absent: tuple[str, ...]  # vocabulary classes that do not overlap any class of the image
    organs_examined: tuple[str, ...]  # negatives: structures named by the negative seed
    box: str  # canonical box text of the target ("" for negatives)
    chest: bool

    @property
    def negative(self) -> bool:
        return self.target is None

    @property
    def classes(self) -> list[str]:
        """Distinct classes of the image, the target's first."""
        return list(dict.fromkeys(les.cls for les in self.lesions))

    def covered(self, region: str) -> list[Lesion]:
        return [les for les in self.lesions if les.within(region)]

    def of_class(self, cls: str) -> list[Lesion]:
        return [les for les in self.lesions if les.cls == cls]

    def image_nouns(self) -> list[str]:
        key = "xray_chest" if self.modality == "xray" and self.chest else self.modality
        return IMAGE_NOUNS[key]

    @classmethod
    def from_input(cls, inp: SynthInput) -> "Scene":
        seed = inp.seed
        negative = seed.lesion_class.strip().lower() == NO_FINDING or seed.box_norm is None
        seeds = [s for s in inp.image_lesions if s.lesion_class.strip().lower() != NO_FINDING]
        target = None if negative else Lesion.from_seed(seed)
        others = [Lesion.from_seed(s) for s in seeds if s is not seed and s != seed]
        lesions = tuple(([target] if target else []) + others)
        present = list(dict.fromkeys(les.cls for les in lesions))
        absent = []
        for c in inp.class_vocab:
            phrase = class_phrase(c)
            if not phrase or phrase == NO_FINDING or phrase in absent:
                continue
            if not any(classes_overlap(phrase, p) for p in present):
                absent.append(phrase)
        organs = tuple(getattr(seed, "organs_examined", ()) or ())
        text = " ".join([seed.lesion_class] + [f"{les.cls} {les.region} {les.near}" for les in lesions]
                        + list(organs))
        chest = any(w in text.lower() for w in _CHEST_WORDS)
        return cls(modality=modality_key(seed.modality), target=target, lesions=lesions, absent=tuple(absent),
                   organs_examined=organs, box="" if negative else format_box(seed.box_norm), chest=chest)


def answer_classes(lesions: Sequence[Lesion]) -> str:
    """Distinct classes, in order, joined: 'nodule and pleural effusion'."""
    return join_words(list(dict.fromkeys(les.cls for les in lesions)))


def classes_with_articles(answer_classes_: Sequence[str]) -> str:
    return join_words([with_article(c) for c in answer_classes_])
