"""Deterministic, salted assignments: pseudonymous ids, patient-level splits, curriculum pools.

All three are pure functions of their inputs and the salt, so the local runner, Beam workers and a re-run agree
without coordination, and adding images to a dataset never moves the old ones between splits.
"""

from __future__ import annotations

import hashlib

from medclm_jax.records.schema import SPLITS  # noqa: F401  (re-exported: the record's `split` values)


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


def stratified_pools(salt: str, images: list[tuple[str, list[str]]], hard_fraction: float) -> dict[str, str]:
    """Pools per domain, so every domain can be trained in Easy/Medium *and* in Hard.

    `images` holds (image_id, domains) pairs (an image with several lesion classes is in several domains). Domains
    are visited from the smallest up; a domain of n >= 2 images gets round(hard_fraction * n) hard images, at least
    one and at most n - 1, counting the images earlier (smaller) domains already placed, and its free images are
    placed in the order of the salted pool hash. A plain hash threshold (`curriculum_pool`) would leave small
    domains without one of the pools. Deterministic; adding images to a domain can move its boundary image.
    """
    if not 0.0 <= hard_fraction < 1.0:
        raise ValueError(f"curriculum.hard_fraction must be in [0, 1), got {hard_fraction}")
    by_domain: dict[str, list[tuple[float, str]]] = {}
    for image_id, domains in images:
        u = _unit_interval(salt, "pool", image_id)
        for domain in set(domains):
            by_domain.setdefault(domain, []).append((u, image_id))
    pools: dict[str, str] = {}
    for domain in sorted(by_domain, key=lambda d: (len(by_domain[d]), d)):
        members = sorted(by_domain[domain])
        n = len(members)
        target = round(hard_fraction * n)
        if n >= 2 and hard_fraction > 0:
            target = min(max(target, 1), n - 1)
        placed = [pools[i] for _, i in members if i in pools]
        free = [i for _, i in members if i not in pools]
        need_easy = 1 if n >= 2 and "easy_medium" not in placed else 0
        n_hard = min(max(0, target - placed.count("hard")), max(0, len(free) - need_easy))
        for rank, image_id in enumerate(free):
            pools[image_id] = "hard" if rank < n_hard else "easy_medium"
    return pools
