"""SLAKE 1.0 (Liu et al. 2021) in its public release layout:

    <root>/train.json, <root>/validate.json, <root>/test.json    JSON arrays, one object per question
    <root>/imgs/<img_name>                                       e.g. imgs/xmlab0/source.jpg

Fields used: `qid`, `img_name`, `question`, `answer`, `q_lang` (`en` / `zh`), `answer_type` (`OPEN` / `CLOSED`),
`modality` (`CT`, `MRI`, `X-Ray`), `location` (body part, kept as `organ`), `content_type` (kept as
`question_type`). The split is the file: `validate.json` is our `val`. By default only English questions are
loaded, as in the LLaVA-Med and most published SLAKE numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from medclm_jax.eval.benchmarks.items import (Benchmark, BenchmarkError, BenchmarkItem, check_images,
                                              normalize_modality, unique_ids)

SPLIT_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
IMAGE_DIR = "imgs"


def load_slake(root: str | Path, splits: Sequence[str] = ("train", "val", "test"), *,
               languages: Sequence[str] = ("en",), require_images: bool = True) -> Benchmark:
    """Load SLAKE questions of the given splits ("train", "val", "test") and languages from `root`."""
    root = Path(root)
    bad = set(splits) - set(SPLIT_FILES)
    if bad:
        raise BenchmarkError(f"slake: unknown split(s) {sorted(bad)}; use {sorted(SPLIT_FILES)}")
    rows = []
    for split in splits:
        path = root / SPLIT_FILES[split]
        if not path.is_file():
            raise BenchmarkError(f"slake: {path} not found; point root at the unpacked Slake1.0 folder "
                                 f"({', '.join(SPLIT_FILES.values())}, {IMAGE_DIR}/)")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}: invalid JSON ({e})") from None
        for i, rec in enumerate(records):
            where = f"{path}[{i}]"
            try:
                lang = str(rec["q_lang"]).strip()
                kind = str(rec["answer_type"]).strip().upper()
                fields = rec["qid"], rec["img_name"], rec["question"], rec["answer"]
            except (KeyError, TypeError) as e:
                raise BenchmarkError(f"{where}: missing field {e}; is this the SLAKE 1.0 release JSON?") from None
            if lang not in languages:
                continue
            if kind not in ("OPEN", "CLOSED"):
                raise BenchmarkError(f"{where}: answer_type {rec['answer_type']!r} is not OPEN or CLOSED")
            rows.append((split, kind, lang, fields, rec))
    ids = unique_ids([f"slake/{split}/{fields[0]}" for split, _, _, fields, _ in rows])
    items = tuple(
        BenchmarkItem(
            id=uid, dataset="slake", split=split, image_path=str((root / IMAGE_DIR / str(img)).resolve()),
            question=str(question), answer=str(answer).strip(), answer_type=kind.lower(),
            modality=normalize_modality(rec.get("modality")),
            organ=str(rec.get("location") or "").strip().lower() or None,
            question_type=str(rec.get("content_type") or "").strip() or None, language=lang,
        )
        for uid, (split, kind, lang, (qid, img, question, answer), rec) in zip(ids, rows)
    )
    if require_images:
        check_images(items, "slake")
    return Benchmark("slake", items)
