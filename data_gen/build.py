"""The build behind `medclm-data build` (`data_gen/commands/build.py`): a detection dataset -> sharded
curriculum TFRecords.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out /data/out \
        [--workers 8] [--runner local|beam] [--set write.records_per_shard=512] [--overwrite]

The output folder (docs/design.md, "The record"):

    OUT/build_manifest.json        what this build wrote: shard names and fingerprints, config digests, the salt's
                                   fingerprint; nothing else is ever removed
    OUT/{split}-*.tfrecord, .index, .summary.json, dataset_info.json      the dataset: no source path, file name
                                   or dataset key
    OUT/diagnostics/rejects.jsonl  every input that did not become a record, named relative to the dataset root:
                                   for the people who hold the data, not shared with the dataset

The user's files are never touched: `--out` may not be an input folder or contain one (nor lie inside one unless
`allow_out_inside_root`), a build writes only into an empty folder or over a build of ours, and `--overwrite`
removes only the files the manifest says a build of ours wrote.

Resumable: a re-run of the same build (same config and salt) keeps every finished shard whose inputs are unchanged
and rebuilds the others (`runners.shards.shard_fingerprints`: annotation rows, boxes and classes, the input
files' size and mtime); a different config is refused unless --overwrite, which rebuilds from scratch. Every input
image and annotation ends up in a record or in the rejects with its reason, and dataset_info.json's counts add up.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Optional, Sequence

from data_gen import dataset_info
from data_gen.errors import InputError
from data_gen.synth import usage
from data_gen.runners.shards import (DIAGNOSTICS, REJECTS_SUFFIX, SUMMARY_SUFFIX, config_digests, load_shard_rejects,
                                     load_summary, plan_shards, relative_to_roots, shard_files, shard_fingerprints,
                                     source_roots)
from medclm_jax.records import remove_stale_temps

MANIFEST = "build_manifest.json"
MANIFEST_FORMAT, MANIFEST_VERSION = "medclm-data-build", 1
LEGACY_STATE = "build_state.json"  # the state file of builds before the manifest (shard names only)
INFO = "dataset_info.json"
REJECTS = os.path.join(DIAGNOSTICS, "rejects.jsonl")
DEFAULT_MAX_REJECT_SHARE = 0.5
_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-\d{5}\.tfrecord$")


class OutputError(Exception):
    """`--out` cannot be used as asked; nothing was written or removed. The message names the folder and what
    to do."""


def _load_adapter(cfg):
    from data_gen.annotations import get_adapter

    return get_adapter(cfg.adapter.name)(cfg.adapter)


def class_vocabulary(items) -> dict[str, list[str]]:
    """Lesion classes per modality as the adapter declares it (`unknown` when it is read from the DICOM later)."""
    vocab: dict[str, set[str]] = {}
    for item in items:
        vocab.setdefault(item.modality or "unknown", set()).update(les.label for les in item.lesions)
    return {m: sorted(v) for m, v in sorted(vocab.items())}


# ---------------------------------------------------------------------------------------------------------------
# Where the build may write.


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def input_folders(cfg, items) -> list[str]:
    """The folders a build reads (resolved): the dataset and masks roots, and every folder holding an image or
    its masks."""
    from data_gen.segment.load import resolve_mask_ref

    folders = {str(r) for r in (cfg.adapter.get("root"), cfg.masks.get("root")) if r}
    for item in items:
        folders.add(os.path.dirname(os.path.abspath(item.path)))
        try:
            ref = resolve_mask_ref(item, cfg.masks)
        except InputError:  # a ref outside masks.root is refused per image, at conversion (a counted fallback)
            ref = None
        if ref:
            folders.add(os.path.dirname(os.path.abspath(ref)))
    return sorted({_real(f) for f in folders})


def check_out_location(out_dir: str, folders: Sequence[str], allow_inside: bool = False) -> None:
    """Refuses an `--out` that is an input folder or contains one, or lies inside one unless `allow_inside`.

    Raises:
      OutputError: naming both folders.
    """
    out = _real(out_dir)
    for folder in folders:
        if _within(folder, out):
            what = "is the input folder" if folder == out else "contains the input folder"
            raise OutputError(f"--out {out_dir} {what} {folder}: a build there could overwrite your data; choose a "
                              "new folder outside the dataset")
        if _within(out, folder) and not allow_inside:
            raise OutputError(f"--out {out_dir} lies inside the input folder {folder}: choose a folder outside the "
                              "dataset, or pass --allow-out-inside-root if that is what you mean")


# ---------------------------------------------------------------------------------------------------------------
# The manifest: what a build of ours wrote, and so all that --overwrite may remove.


def new_manifest(cfg, specs) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "salt": dataset_info.salt_fingerprint(str(cfg.salt)), "config": config_digests(cfg),
            "shards": shard_fingerprints(cfg, specs)}


def read_manifest(out_dir: str) -> Optional[dict[str, Any]]:
    """The manifest of the build of ours in `out_dir`; None when the folder is absent or empty.

    Raises:
      OutputError: `out_dir` is a file, or a non-empty folder that holds no build of ours.
    """
    if not os.path.lexists(out_dir):
        return None
    if not os.path.isdir(out_dir):
        raise OutputError(f"--out {out_dir} is a file, not a folder: choose a new or empty folder")
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return None
    for name, legacy in ((MANIFEST, False), (LEGACY_STATE, True)):
        if name not in entries:
            continue
        try:
            with open(os.path.join(out_dir, name)) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None
        if legacy and isinstance(manifest, dict) and isinstance(manifest.get("shards"), list):
            manifest = {"legacy": True, "shards": {s: None for s in manifest["shards"]}}
        ok = isinstance(manifest, dict) and isinstance(manifest.get("shards"), dict) and (
            legacy or (manifest.get("format"), manifest.get("version")) == (MANIFEST_FORMAT, MANIFEST_VERSION))
        if ok and all(isinstance(s, str) and _SHARD_NAME.match(s) for s in manifest["shards"]):
            return manifest
        raise OutputError(f"{os.path.join(out_dir, name)} is not a build manifest this version of medclm-data "
                          "reads: remove that folder yourself, or choose another --out")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutputError(f"--out {out_dir} is not empty and holds no medclm-data build ({len(entries)} entries: "
                      f"{shown}): a build writes only into an empty folder or over a build of its own; choose a new "
                      "or empty folder (nothing was written or removed)")


def _build_files(manifest: dict[str, Any], keep: set[str]) -> list[str]:
    """The files (relative) of `manifest`'s build, except the shards in `keep`; the manifest itself last."""
    files = []
    for name in manifest["shards"]:
        if name not in keep:
            files += shard_files(name) + [name + SUMMARY_SUFFIX + ".tmp",
                                          os.path.join(DIAGNOSTICS, name + REJECTS_SUFFIX + ".tmp")]
    files += [INFO, INFO + ".tmp", REJECTS, REJECTS + ".tmp", MANIFEST + ".tmp"]
    if manifest.get("legacy"):
        files += ["rejects.jsonl", "rejects.jsonl.tmp", LEGACY_STATE]
    return files


