"""`dataset_info.json`: what a build wrote, from the shard summaries, with counts that add up.

The invariants (checked by `check_accounting`, asserted by the build and the tests):
  images_in   = images_written + images_rejected            (per shard and overall)
  lesions_in  = lesion_records + lesions_rejected           (every box is a record or a reject)
  records     = lesion_records + negative_records
  adapter: rows the adapter read = boxes it produced + boxes merged + rows rejected (as the adapter reports them)
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
from typing import Any

from data_gen.synth import usage
from medclm_jax.records import schema


class AccountingError(AssertionError):
    pass


def _add(into: collections.Counter, d: dict[str, int]) -> None:
    into.update({k: int(v) for k, v in d.items()})


def assemble(cfg, summaries: list[dict[str, Any]], adapter_stats: dict[str, int], adapter_rejects: list[dict],
             generator: dict[str, Any]) -> dict[str, Any]:
    """Merges shard summaries into the dataset_info dict (without the rejects themselves)."""
    from data_gen.runners.shards import COUNT_KEYS

    totals: collections.Counter = collections.Counter({k: 0 for k in COUNT_KEYS})
    per_split: dict[str, collections.Counter] = collections.defaultdict(
        lambda: collections.Counter({k: 0 for k in COUNT_KEYS}))
    domains: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    classes: collections.Counter = collections.Counter()
    organs: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    reject_reasons: collections.Counter = collections.Counter()
    shards: dict[str, list[str]] = collections.defaultdict(list)
    for s in summaries:
        _add(totals, s["counts"])
        _add(per_split[s["split"]], s["counts"])
        for d, c in s["domains"].items():
            _add(domains[s["split"]][d], c)
        _add(classes, s["classes"])
        _add(organs, s["organs"])
        _add(stats, s["stats"])
        _add(reject_reasons, s["reject_reasons"])
        shards[s["split"]].append(s["shard"])
    reject_reasons.update(f"{r['kind']}:{r['reason']}" for r in adapter_rejects)
    info = {
        "schema": schema.describe(),
        "name": cfg.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {
            "total": dict(sorted(totals.items())),
            "per_split": {k: dict(sorted(v.items())) for k, v in sorted(per_split.items())},
            "per_split_domain_stage": {
                split: {d: dict(sorted(c.items())) for d, c in sorted(ds.items())}
                for split, ds in sorted(domains.items())
            },
        },
        "shards": {k: sorted(v) for k, v in sorted(shards.items())},
        "vocab": {"classes": dict(sorted(classes.items())), "organs": dict(sorted(organs.items()))},
        "stats": dict(sorted(stats.items())),
        "adapter": dict(sorted(adapter_stats.items())),
        "synth": usage.summarize(stats, str(cfg.synth.get("backend", "template"))),
        "rejects": {"total": sum(reject_reasons.values()), "by_reason": dict(sorted(reject_reasons.items()))},
        "generator": generator,
        "config": shareable_config(cfg),
        "warnings": pool_warnings(domains),
    }
    check_accounting(info)
    return info


def salt_fingerprint(salt: str) -> str:
    """A one-way fingerprint of the id salt: enough to tell two salts apart, useless for linking ids back."""
    return "sha256:" + hashlib.sha256(f"medclm-salt-fingerprint\x1f{salt}".encode("utf-8")).hexdigest()[:16]


# Config keys that name files, folders or the local LLM endpoint (adapter.root, adapter.csv, masks.root,
# synth.llm.base_url, ...): a folder may be named after a patient, and the dataset travels, so their values stay
# behind.
_PATH_KEYS = frozenset({"root", "json", "csv", "base_url"})
_PATH_SUFFIXES = ("_dir", "_path", "_file", "_weights")
WITHHELD = "<local path, not shared>"


def _is_path(key: str, value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if key in _PATH_KEYS or key.endswith(_PATH_SUFFIXES):
        return True
    # an absolute or home-relative path, a URL, a Windows drive; class names such as `nodule/mass` are not paths
    return value.startswith(("/", "~", "\\")) or "://" in value or (len(value) > 2 and value[1:3] in (":/", ":\\"))


def _withhold_paths(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    return {k: WITHHELD if _is_path(k, v) else _withhold_paths(v) for k, v in tree.items()}


def shareable_config(cfg) -> dict[str, Any]:
    """The build config as dataset_info.json stores it: the secret salt replaced by its fingerprint, every file
    and folder name withheld.

    With the salt, anyone holding the source keys could recompute the pseudonymous `image/id`s and link records
    back to them; the dataset is shared, the salt is not. Paths are local and may name a patient
    (`/data/DOE_JOHN_19010203/`).
    """
    config = _withhold_paths(json.loads(cfg.to_json(sort_keys=True)))
    config["salt"] = salt_fingerprint(str(cfg.get("salt", "")))
    return config


def pool_warnings(domains) -> list[str]:
    """Domains of the train split that lack Easy/Medium or Hard images (too few images for the hard fraction)."""
    out = []
    for d, c in sorted(domains.get("train", {}).items()):
        if not c.get("hard"):
            out.append(f"train domain {d!r} has no image in the hard pool: Hard cannot be trained on it")
        if not c.get("easy"):
            out.append(f"train domain {d!r} has no image in the easy_medium pool")
    return out


def check_accounting(info: dict[str, Any]) -> None:
    t = collections.Counter(info["counts"]["total"])
    problems = []
    if t["images_in"] != t["images_written"] + t["images_rejected"]:
        problems.append(f"images_in {t['images_in']} != written {t['images_written']} + "
                        f"rejected {t['images_rejected']}")
    if t["lesions_in"] != t["lesion_records"] + t["lesions_rejected"]:
        problems.append(f"lesions_in {t['lesions_in']} != lesion_records {t['lesion_records']} + "
                        f"lesions_rejected {t['lesions_rejected']}")
    if t["records"] != t["lesion_records"] + t["negative_records"]:
        problems.append(f"records {t['records']} != lesion {t['lesion_records']} + negative {t['negative_records']}")
    if problems:
        raise AccountingError("dataset_info counts do not add up: " + "; ".join(problems))
