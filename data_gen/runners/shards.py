"""The shard plan and the per-shard bookkeeping that both runners share.

A build is a list of `ShardSpec`s (a split, a shard number and the images that go into it), planned
deterministically from the adapter's items. A shard is finished when its `.tfrecord`, its `.index`, its
`.summary.json` and its rejects under `diagnostics/` exist under their final names (each written to a temporary
name and renamed, the summary last), so a re-run skips finished shards and redoes only the rest. The summary holds
the shard's counts and reject reasons, from which `dataset_info.json` is assembled without reading the records
again; the rejects themselves, which name source files, go to `diagnostics/` (docs/design.md, "The record").

Resume compares fingerprints (`shard_fingerprints`): per shard, a hash of the config, of everything the adapter
read about each image (annotation rows with their boxes and classes, keys, modality, ...) and of the identity of
every input file the image's records derive from (the image, its masks): size and modification time in
nanoseconds, which is what a re-export, a fixed file or a copy changes, read with one `stat` per file instead of
every byte of a dataset of terabytes. An edit that keeps both (`touch -r`, some sync tools) goes unseen: rebuild
with `--overwrite` then.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import stat
from typing import Any, Iterable, Mapping, Sequence

from data_gen import splits
from data_gen.errors import InputError
from data_gen.pipeline import ConvertResult
from data_gen.types import ImageItem
from medclm_jax.records import encode_example, index_path, schema, write_shard

SUMMARY_SUFFIX = ".summary.json"
DIAGNOSTICS = "diagnostics"  # what names source files: kept apart from the dataset, never shared with it
REJECTS_SUFFIX = ".rejects.jsonl"
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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_digests(cfg) -> dict[str, str]:
    """A digest per config key (dotted), salted, so a resume can name the keys that changed while the output
    folder holds no config value (a root folder named after a patient) in a form anyone can read back."""
    salt = str(cfg.salt)
    flat = _flatten(json.loads(cfg.to_json(sort_keys=True)))
    return {k: hashlib.sha256(f"{salt}\x1f{k}\x1f{json.dumps(v, sort_keys=True)}".encode()).hexdigest()[:16]
            for k, v in sorted(flat.items()) if k != "salt"}


def file_identity(path: str) -> str:
    """`size:mtime_ns` of a file, or of every file under a folder (a series of slices); `missing` when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not stat.S_ISDIR(st.st_mode):
        return f"{st.st_size}:{st.st_mtime_ns}"
    parts = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            parts.append(f"{os.path.relpath(full, path)}:{file_identity(full)}")
    return "\x1e".join(parts)


def shard_fingerprints(cfg, specs: list[ShardSpec]) -> dict[str, str]:
    """{shard file name: hash of the config, the shard's images as the adapter read them and their input files}.

    A shard whose fingerprint changed since the last build into the same folder is rebuilt (see the module
    docstring for what is covered and why file identity is size + mtime).
    """
    from data_gen.segment.load import resolve_mask_ref

    base = hashlib.sha256(json.dumps(config_digests(cfg), sort_keys=True).encode()).hexdigest()
    out = {}
    for s in specs:
        h = hashlib.sha256(f"{base}\x1f{s.filename}".encode())
        for item in s.items:
            try:
                mask_ref = resolve_mask_ref(item, cfg.masks)
            except InputError:  # refused at conversion, per image (a counted fallback)
                mask_ref = None
            h.update(json.dumps(dataclasses.asdict(item), sort_keys=True, default=str).encode())
            h.update(f"\x1f{file_identity(item.path)}\x1f{file_identity(mask_ref) if mask_ref else '-'}\x1e".encode())
        out[s.filename] = h.hexdigest()[:32]
    return out


def shard_files(filename: str) -> list[str]:
    """Every file a finished shard consists of, relative to the output folder (the summary, its marker, last)."""
    return [os.path.join(DIAGNOSTICS, filename + REJECTS_SUFFIX), filename, index_path(filename),
            filename + SUMMARY_SUFFIX]


def is_finished(out_dir: str, spec: ShardSpec) -> bool:
    return all(os.path.exists(os.path.join(out_dir, p)) for p in shard_files(spec.filename))


def source_roots(cfg) -> list[tuple[str, str]]:
    """(folder, how the rejects name what is under it): the dataset root as relative paths, the masks root as
    `masks.root/...`; each as configured and resolved through symlinks, longest first."""
    roots = []
    for folder, label in ((cfg.adapter.get("root"), ""), (cfg.masks.get("root"), "masks.root/")):
        if folder:
            folder = os.path.abspath(os.path.expanduser(str(folder)))
            roots += [(folder, label), (os.path.realpath(folder), label)]
    return sorted(set(roots), key=lambda r: -len(r[0]))


def relative_to_roots(text: str, roots: Sequence[tuple[str, str]]) -> str:
    """`text` with every path under a source root written relative to it (no absolute source path leaves)."""
    for folder, label in roots:
        text = text.replace(folder.rstrip(os.sep) + os.sep, label)
    return text
def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def finish_shard(out_dir: str, spec: ShardSpec, results: list[ConvertResult],
                 roots: Sequence[tuple[str, str]] = (), extra_stats: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Writes the shard's records (in plan order), its index, its rejects and its summary; returns the summary.

    The summary is part of the dataset, so it holds only counts and reject reasons; the rejects, which name the
    input files (relative to `roots`, see `source_roots`), go to `diagnostics/<shard>.rejects.jsonl`.
    """
    payloads = []
    counts: collections.Counter = collections.Counter({k: 0 for k in COUNT_KEYS})
    per_domain: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    classes: collections.Counter = collections.Counter()
    organs: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    rejects = []
    stats.update(extra_stats or {})  # the CoT-QA backend's own counters (images sent per host, requests, ...)
    for item, res in zip(spec.items, results):
        counts["images_in"] += 1
        counts["lesions_in"] += len(item.lesions)
        stats.update(res.stats)
        path = relative_to_roots(os.path.abspath(item.path), roots)
        for r in res.rejects:
            reasons[f"{r.kind}:{r.reason}"] += 1
            rejects.append({"shard": spec.filename, "path": path,
                            **{k: relative_to_roots(v, roots) for k, v in r.to_json().items()}})
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
    os.makedirs(os.path.join(out_dir, DIAGNOSTICS), exist_ok=True)
    _atomic_write_text(os.path.join(out_dir, DIAGNOSTICS, spec.filename + REJECTS_SUFFIX),
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    write_shard(out_dir, spec.split, spec.index, spec.num_shards, payloads)
    summary = {
        "shard": spec.filename,
        "split": spec.split,
        "counts": {k: counts[k] for k in COUNT_KEYS},
        "domains": {d: dict(c) for d, c in sorted(per_domain.items())},
        "classes": dict(classes),
        "organs": dict(organs),
        "stats": dict(stats),
        "reject_reasons": dict(sorted(reasons.items())),
    }
    _atomic_write_text(os.path.join(out_dir, spec.filename + SUMMARY_SUFFIX), json.dumps(summary, sort_keys=True))
    return summary


def load_summary(out_dir: str, spec: ShardSpec) -> dict[str, Any]:
    with open(os.path.join(out_dir, spec.filename + SUMMARY_SUFFIX)) as f:
        return json.load(f)


def load_shard_rejects(out_dir: str, spec: ShardSpec) -> list[dict[str, Any]]:
    with open(os.path.join(out_dir, DIAGNOSTICS, spec.filename + REJECTS_SUFFIX)) as f:
        return [json.loads(line) for line in f if line.strip()]
