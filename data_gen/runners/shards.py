"""The shard plan and the per-shard bookkeeping that both runners share.

A build is a list of `ShardSpec`s (a split, a shard number and the images that go into it), planned
deterministically from the adapter's items. A shard is finished when its `.tfrecord`, its `.index` and its
`.summary.json` exist under their final names (each written to a temporary name and renamed), so a re-run skips
finished shards and redoes only the rest. The summary holds the shard's counts and rejects, from which
`dataset_info.json` and `rejects.jsonl` are assembled without reading the records again.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable

from data_gen import splits
from data_gen.pipeline import ConvertResult
from data_gen.types import ImageItem
from medclm_jax.records import encode_example, index_path, schema, write_shard

SUMMARY_SUFFIX = ".summary.json"
COUNT_KEYS = ("images_in", "images_written", "images_rejected", "lesions_in", "lesion_records", "lesions_rejected",
              "negative_records", "records")


@dataclasses.dataclass
class ShardSpec:
    split: str
    index: int
    num_shards: int
    items: list[ImageItem]

    @property
    def filename(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.num_shards:05d}.tfrecord"


def plan_domains(item: ImageItem) -> list[str]:
    """The domains an image is stratified under: its lesion classes with the adapter's modality."""
    labels = sorted({les.label for les in item.lesions}) or [schema.NO_FINDING]
    return [schema.domain_of(label, item.modality or "unknown") for label in labels]


def plan_shards(items: Iterable[ImageItem], cfg) -> list[ShardSpec]:
    """Groups items into shards: per split, ordered by pseudonymous id, about `records_per_shard` records each.

    With `curriculum.stratify` (default True) the curriculum pool of every image is decided here, per domain
    within its split (`splits.stratified_pools`), and carried in `item.extra['curriculum_pool']`.
    """
    # One pass for the salted id and the patient split of every image; the pools and the shards both use them.
    planned = [(item, splits.pseudonymous_id(cfg.salt, item.source, item.image_key),
                splits.patient_split(cfg.salt, item.source, item.patient_key, cfg.split.val, cfg.split.test))
               for item in items]
    if cfg.curriculum.get("stratify", True):
        # stratified within each split: the train split's every domain gets both pools
        pools = splits.stratified_pools(
            cfg.salt, [(image_id, [f"{split}/{d}" for d in plan_domains(item)]) for item, image_id, split in planned],
            cfg.curriculum.hard_fraction)
        for item, image_id, _ in planned:
            item.extra["curriculum_pool"] = pools[image_id]
    by_split: dict[str, list[tuple[str, ImageItem]]] = collections.defaultdict(list)
    for item, image_id, split in planned:
        by_split[split].append((image_id, item))
    target = max(1, int(cfg.write.records_per_shard))
    specs = []
    for split in splits.SPLITS:
        members = sorted(by_split.get(split, []), key=lambda kv: kv[0])
        groups: list[list[ImageItem]] = []
        current: list[ImageItem] = []
        count = 0
        for _, item in members:
            current.append(item)
            count += max(1, len(item.lesions))
            if count >= target:
                groups.append(current)
                current, count = [], 0
        if current:
            groups.append(current)
        specs += [ShardSpec(split, i, len(groups), g) for i, g in enumerate(groups)]
    return specs


def build_fingerprint(cfg, specs: list[ShardSpec]) -> str:
    """Hash of the config and the shard plan: a resumed build must be the same build."""
    h = hashlib.sha256(cfg.to_json(sort_keys=True).encode())
    for s in specs:
        h.update(s.filename.encode())
        for item in s.items:
            h.update(f"{item.source}\x1f{item.image_key}\x1f{len(item.lesions)}\x1f{item.negative}"
                     f"\x1f{item.extra.get('curriculum_pool', '')}".encode())
    return h.hexdigest()[:24]


def is_finished(out_dir: str, spec: ShardSpec) -> bool:
    base = os.path.join(out_dir, spec.filename)
    return all(os.path.exists(p) for p in (base, index_path(base), base + SUMMARY_SUFFIX))


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def finish_shard(out_dir: str, spec: ShardSpec, results: list[ConvertResult]) -> dict[str, Any]:
    """Writes the shard's records (in plan order), its index and its summary; returns the summary."""
    payloads = []
    counts: collections.Counter = collections.Counter({k: 0 for k in COUNT_KEYS})
    per_domain: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    classes: collections.Counter = collections.Counter()
    organs: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    rejects = []
    for item, res in zip(spec.items, results):
        counts["images_in"] += 1
        counts["lesions_in"] += len(item.lesions)
        stats.update(res.stats)
        rejects += [r.to_json() for r in res.rejects]
        counts["lesions_rejected"] += sum(r.kind == "lesion" for r in res.rejects)
        if res.written:
            counts["images_written"] += 1
        else:
            counts["images_rejected"] += 1
        for ex in res.examples:
            schema.check_record(ex, where=f"{spec.filename} image {res.image_id}")
            payloads.append(encode_example(ex))
            counts["records"] += 1
            is_negative = len(ex[schema.LESION_BOX]) == 0
            counts["negative_records" if is_negative else "lesion_records"] += 1
            for stage in schema.pool_stages(ex[schema.CURRICULUM_POOL]):
                per_domain[ex[schema.DOMAIN]][stage] += 1
            classes[ex[schema.LESION_CLASS]] += 1
            organs[ex[schema.LESION_ORGAN]] += 1
    path = os.path.join(out_dir, spec.filename)
    write_shard(out_dir, spec.split, spec.index, spec.num_shards, payloads)
    summary = {
        "shard": spec.filename,
        "split": spec.split,
        "counts": {k: counts[k] for k in COUNT_KEYS},
        "domains": {d: dict(c) for d, c in sorted(per_domain.items())},
        "classes": dict(classes),
        "organs": dict(organs),
        "stats": dict(stats),
        "rejects": rejects,
    }
    _atomic_write_text(path + SUMMARY_SUFFIX, json.dumps(summary, sort_keys=True))
    return summary


def load_summary(out_dir: str, spec: ShardSpec) -> dict[str, Any]:
    with open(os.path.join(out_dir, spec.filename + SUMMARY_SUFFIX)) as f:
        return json.load(f)
