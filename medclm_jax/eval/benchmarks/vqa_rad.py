"""VQA-RAD (Lau et al. 2018) in its public release layout (OSF archive):

    <root>/VQA_RAD Dataset Public.json     a JSON array, one object per question
    <root>/VQA_RAD Image Folder/<image_name>   e.g. synpic54610.jpg

Fields used: `qid`, `image_name`, `question`, `answer` (string or number), `answer_type` (`OPEN` / `CLOSED`,
stripped and upper-cased: a few releases carry stray spaces), `phrase_type` (the split: `freeform` and `para` are
train, `test_freeform` and `test_para` are test), `image_organ` (`HEAD`, `CHEST`, `ABD`), `question_type`.

Known leak: the split is by question, not by image, so most test images also occur in train. When both splits are
loaded the loader hashes the images and reports the overlap (`Benchmark.overlap`, and a logged warning).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from medclm_jax.eval.benchmarks.items import (Benchmark, BenchmarkError, BenchmarkItem, check_images,
                                              image_overlap, unique_ids)

log = logging.getLogger(__name__)

QUESTIONS_FILE = "VQA_RAD Dataset Public.json"
IMAGE_DIR = "VQA_RAD Image Folder"
_SPLIT_OF_PHRASE = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}


def load_vqa_rad(root: str | Path, splits: Sequence[str] = ("train", "test"), *,
                 require_images: bool = True) -> Benchmark:
    """Load VQA-RAD questions of the given splits ("train", "test") from the release directory `root`."""
    root = Path(root)
    path = root / QUESTIONS_FILE
    if not path.is_file():
        raise BenchmarkError(f"vqa_rad: {path} not found; point root at the unpacked release holding "
                             f"'{QUESTIONS_FILE}' and '{IMAGE_DIR}/'")
    bad = set(splits) - {"train", "test"}
    if bad:
        raise BenchmarkError(f"vqa_rad: unknown split(s) {sorted(bad)}; VQA-RAD has 'train' and 'test'")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(records, list):
        raise BenchmarkError(f"{path}: expected a JSON array of question objects")
    rows = []
    for i, rec in enumerate(records):
        where = f"{path}[{i}]"
        try:
            phrase = str(rec["phrase_type"]).strip()
            kind = str(rec["answer_type"]).strip().upper()
            qid, image, question, answer = rec["qid"], rec["image_name"], rec["question"], rec["answer"]
        except (KeyError, TypeError) as e:
            raise BenchmarkError(f"{where}: missing field {e}; is this the public release JSON?") from None
        if phrase not in _SPLIT_OF_PHRASE:
            raise BenchmarkError(f"{where}: phrase_type {phrase!r} is not one of {sorted(_SPLIT_OF_PHRASE)}")
        if kind not in ("OPEN", "CLOSED"):
            raise BenchmarkError(f"{where}: answer_type {rec['answer_type']!r} is not OPEN or CLOSED")
        split = _SPLIT_OF_PHRASE[phrase]
        if split in splits:
            rows.append((split, qid, image, question, answer, kind, rec))
    ids = unique_ids([f"vqa_rad/{split}/{qid}" for split, qid, *_ in rows])
    items = tuple(
        BenchmarkItem(
            id=uid, dataset="vqa_rad", split=split, image_path=str((root / IMAGE_DIR / str(image)).resolve()),
            question=str(question), answer=str(answer).strip(), answer_type=kind.lower(),
            organ=str(rec.get("image_organ") or "").strip().lower() or None,
            question_type=str(rec.get("question_type") or "").strip() or None,
        )
        for uid, (split, qid, image, question, answer, kind, rec) in zip(ids, rows)
    )
    if require_images:
        check_images(items, "vqa_rad")
    overlap = None
    if {"train", "test"} <= set(splits):
        overlap = image_overlap([i for i in items if i.split == "train"], [i for i in items if i.split == "test"])
        if overlap.n_shared_images:
            log.warning("vqa_rad: %s; report this next to any test number or use an image-disjoint split",
                        overlap.summary())
    return Benchmark("vqa_rad", items, overlap)