def remove_build(out_dir: str, manifest: dict[str, Any], keep: set[str] = frozenset()) -> None:
    """Removes what `manifest`'s build wrote in `out_dir` (but the shards in `keep`), and nothing else."""
    for rel in _build_files(manifest, set(keep)):
        path = os.path.join(out_dir, rel)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
    for name in manifest["shards"]:
        if name not in keep:
            m = _SHARD_NAME.match(name)
            remove_stale_temps(out_dir, m.group("split"), int(m.group("index")))
    diagnostics = os.path.join(out_dir, DIAGNOSTICS)
    if os.path.isdir(diagnostics) and not os.listdir(diagnostics):
        os.rmdir(diagnostics)


def resumable_shards(out_dir: str, previous: dict[str, Any], manifest: dict[str, Any]) -> set[str]:
    """The finished shards of `previous` that this build keeps: same name, same inputs.

    Raises:
      OutputError: `previous` used another salt, another config, or is a legacy build (--overwrite replaces it).
    """
    if previous.get("legacy"):
        raise OutputError(f"{out_dir} holds a build of an older medclm-data: pass --overwrite to replace it, or "
                          "choose another --out")
    if previous.get("salt") != manifest["salt"]:
        raise OutputError(f"{out_dir} was built with another salt (fingerprint {previous.get('salt')}, this config's "
                          f"is {manifest['salt']}): its pseudonymous ids and splits would not match; pass --overwrite "
                          "to rebuild it with this salt, or choose another --out")
    before, now = previous.get("config") or {}, manifest["config"]
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise OutputError(f"{out_dir} holds a different build (the config differs in {', '.join(changed[:6])}"
                          f"{', ...' if len(changed) > 6 else ''}): pass --overwrite to replace it, or choose another "
                          "--out")
    return {name for name, fp in manifest["shards"].items()
            if previous["shards"].get(name) == fp
            and all(os.path.exists(os.path.join(out_dir, p)) for p in shard_files(name))}


