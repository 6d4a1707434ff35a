"""PMC-VQA (Zhang et al. 2023) in its public release layout (Hugging Face `xmcmic/PMC-VQA`):

    <root>/train.csv, <root>/test.csv, <root>/test_clean.csv     version 1 (`images.zip` -> <root>/images/)
    <root>/train_2.csv, <root>/test_2.csv                        version 2 (`images_2.zip`)
    <root>/<image dir>/<Figure_path>                             e.g. images/PMC1064097_F1.jpg

Columns used: `Figure_path`, `Question`, `Answer` (spelled `Anwser` in some releases; both are read),
`Choice A` .. `Choice D` (written `A:Diffuse uptake pattern`, sometimes with a leading space), `Answer_label`
(`Anwser_label` too; the letter of the correct choice). The loader strips the `A:` prefixes; the answer is the
text of the labelled choice (falling back to the `Answer` column when there is no label, and reading a bare
letter there as a label).

PMC-VQA is a multiple-choice benchmark, so items are `closed` with their `choices`; pass `answer_type="open"` to
score the answer text open-ended (as MedCLM reports it). Images are looked up in `image_dirs` in order (default
`images`, `images_2`, `figures`, the root itself); the first directory holding the file wins. The image folder
name of version 2 is not documented in the release card, hence the search. Ids are `pmc_vqa/<split>/<row>`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

from medclm_jax.eval.benchmarks.items import Benchmark, BenchmarkError, BenchmarkItem, check_images

SPLITS = ("train", "test", "test_clean")
_CHOICE_PREFIX = re.compile(r"^\s*([A-D])\s*:\s*")
_LETTERS = "ABCD"


def _first(row: dict, *names: str) -> str | None:
    for n in names:
        if n in row and row[n] is not None and str(row[n]).strip() != "":
            return str(row[n])
    return None


def _csv_path(root: Path, split: str, version: int) -> Path:
    if version == 2 and split == "test_clean":
        raise BenchmarkError("pmc_vqa: test_clean exists only in version 1")
    return root / (f"{split}.csv" if version == 1 else f"{split}_2.csv")


def load_pmc_vqa(root: str | Path, splits: Sequence[str] = ("train", "test"), *, version: int = 1,
                 answer_type: str = "closed", require_images: bool = True,
                 image_dirs: Sequence[str] = ("images", "images_2", "figures", ".")) -> Benchmark:
    """Load PMC-VQA questions of the given splits ("train", "test", "test_clean") of release `version` 1 or 2."""
    root = Path(root)
    if version not in (1, 2):
        raise BenchmarkError(f"pmc_vqa: version must be 1 or 2, got {version!r}")
    if answer_type not in ("open", "closed"):
        raise BenchmarkError(f"pmc_vqa: answer_type must be 'open' or 'closed', got {answer_type!r}")
    bad = set(splits) - set(SPLITS)
    if bad:
        raise BenchmarkError(f"pmc_vqa: unknown split(s) {sorted(bad)}; use {list(SPLITS)}")
    dirs = [root / d for d in image_dirs]
    items = []
    for split in splits:
        path = _csv_path(root, split, version)
        if not path.is_file():
            raise BenchmarkError(f"pmc_vqa: {path} not found; point root at the folder with the release's CSV files")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = {"Figure_path", "Question", "Choice A", "Choice B"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                lacking = sorted(need - set(reader.fieldnames or []))
                raise BenchmarkError(f"{path}: columns {reader.fieldnames} lack {lacking}")
            for i, row in enumerate(reader):
                where = f"{path}:{i + 2}"  # header is line 1
                choices, letters = [], []
                for letter in _LETTERS:
                    raw = _first(row, f"Choice {letter}")
                    if raw is not None:
                        choices.append(_CHOICE_PREFIX.sub("", raw).strip())
                        letters.append(letter)
                label = _first(row, "Answer_label", "Anwser_label")
                answer = _first(row, "Answer", "Anwser")
                if label is None and answer is not None and answer.strip() in _LETTERS:
                    label = answer.strip()
                if label is not None:
                    label = label.strip().upper()
                    if label not in letters:
                        raise BenchmarkError(f"{where}: answer label {label!r} names no choice (have {letters})")
                    answer = choices[letters.index(label)]
                elif answer is not None:
                    answer = _CHOICE_PREFIX.sub("", answer).strip()
                else:
                    raise BenchmarkError(f"{where}: neither an Answer nor an Answer_label")
                figure = row["Figure_path"].strip()
                image = next((d / figure for d in dirs if (d / figure).is_file()), dirs[0] / figure)
                items.append(BenchmarkItem(
                    id=f"pmc_vqa/{split}/{i}", dataset="pmc_vqa", split=split, image_path=str(image.resolve()),
                    question=row["Question"].strip(), answer=answer, answer_type=answer_type,
                    choices=tuple(choices)))
    if require_images:
        check_images(items, "pmc_vqa")
    return Benchmark("pmc_vqa", tuple(items))
