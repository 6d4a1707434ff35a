"""Seed rationales: the one structured sentence per lesion that every CoT-QA backend starts from.

The paper turns each (lesion class, host organ, box) triplet into a short factual sentence ("There is a nodule
in the right lung.") that a VLM or our templates then expand into question, reasoning and answer. We keep the
sentence *and* the fields behind it (`SeedRationale`), so the template backend never has to parse text.

Wording rules (shared with `data_gen.synth`, which uses `region_phrase` and `organ_phrase` to name places):
  * organ names are the display names of `data_gen.segment` ("right lung", "right upper zone of lung", "liver").
    "X of lung" becomes "X of the right lung" when X names the side (paired organs), else "X of the liver".
  * the location (e.g. "right upper zone") and the organ are merged without repeating words: location
    "right upper zone" + organ "right lung" -> "right upper zone of the right lung".
  * organ "unknown" (nothing linked) gives a sentence without an organ rather than a wrong one (a side when the
    linker gave one: "on the right side"); the nearest-organ fallback reads "near the liver".
  * size, when the linker knew the pixel spacing, is `width x height` of the box in whole millimetres.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

from data_gen.errors import InputError
from data_gen.types import NO_FINDING, Box, LinkResult, SeedRationale

UNKNOWN_ORGAN = "unknown"
# Paired organs: "right upper zone of lung" is in the *right* lung, so the side is repeated before the organ.
_PAIRED = ("lung", "kidney", "adrenal gland", "breast", "hemithorax", "ovary")
# Structures worth naming in a negative sentence, in the order a reader would list them.
_KEY_STRUCTURES = (
    "right lung", "left lung", "lung", "lungs", "heart", "mediastinum", "liver", "spleen", "pancreas", "stomach",
    "right kidney", "left kidney", "kidney", "aorta", "brain", "urinary bladder", "bladder",
)
_MAX_NEGATIVE_STRUCTURES = 4


@dataclasses.dataclass(frozen=True)
class NegativeRationale(SeedRationale):
    """A seed for a "No finding" image: `SeedRationale` plus the structures that were examined.

    `organs_examined` holds display names (at most a handful of key structures) so a backend can ask
    "Is there a nodule in the right lung?" -> "no". `organ` is "none" and `location` is empty for negatives.
    """

    organs_examined: tuple[str, ...] = ()


def class_phrase(lesion_class: str) -> str:
    """The class as it reads in a sentence: lowercase unless it is an acronym ("ILD"), "/" kept."""
    text = " ".join(lesion_class.strip().split())
    return text if text.isupper() and len(text) > 1 else text.lower()


def with_article(noun_phrase: str) -> str:
    """'nodule' -> 'a nodule', 'effusion' -> 'an effusion', 'ILD' -> 'an ILD'."""
    first = noun_phrase[:1]
    acronym_vowel_sound = noun_phrase.split(" ")[0].isupper() and first in "AEFHILMNORSX"
    vowel = first.lower() in "aeiou" or acronym_vowel_sound
    return ("an " if vowel else "a ") + noun_phrase


def organ_phrase(organ: str) -> str:
    """A display organ name as a noun phrase without article: 'right upper zone of lung' ->
    'right upper zone of the right lung'; 'left lobe of liver' -> 'left lobe of the liver'; '' for unknown."""
    organ = " ".join(organ.strip().lower().split())
    if not organ or organ in (UNKNOWN_ORGAN, "none"):
        return ""
    m = re.fullmatch(r"(.+?) of (?:the )?(.+)", organ)
    if not m:
        return organ
    part, whole = m.groups()
    side = re.match(r"(right|left)\b", part)
    if side and whole in _PAIRED:
        whole = f"{side.group(1)} {whole}"
    return f"{part} of the {whole}"


def region_phrase(organ: str, location: str = "") -> str:
    """Where a lesion is, as a noun phrase without article, or '' when nothing is known.

    Merges location and organ without repeating words (see the module docstring).
    """
    organ_np = organ_phrase(organ)
    loc = " ".join(location.strip().lower().split())
    if not organ_np:
        return loc
    side = re.fullmatch(r"(.+) \((right|left) side\)", loc)  # the linker's "ribs (right side)"
    if side:
        return f"{side.group(2)} side of the {organ_phrase(side.group(1))}"
    if not loc or loc in organ_np or loc in organ.lower():
        return organ_np
    if organ_np in loc or organ.lower() in loc:
        return organ_phrase(loc) if " of " in loc else loc
    return f"{loc} of the {organ_np}"


def place_phrase(organ: str, location: str = "") -> str:
    """The prepositional phrase of a lesion's place: 'in the right upper zone of the right lung', 'near the
    liver' (the linker's nearest-organ fallback writes location 'near ...'), 'on the right side' (no organ,
    side only), 'in the midline', or '' when nothing is known."""
    loc = " ".join(location.strip().lower().split())
    unknown = organ_phrase(organ) == ""
    if loc.startswith("near "):
        inner = region_phrase(organ, loc[len("near "):])
        return f"near the {inner}" if inner else ""
    if unknown:
        if loc == "midline":
            return "in the midline"
        if loc.endswith(" side"):
            return f"on the {loc}"
    where = region_phrase(organ, loc)
    return f"in the {where}" if where else ""


def _location_from_parts(link: LinkResult) -> str:
    """A location from laterality + zone when the linker gave no text (e.g. 'right upper part')."""
    organ = link.organ.lower()
    words = []
    if link.laterality and link.laterality not in organ:
        words.append(link.laterality)
    if link.zone:
        words.append(link.zone)
    return " ".join(words + ["part"]) if link.zone else " ".join(words)


def _validate_box(box_norm: Sequence[float]) -> Box:
    try:
        values = [float(v) for v in box_norm]
    except (TypeError, ValueError) as e:
        raise InputError(f"box {box_norm!r} is not four numbers", field="lesion/box", reason="bad_box") from e
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"box {box_norm!r} must be 4 finite numbers (normalized x1, y1, x2, y2)",
                         field="lesion/box", reason="bad_box")
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in values)
    if not (x2 > x1 and y2 > y1):
        raise InputError(f"box {box_norm!r} has no area inside the image after clipping to [0, 1]",
                         field="lesion/box", reason="bad_box")
    return (x1, y1, x2, y2)


def size_phrase(size_mm: Optional[tuple[float, float]]) -> str:
    """'measuring about 12 x 10 mm' from (width, height) in mm; '' when unknown or not finite."""
    if not size_mm or not all(math.isfinite(float(v)) and v > 0 for v in size_mm):
        return ""
    w, h = (max(1, int(round(float(v)))) for v in size_mm)
    return f"measuring about {w} x {h} mm"


def seed_rationale(lesion_class: str, link: LinkResult, modality: str, box_norm: Sequence[float]) -> SeedRationale:
    """The seed sentence of one lesion, e.g. "There is a nodule in the right upper zone of the right lung,
    measuring about 12 x 10 mm."

    Args:
      lesion_class: canonical class name ("nodule", "pleural effusion"); must not be `NO_FINDING`.
      link: the host organ and location from `data_gen.link.link_lesions` (organ may be "unknown").
      modality: "xray", "ct", "mri", ... (kept as a field; the sentence does not repeat it).
      box_norm: normalized xyxy in [0, 1] (clipped here; a box without area raises InputError).

    Returns:
      A SeedRationale with the sentence and the fields behind it; `location` is the linker's location or one
      composed from laterality and zone ("right upper part") when the linker gave none.
    """
    if not lesion_class.strip() or lesion_class.strip().lower() == NO_FINDING:
        raise InputError(f"a lesion seed needs a class, got {lesion_class!r} (use negative_rationale for "
                         f"'{NO_FINDING}' images)", field="lesion/class", reason="bad_class")
    box = _validate_box(box_norm)
    location = " ".join(link.location.split()) or (_location_from_parts(link) if link.organ != UNKNOWN_ORGAN else "")
    place = place_phrase(link.organ, location)
    text = f"There is {with_article(class_phrase(lesion_class))}"
    if place:
        text += f" {place}"
    size = size_phrase(link.size_mm)
    text += (f", {size}" if size else "")
    text += "; its host organ could not be determined." if organ_phrase(link.organ) == "" else "."
    return SeedRationale(
        text=text, lesion_class=lesion_class, organ=link.organ or UNKNOWN_ORGAN, location=location,
        modality=modality, box_norm=box, laterality=link.laterality, zone=link.zone,
        size_mm=tuple(float(v) for v in link.size_mm) if link.size_mm else None,
    )


def examined_structures(organs_present: Sequence[str]) -> tuple[str, ...]:
    """The few key structures to name in a negative sentence (a CXAS image has up to 159 masks).

    Key organs (lungs, heart, liver, ...) in a fixed reading order; when none is present, the first few
    whole-organ names (names without "of", i.e. not a lobe or zone of something). Duplicates removed.
    """
    present = list(dict.fromkeys(" ".join(o.lower().split()) for o in organs_present if o and o.strip()))
    present_set = set(present)
    key = [s for s in _KEY_STRUCTURES if s in present_set]
    if "right lung" in key or "left lung" in key:
        key = [s for s in key if s not in ("lung", "lungs")]
    if not key:
        key = [o for o in present if " of " not in o and o not in (UNKNOWN_ORGAN, "none", "background")]
    return tuple(key[:_MAX_NEGATIVE_STRUCTURES])


def join_words(items: Sequence[str], conjunction: str = "and") -> str:
    """['a'] -> 'a'; ['a', 'b'] -> 'a and b'; ['a', 'b', 'c'] -> 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def negative_rationale(modality: str, organs_present: Sequence[str]) -> NegativeRationale:
    """The seed of a "No finding" image: "No focal lesion is seen in the right lung, left lung or heart."

    Args:
      modality: "xray", "ct", ...
      organs_present: display names of the organs whose masks are non-empty (may be empty or long).

    Returns:
      A NegativeRationale (a SeedRationale) with `lesion_class` NO_FINDING, `organ` "none", no box, no location.
    """
    structures = examined_structures(organs_present)
    if structures:
        text = f"No focal lesion is seen in the {join_words(list(structures), 'or')}."
    else:
        text = "No focal lesion is seen in this image."
    return NegativeRationale(
        text=text, lesion_class=NO_FINDING, organ="none", location="", modality=modality, box_norm=None,
        organs_examined=structures,
    )
