"""Organ names: both segmenters' vocabularies -> one set of display names, with a part-of hierarchy.

TotalSegmentator (CT; v2 task `total`, 117 snake_case classes such as `lung_upper_lobe_left`) and CXAS (chest
radiographs; 159 space-separated PAX-Ray++ classes such as `right upper zone lung`) name the same anatomy
differently. Linking and the rationale need one vocabulary a radiologist reads naturally ("left upper lobe of lung",
"right upper zone of lung", "left kidney", "T12 vertebra") and a part-of hierarchy (zone/lobe -> "right lung" ->
"lungs" -> "body"), so the linker can prefer the most specific structure that holds a lesion.

Everything is data, shipped in `data_gen/segment/data/`:
  * `totalsegmentator_total.tsv`: label id (as numbered in TotalSegmentator's `--ml` multilabel output), class
    name (the per-class file stem), display name. Source: `class_map["total"]` of TotalSegmentator v2
    (`totalsegmentator/map_to_binary.py`).
  * `cxas.tsv`: channel index in CXAS's npy/npz stacks, class name (the per-class PNG stem), display name. Source:
    CXAS `docs/available_classes.md` (the `label_dict` of `paxray_labels.json`).
  * `aliases.tsv`: other spellings (TotalSegmentator v1/MR names, the phantom's and the built-in segmenter's).
  * `anatomy.tsv`: (structure, parent) rows over display names; the first row of a structure is its primary parent.

Lookups compare a *key*: lowercased, `_`/`-` turned into spaces, whitespace collapsed, so `vertebrae_T12`,
`vertebrae T12` and `Vertebrae-T12` all name the T12 vertebra. A name in no table keeps a cleaned-up display name
(the key, with a trailing `left`/`right` moved to the front: `psoas_major_left` -> "left psoas major").
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Optional

ROOT = "body"
UNKNOWN = "unknown"
# Structures that are themselves lesions (TotalSegmentator v2 segments kidney cysts): never a lesion's host organ.
LESION_STRUCTURES = frozenset({"left kidney cyst", "right kidney cyst"})
# Depth given to a structure outside the hierarchy: an organ-level structure directly under the body.
UNLISTED_SPECIFICITY = 2

_SIDE_WORDS = ("right", "left")


def name_key(raw: str) -> str:
    """The lookup key of a raw name: lowercase, `_`/`-` as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[_\-]+", " ", str(raw)).lower().split())


def _read_tsv(filename: str) -> list[list[str]]:
    text = importlib.resources.files("data_gen.segment").joinpath("data", filename).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return rows[1:]  # drop the header row


@functools.lru_cache(maxsize=None)
def totalsegmentator_classes() -> dict[int, str]:
    """TotalSegmentator v2 `total`: `{label id in the --ml NIfTI: class name}` (117 classes, ids 1..117)."""
    return {int(r[0]): r[1] for r in _read_tsv("totalsegmentator_total.tsv")}


@functools.lru_cache(maxsize=None)
def cxas_classes() -> list[str]:
    """CXAS: the 159 class names in stack channel order (index i = channel i of the npy/npz output)."""
    rows = _read_tsv("cxas.tsv")
    assert [int(r[0]) for r in rows] == list(range(len(rows))), "cxas.tsv must list channels 0..K-1 in order"
    return [r[1] for r in rows]


@functools.lru_cache(maxsize=None)
def _display_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for filename in ("totalsegmentator_total.tsv", "cxas.tsv"):
        for _, raw, display in _read_tsv(filename):
            table[name_key(raw)] = display
    for alias, display in _read_tsv("aliases.tsv"):
        table[name_key(alias)] = display
    for name in _hierarchy():  # display names are accepted as raw names too
        table.setdefault(name_key(name), name)
    return table


@functools.lru_cache(maxsize=None)
def _hierarchy() -> dict[str, tuple[str, ...]]:
    """`{display name: (primary parent, other parents...)}`; the root maps to ()."""
    parents: dict[str, list[str]] = {}
    for row in _read_tsv("anatomy.tsv"):
        name, parent = row[0], (row[1] if len(row) > 1 else "")
        parents.setdefault(name, [])
        if parent:
            parents[name].append(parent)
    return {k: tuple(v) for k, v in parents.items()}


