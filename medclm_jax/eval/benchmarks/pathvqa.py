"""PathVQA (He et al. 2020) in the two public layouts we could verify.

1. **The authors' release** (`pvqa/` from the UCSD-AI4H/PathVQA Google Drive folder):

       <root>/qas/<split>/<split>_qa.pkl      a pickled list of {"image", "question", "answer"} dicts
       <root>/images/<split>/<image>.jpg      e.g. images/test/test_0005.jpg

   with splits `train`, `val`, `test`. The pickles are read with an unpickler that refuses every global (the
   files hold only lists, dicts and strings), so a tampered file cannot run code.

2. **The Hugging Face copy** (`flaviagiammarino/path-vqa`): `<root>/data/<split>-NNNNN-of-NNNNN.parquet` with
   columns `image` (struct of `bytes`, `path`), `question`, `answer`, splits `train`, `validation`, `test`. Images
   are embedded, so the loader writes each once to `<image_dir>/<split>/<index>.<jpg|png>` and points the items
   there. `image_dir` is a folder of the caller's (`medclm eval` uses its output folder), never inside the
   benchmark's: a loader does not write into its input. Needs `pyarrow` (not a core dependency).

Neither layout labels answer types: a question is `closed` when its answer is "yes" or "no" (the convention of
the PathVQA paper and of LLaVA-Med's PathVQA split), else `open`. Modality is `pathology`. Item ids are
`pathvqa/<split>/<row index>` (the files carry no question id).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

from medclm_jax.eval.benchmarks.items import Benchmark, BenchmarkError, BenchmarkItem, check_images

SPLITS = ("train", "val", "test")
_HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: PathVQA pickles hold only lists/dicts/str")


def _answer_type(answer: str) -> str:
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


def _item(split: str, index: int, image_path: Path, question, answer) -> BenchmarkItem:
    answer = str(answer).strip()
    return BenchmarkItem(id=f"pathvqa/{split}/{index}", dataset="pathvqa", split=split,
                         image_path=str(image_path.resolve()), question=str(question), answer=answer,
                         answer_type=_answer_type(answer), modality="pathology")


def _load_pickled(root: Path, split: str) -> list[BenchmarkItem]:
    path = root / "qas" / split / f"{split}_qa.pkl"
    if not path.is_file():
        raise BenchmarkError(f"pathvqa: {path} not found; expected the release layout qas/<split>/<split>_qa.pkl")
    try:
        with open(path, "rb") as f:
            records = _NoGlobalsUnpickler(f, encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BenchmarkError(f"{path}: not a PathVQA question pickle ({e})") from None
    if not isinstance(records, list):
        raise BenchmarkError(f"{path}: expected a pickled list of question dicts, got {type(records).__name__}")
    items = []
    for i, rec in enumerate(records):
        try:
            image, question, answer = rec["image"], rec["question"], rec["answer"]
        except (KeyError, TypeError) as e:
            raise BenchmarkError(f"{path}[{i}]: missing field {e} (need image, question, answer)") from None
        items.append(_item(split, i, root / "images" / split / f"{image}.jpg", question, answer))
    return items


def _image_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def _load_parquet(root: Path, split: str, image_dir: Path) -> list[BenchmarkItem]:
    files = sorted((root / "data").glob(f"{_HF_SPLIT[split]}-*.parquet"))
    if not files:
        raise BenchmarkError(f"pathvqa: no {root / 'data'}/{_HF_SPLIT[split]}-*.parquet files")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchmarkError("pathvqa: the Hugging Face layout needs pyarrow (`pip install pyarrow`)") from None
    items, index = [], 0
    out_dir = image_dir / split
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        table = pq.read_table(path)
        missing = {"image", "question", "answer"} - set(table.column_names)
        if missing:
            raise BenchmarkError(f"{path}: missing column(s) {sorted(missing)}")
        for row in table.to_pylist():
            img = row["image"] or {}
            data = img.get("bytes") if isinstance(img, dict) else None
            if not data:
                raise BenchmarkError(f"{path}: row {index} has no embedded image bytes")
            target = out_dir / f"{index:06d}.{_image_ext(data)}"
            if not target.is_file() or target.stat().st_size != len(data):
                target.write_bytes(data)
            items.append(_item(split, index, target, row["question"], row["answer"]))
            index += 1
    return items


def load_pathvqa(root: str | Path, splits: Sequence[str] = SPLITS, *, require_images: bool = True,
                 image_dir: str | Path | None = None) -> Benchmark:
    """Load PathVQA questions of the given splits ("train", "val", "test") from either layout (auto-detected:
    `qas/` for the authors' release, `data/*.parquet` for the Hugging Face copy)."""
    root = Path(root)
    bad = set(splits) - set(SPLITS)
    if bad:
        raise BenchmarkError(f"pathvqa: unknown split(s) {sorted(bad)}; use {list(SPLITS)}")
    items: list[BenchmarkItem] = []
    if (root / "qas").is_dir():
        for split in splits:
            items += _load_pickled(root, split)
    elif (root / "data").is_dir():
        if image_dir is None:
            raise BenchmarkError(f"pathvqa: {root} is the Hugging Face copy, whose images are embedded in the "
                                 "parquet files: pass image_dir, a folder of yours to extract them to (medclm eval "
                                 "uses its --out folder)")
        target = Path(image_dir).resolve()
        if target == root.resolve() or root.resolve() in target.parents:
            raise BenchmarkError(f"pathvqa: image_dir {target} is inside the benchmark folder {root}; extract the "
                                 "images somewhere else (the loader never writes into its input)")
        for split in splits:
            items += _load_parquet(root, split, target)
    else:
        raise BenchmarkError(f"pathvqa: {root} holds neither qas/ (authors' release) nor data/*.parquet "
                             "(Hugging Face copy)")
    if require_images:
        check_images(items, "pathvqa")
    return Benchmark("pathvqa", tuple(items))
