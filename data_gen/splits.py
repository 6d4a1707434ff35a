"""Deterministic, salted assignments: pseudonymous ids, patient-level splits, curriculum pools.

All three are pure functions of their inputs and the salt, so the local runner, Beam workers and a re-run agree
without coordination, and adding images to a dataset never moves the old ones between splits.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def _unit_interval(*parts: str) -> float:
    """Uniform in [0, 1) from a SHA-256 of the parts (salt first)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pseudonymous_id(salt: str, source: str, image_key: str) -> str:
    """`image/id`: 20 hex chars of a salted hash. Without the salt it cannot be linked back to the dataset key."""
    return hashlib.sha256(f"{salt}\x1f{source}\x1f{image_key}".encode("utf-8")).hexdigest()[:20]


def patient_split(salt: str, source: str, patient_key: str, val: float, test: float) -> str:
    """train / val / test for a patient: every image of a patient lands in the same split."""
    if not (0.0 <= val and 0.0 <= test and val + test < 1.0):
        raise ValueError(f"split fractions must satisfy 0 <= val, test and val + test < 1; got val={val}, test={test}")
    u = _unit_interval(salt, "split", source, patient_key)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def curriculum_pool(salt: str, image_id: str, hard_fraction: float) -> str:
    """`easy_medium` or `hard` for a whole image (all its lesions), so Hard trains on images Easy/Medium never saw.

    Hashing the image id gives each domain (class x modality) the same expected hard fraction.
    """
    if not 0.0 <= hard_fraction < 1.0:
        raise ValueError(f"curriculum.hard_fraction must be in [0, 1), got {hard_fraction}")
    return "hard" if _unit_interval(salt, "pool", image_id) < hard_fraction else "easy_medium"