def _write_json(path: str, obj: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------------------------
# The build.


def run_build(cfg, out_dir: str, *, runner: str = "local", workers: int = 1, overwrite: bool = False,
              progress: bool = True, pipeline_args: Sequence[str] = (),
              allow_out_inside_root: bool = False) -> dict[str, Any]:
    """Runs a whole build; returns the dataset_info dict (also written to out_dir/dataset_info.json).

    Raises:
      OutputError: `out_dir` is unusable (an input folder, not ours, another build, not writable); nothing was
        written or removed.
      KeyboardInterrupt: stopped (Ctrl-C; the command turns SIGTERM into it too): the workers are stopped, the
        finished shards are kept, and a re-run resumes.
    """
    from data_gen import config, synth

    t0 = time.perf_counter()
    config.validate(cfg)  # a bad key or value stops here, not as a reject on every image
    for line in synth.preflight(cfg.synth):  # an LLM endpoint that does not answer stops here, before any image
        print(line)
    aset = _load_adapter(cfg)
    items = aset.items
    check_out_location(out_dir, input_folders(cfg, items), allow_inside=allow_out_inside_root)
    class_vocab = class_vocabulary(items)
    specs = plan_shards(items, cfg)
    manifest = new_manifest(cfg, specs)
    previous = read_manifest(out_dir)
    keep = resumable_shards(out_dir, previous, manifest) if previous is not None and not overwrite else set()
    changed = sum(1 for name, fp in manifest["shards"].items()
                  if previous and name not in keep and previous["shards"].get(name) not in (None, fp))
    try:
        os.makedirs(out_dir, exist_ok=True)
        if previous is not None:
            remove_build(out_dir, previous, keep)  # stale shards go before the new manifest can vouch for them
        _write_json(os.path.join(out_dir, MANIFEST), manifest)
    except OSError as e:
        raise OutputError(f"cannot write to --out {out_dir} ({e.strerror or e}): choose a folder you can write to, "
                          "or fix its permissions") from None

    todo = [s for s in specs if s.filename not in keep]
    if runner == "local":
        from data_gen.runners import local

        try:
            local.run_shards(out_dir, todo, cfg, class_vocab, workers=workers, progress=progress)
        except BaseException:
            try:
                for s in todo:  # the workers are stopped: what they left half-written is ours to remove
                    remove_stale_temps(out_dir, s.split, s.index)
            except OSError:
                pass  # the next run removes them
            raise
    elif runner == "beam":
        from data_gen.runners import beam

        beam.run_shards(out_dir, todo, cfg, class_vocab, pipeline_args=pipeline_args)
    else:
        raise ValueError(f"unknown runner {runner!r}: use 'local' or 'beam'")

    summaries = [load_summary(out_dir, s) for s in specs]
    roots = source_roots(cfg)
    adapter_rejects = [{"stage": "adapter", **{k: relative_to_roots(str(v), roots) for k, v in r.to_json().items()}}
                       for r in aset.rejects]
    generator = {"runner": runner, "workers": workers, "shards_total": len(specs), "shards_resumed": len(keep),
                 "shards_rebuilt_changed_inputs": changed, "seconds": round(time.perf_counter() - t0, 3),
                 "package": "medclm-jax"}
    info = dataset_info.assemble(cfg, summaries, dict(aset.stats), adapter_rejects, generator)
    with open(os.path.join(out_dir, REJECTS + ".tmp"), "w") as f:
        for r in adapter_rejects:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        for s in specs:
            for r in load_shard_rejects(out_dir, s):
                f.write(json.dumps({"stage": "convert", **r}, sort_keys=True) + "\n")
    os.replace(os.path.join(out_dir, REJECTS + ".tmp"), os.path.join(out_dir, REJECTS))
    _write_json(os.path.join(out_dir, INFO), info)
    return info


# ---------------------------------------------------------------------------------------------------------------
# The end of a build: did it work?


def build_failure(info: dict[str, Any], max_share: float = DEFAULT_MAX_REJECT_SHARE,
                  out_dir: Optional[str] = None) -> Optional[str]:
    """Why the build as a whole failed, or None: no record was written, or every image (or more than `max_share`
    of them) was rejected for one same reason, which is then most likely a setting or the data's format rather
    than single bad files. With `out_dir`, one such reject from the diagnostics is quoted as an example.
    """
    t = info["counts"]["total"]
    by_reason = info["rejects"]["by_reason"]
    image_reasons = {k: v for k, v in by_reason.items() if k.startswith("image:")}
    # one `image:` reject per image the conversion dropped; the others are images the adapter dropped
    images = t["images_in"] + max(0, sum(image_reasons.values()) - t["images_rejected"])
    top = max(sorted(image_reasons), key=image_reasons.get) if image_reasons else None
    if top and (image_reasons[top] == images or image_reasons[top] > max_share * images):
        n = image_reasons[top]
        message = f"{n} of {images} images ({n / images:.0%}) were rejected for the same reason, {top}"
        example = _example_reject(out_dir, top) if out_dir else None
        return message + (f"; e.g. {example}" if example else "")
    if t["records"] == 0:
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])[:3])
        return f"no record was written from {images} images" + (f"; rejects: {reasons}" if reasons else "")
    return None


