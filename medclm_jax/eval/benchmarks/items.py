"""The one normalized item every benchmark loader yields, the loaded-benchmark container, and image overlap.

Split names are normalized across datasets to `train`, `val`, `test` (plus PMC-VQA's `test_clean`); answer types
to `open` / `closed`; modality to our vocabulary (`xray`, `ct`, `mri`, `pathology`, ...) where the dataset gives
one. `reference_record(item)` turns an item into a line of our reference JSONL (`score.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterable, Sequence

_MODALITIES = {"x-ray": "xray", "xray": "xray", "x ray": "xray", "cxr": "xray", "radiograph": "xray", "ct": "ct",
               "mri": "mri", "mr": "mri", "us": "ultrasound", "ultrasound": "ultrasound", "pet": "pet"}


class BenchmarkError(ValueError):
    """A benchmark's files are missing or not in the public release layout; the message names the file/record."""


def normalize_modality(raw: str | None) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    key = str(raw).strip().lower()
    return _MODALITIES.get(key, key)


@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark question, whatever its source layout.

    Attributes:
      id: unique across the benchmark, `"{dataset}/{split}/{qid}"`.
      dataset: `vqa_rad`, `slake`, `pathvqa` or `pmc_vqa`.
      split: `train`, `val`, `test` (or `test_clean`).
      image_path: absolute path of the image file.
      question, answer: as released (answer converted to str).
      answer_type: `open` or `closed`.
      modality, organ: where the dataset labels them (organ is VQA-RAD's `image_organ`, SLAKE's `location`).
      question_type: VQA-RAD `question_type`, SLAKE `content_type`, else None.
      choices: multiple-choice options without their `A:` prefixes (PMC-VQA), else ().
      language: SLAKE `q_lang` (`en` / `zh`), else `en`.
    """

    id: str
    dataset: str
    split: str
    image_path: str
    question: str
    answer: str
    answer_type: str
    modality: str | None = None
    organ: str | None = None
    question_type: str | None = None
    choices: tuple[str, ...] = ()
    language: str = "en"


@dataclasses.dataclass(frozen=True)
class ImageOverlap:
    """Images shared between two splits, by content hash (SHA-256 of the file bytes).

    `n_shared_images`: distinct test images whose bytes also occur in train; `n_test_items_affected`: test
    questions asked about such an image; `examples`: a few shared test image paths.
    """

    n_train_images: int
    n_test_images: int
    n_shared_images: int
    n_test_items_affected: int
    examples: tuple[str, ...]

    def summary(self) -> str:
        return (f"{self.n_shared_images} of {self.n_test_images} test images also appear in train (by content hash); "
                f"{self.n_test_items_affected} test questions are about a training image")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its items in file order and, when both train and test were loaded and the loader
    checks it (VQA-RAD), the train/test image overlap."""

    name: str
    items: tuple[BenchmarkItem, ...]
    overlap: ImageOverlap | None = None

    def split(self, name: str) -> list[BenchmarkItem]:
        return [i for i in self.items if i.split == name]

    def __len__(self) -> int:
        return len(self.items)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_overlap(train: Sequence[BenchmarkItem], test: Sequence[BenchmarkItem]) -> ImageOverlap:
    """Content-hash overlap between the images of two item lists (each image file hashed once; missing files
    are skipped)."""
    cache: dict[str, str | None] = {}

    def digest(p: str) -> str | None:
        if p not in cache:
            cache[p] = _sha256(p) if Path(p).is_file() else None
        return cache[p]

    train_hashes = {h for h in (digest(i.image_path) for i in train) if h}
    test_paths = sorted({i.image_path for i in test})
    shared = [p for p in test_paths if digest(p) in train_hashes]
    shared_set = set(shared)
    return ImageOverlap(
        n_train_images=len({i.image_path for i in train}),
        n_test_images=len(test_paths),
        n_shared_images=len({digest(p) for p in shared}),
        n_test_items_affected=sum(1 for i in test if i.image_path in shared_set),
        examples=tuple(shared[:5]),
    )


def check_images(items: Iterable[BenchmarkItem], dataset: str) -> None:
    """Raise if any item's image file is missing (naming the first few and the count)."""
    missing = sorted({i.image_path for i in items if not Path(i.image_path).is_file()})
    if missing:
        raise BenchmarkError(
            f"{dataset}: {len(missing)} image file(s) not found, e.g. {missing[:3]}; unpack the release's image "
            "folder next to its question files, or pass require_images=False to load questions only")


def unique_ids(ids: Sequence[str]) -> list[str]:
    """Make ids unique by suffixing repeats with `#k` (k = 2, 3, ...) in order of appearance."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def reference_record(item: BenchmarkItem) -> dict:
    """A line of our reference JSONL for `item` (fields documented in `medclm_jax/eval/score.py`)."""
    rec = {"id": item.id, "question": item.question, "answer": item.answer, "answer_type": item.answer_type}
    if item.organ:
        rec["organ"] = item.organ
    if item.modality:
        rec["modality"] = item.modality
    return rec
