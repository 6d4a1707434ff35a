"""The build behind `medclm-data build` (`data_gen/commands/build.py`): a detection dataset -> sharded
curriculum TFRecords.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out /data/out \
        [--workers 8] [--runner local|beam] [--set write.records_per_shard=512] [--overwrite]

Resumable: finished shards are kept and skipped on a re-run of the same build (same config, same inputs); a
different build into the same folder is refused unless --overwrite. Every input image and annotation ends up in
a record or in `rejects.jsonl` with its reason, and dataset_info.json's counts add up.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Sequence

from data_gen import dataset_info
from data_gen.runners.shards import ShardSpec, build_fingerprint, is_finished, load_summary, plan_shards

STATE_FILE = "build_state.json"


def _load_adapter(cfg):
    from data_gen.annotations import get_adapter

    return get_adapter(cfg.adapter.name)(cfg.adapter)


def class_vocabulary(items) -> dict[str, list[str]]:
    """Lesion classes per modality as the adapter declares it (`unknown` when it is read from the DICOM later)."""
    vocab: dict[str, set[str]] = {}
    for item in items:
        vocab.setdefault(item.modality or "unknown", set()).update(les.label for les in item.lesions)
    return {m: sorted(v) for m, v in sorted(vocab.items())}


def run_build(cfg, out_dir: str, *, runner: str = "local", workers: int = 1, overwrite: bool = False,
              progress: bool = True, pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
    """Runs a whole build; returns the dataset_info dict (also written to out_dir/dataset_info.json)."""
    from data_gen import config

    t0 = time.perf_counter()
    config.validate(cfg)  # a bad key or value stops here, not as a reject on every image
    aset = _load_adapter(cfg)
    items = aset.items
    class_vocab = class_vocabulary(items)
    specs = plan_shards(items, cfg)
    fingerprint = build_fingerprint(cfg, specs)

    state_path = os.path.join(out_dir, STATE_FILE)
    if os.path.exists(state_path):
        with open(state_path) as f:
            previous = json.load(f).get("fingerprint")
        if previous != fingerprint:
            if not overwrite:
                raise SystemExit(
                    f"{out_dir} holds a different build (fingerprint {previous}, this one {fingerprint}): "
                    "pass --overwrite to replace it, or choose another --out")
            shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(state_path, "w") as f:
        json.dump({"fingerprint": fingerprint, "shards": [s.filename for s in specs]}, f, indent=1)

    todo = [s for s in specs if not is_finished(out_dir, s)]
    skipped = len(specs) - len(todo)
    if runner == "local":
        from data_gen.runners import local

        local.run_shards(out_dir, todo, cfg, class_vocab, workers=workers, progress=progress)
    elif runner == "beam":
        from data_gen.runners import beam

        beam.run_shards(out_dir, todo, cfg, class_vocab, pipeline_args=pipeline_args)
    else:
        raise ValueError(f"unknown runner {runner!r}: use 'local' or 'beam'")

    summaries = [load_summary(out_dir, s) for s in specs]
    adapter_rejects = [r.to_json() for r in aset.rejects]
    generator = {"runner": runner, "workers": workers, "shards_total": len(specs), "shards_resumed": skipped,
                 "seconds": round(time.perf_counter() - t0, 3), "package": "medclm-jax"}
    info = dataset_info.assemble(cfg, summaries, dict(aset.stats), adapter_rejects, generator)
    _write_rejects(out_dir, adapter_rejects, summaries)
    tmp = os.path.join(out_dir, "dataset_info.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1, sort_keys=False)
    os.replace(tmp, os.path.join(out_dir, "dataset_info.json"))
    return info


def _write_rejects(out_dir: str, adapter_rejects: list[dict], summaries: list[dict]) -> None:
    tmp = os.path.join(out_dir, "rejects.jsonl.tmp")
    with open(tmp, "w") as f:
        for r in adapter_rejects:
            f.write(json.dumps({"stage": "adapter", **r}, sort_keys=True) + "\n")
        for s in summaries:
            for r in s["rejects"]:
                f.write(json.dumps({"stage": "convert", "shard": s["shard"], **r}, sort_keys=True) + "\n")
    os.replace(tmp, os.path.join(out_dir, "rejects.jsonl"))


def format_summary(info: dict[str, Any]) -> str:
    t = info["counts"]["total"]
    lines = [f"dataset {info['name']}: {t.get('records', 0)} records from {t.get('images_written', 0)} of "
             f"{t.get('images_in', 0)} images ({t.get('images_rejected', 0)} rejected), "
             f"{t.get('lesion_records', 0)} lesion + {t.get('negative_records', 0)} negative records; "
             f"{info['rejects']['total']} rejects"]
    for split, c in info["counts"]["per_split"].items():
        lines.append(f"  {split:<5} records={c.get('records', 0):<6} images={c.get('images_written', 0)}")
    for reason, n in info["rejects"]["by_reason"].items():
        lines.append(f"  reject {reason}: {n}")
    lines += [f"  warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)