def _example_reject(out_dir: str, reason: str) -> Optional[str]:
    kind, _, code = reason.partition(":")
    try:
        with open(os.path.join(out_dir, REJECTS)) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == kind and r.get("reason") == code:
                    return f"{r.get('path') or r.get('item')}: {r.get('detail', '')}"[:300]
    except (OSError, ValueError):
        return None
    return None


def format_summary(info: dict[str, Any]) -> str:
    t = info["counts"]["total"]
    lines = [f"dataset {info['name']}: {t.get('records', 0)} records from {t.get('images_written', 0)} of "
             f"{t.get('images_in', 0)} images ({t.get('images_rejected', 0)} rejected), "
             f"{t.get('lesion_records', 0)} lesion + {t.get('negative_records', 0)} negative records; "
             f"{info['rejects']['total']} rejects"]
    g = info.get("generator", {})
    if g.get("shards_resumed") or g.get("shards_rebuilt_changed_inputs"):
        lines.append(f"  resumed: {g.get('shards_resumed', 0)} of {g.get('shards_total', 0)} shards kept, "
                     f"{g.get('shards_rebuilt_changed_inputs', 0)} rebuilt because their inputs changed")
    for split, c in info["counts"]["per_split"].items():
        lines.append(f"  {split:<5} records={c.get('records', 0):<6} images={c.get('images_written', 0)}")
    for reason, n in info["rejects"]["by_reason"].items():
        lines.append(f"  reject {reason}: {n}")
    adapter = info.get("adapter", {})
    for key, what in (("unannotated_images", "image files with no annotation row"),
                      ("duplicate_rows", "duplicate annotation rows")):
        if adapter.get(key):
            lines.append(f"  {what}: {adapter[key]}")
    lines += [f"  {line}" for line in usage.format_usage(info.get("synth", {}))]
    lines += [f"  warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)