def _clean(key: str) -> str:
    words = key.split()
    if len(words) > 1 and words[-1] in _SIDE_WORDS:
        words = [words[-1]] + words[:-1]
    return " ".join(words)


@functools.lru_cache(maxsize=4096)
def display_name(raw: str) -> str:
    """Raw organ name from either vocabulary (or a display name) -> display name.

    Examples: `lung_upper_lobe_right` / `lung upper lobe right` -> "right upper lobe of lung";
    `right upper zone lung` -> "right upper zone of lung"; `kidney_left` / `kidney left` -> "left kidney";
    `vertebrae_T12` -> "T12 vertebra". Unknown names are kept, cleaned up (see the module docstring).
    """
    key = name_key(raw)
    if not key:
        return UNKNOWN
    return _display_table().get(key) or _clean(key)


def known(name: str) -> bool:
    """Whether `name` (raw or display) is in the hierarchy."""
    return display_name(name) in _hierarchy()


def parent(name: str) -> Optional[str]:
    """The primary parent's display name ("right upper zone of lung" -> "right lung"); None for the root.

    A structure outside the hierarchy is taken to lie directly in the body.
    """
    d = display_name(name)
    if d == ROOT or d == UNKNOWN:
        return None
    ps = _hierarchy().get(d)
    if ps is None:
        return ROOT
    return ps[0] if ps else None


@functools.lru_cache(maxsize=4096)
def ancestors(name: str) -> frozenset[str]:
    """Every structure `name` is part of, over all parents (not including itself)."""
    d = display_name(name)
    h = _hierarchy()
    if d == UNKNOWN:
        return frozenset()
    seen: set[str] = set()
    stack = list(h.get(d, (ROOT,) if d != ROOT else ()))
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(h.get(p, ()))
    return frozenset(seen)


@functools.lru_cache(maxsize=4096)
def specificity(name: str) -> int:
    """Depth along primary parents: "body" 1, "lungs" 2, "right lung" 3, "right upper zone of lung" 4.

    Structures outside the hierarchy get `UNLISTED_SPECIFICITY` (2, an organ under the body); "unknown" gets 0.
    Higher means more specific; the linker uses it to break ties and to prefer a zone/lobe over its lung.
    """
    d = display_name(name)
    if d == UNKNOWN:
        return 0
    if d not in _hierarchy():
        return UNLISTED_SPECIFICITY
    depth, seen = 1, {d}
    p = parent(d)
    while p is not None and p not in seen:
        seen.add(p)
        depth += 1
        p = parent(p)
    return depth


def is_part_of(a: str, b: str) -> bool:
    """Whether structure `a` lies within structure `b` (strictly: a structure is not part of itself).

    Follows every parent, so "right upper zone of lung" is part of "right lung", "upper lung zones", "lungs" and
    "body".
    """
    da, db = display_name(a), display_name(b)
    return da != db and db in ancestors(da)


def side(name: str) -> Optional[str]:
    """The patient side a structure's name states ('right' / 'left'), else None ("liver", "lungs")."""
    words = display_name(name).split()
    for w in words:
        if w in _SIDE_WORDS:
            return w
    return None


# On a projection radiograph every lesion projects over ribs, clavicles, scapulae, breast shadows and the body
# outline; these "overlay" structures host a lesion only when no organ comes close (see data_gen.link).
OVERLAY_ROOTS = ("skeleton", "breasts")


def is_overlay(name: str) -> bool:
    """Bones, breasts and the body outline: structures a radiograph superimposes on the organs."""
    d = display_name(name)
    if d == ROOT or d in OVERLAY_ROOTS:
        return True
    return any(r in ancestors(d) for r in OVERLAY_ROOTS)


def is_host_candidate(name: str) -> bool:
    """False for structures that are lesions themselves (a kidney cyst mask cannot host a lesion)."""
    return display_name(name) not in LESION_STRUCTURES
