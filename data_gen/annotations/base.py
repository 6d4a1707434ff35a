"""What every dataset adapter returns, and the bookkeeping they share.

An adapter turns a dataset's annotation files into `ImageItem`s (one per image, all its lesion boxes in pixel
xyxy) and accounts for every annotation row: it becomes a lesion, is merged into another reader's lesion, marks
a negative ("No finding") image, or ends up in `rejects` with a reason. Whole-file problems (a missing file, a
CSV missing a column) raise `InputError` instead: nothing sensible can be built from such a file.

Rules shared by all adapters (tested in tests/data_gen/test_annotations.py):
  * Boxes: `x2 < x1` or `y2 < y1` is an *inverted* box and is rejected (`reason='inverted_box'`), never swapped:
    a swapped corner usually means the columns were mislabelled, and silently fixing it would hide that. A box
    with `x2 == x1` or `y2 == y1` is rejected as `zero_area`. Boxes partly or fully outside the image are
    checked later, once the image size is known.
  * Unparseable numbers (empty, text, NaN, inf) reject the row (`kind='row'`, `reason='bad_number'`), naming
    the file, line and column.
  * Class names are matched case- and whitespace-insensitively against the adapter's class map. A name not in
    it is kept under its raw name lowercased, counted in `stats['unknown_class:<name>']` and listed in
    `item.unknown_labels`.
  * An image is negative only when no row names a finding for it: "No finding" from one reader and a rejected
    box from another leaves the image rejected ('no_valid_annotations'), not negative.
  * The same image key seen again with a different path rejects the later one (`kind='image'`,
    `reason='duplicate_image_id'`): two files claiming one id would otherwise leak across splits.
  * Image paths named by annotation files stay inside the dataset: resolved (symbolic links followed), they must
    lie under `adapter.root` or the adapter's configured image folder, else the image is rejected
    (`reason='outside_root'`, `data_gen.paths.PathGuard`); later rows of that image are rejected as
    `image_rejected`.
  * A row repeated exactly (same image, reader, class and box) never becomes a second lesion:
    `options.duplicates='merge'` (default) absorbs it into the first (counted in `merged_boxes` and
    `duplicate_rows`), `'reject'` rejects it (`reason='duplicate_row'`).
  * Image files in the image folders that no row names are counted (`unannotated_images`), not read.

Stats keys (all adapters): `rows` annotation rows (or JSON annotations) read; `rows_rejected` rows that ended in
a reject; `no_finding_rows` "No finding" rows of kept images (`no_finding_overruled`: positive images that some
reader called normal); `merged_boxes` reader boxes absorbed into another box (IoU merging, exact duplicates);
`duplicate_rows` rows repeated exactly (merged or rejected); `unannotated_images` image files no row names (where
the adapter has image folders to list); `lesions`, `images`, `negative_images` in the result; `reject:<reason>`;
`unknown_class:<name>`. For every adapter `rows == lesions + merged_boxes + no_finding_rows + rows_rejected`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Optional, Sequence

from data_gen.errors import ConfigError, InputError
from data_gen.paths import PathGuard
from data_gen.types import NO_FINDING, ImageItem, LesionAnnotation, Reject
from medclm_jax.config_file import check_keys


@dataclasses.dataclass
class AnnotationSet:
    """An adapter's output: the images, what was rejected and why, and counters for dataset_info.

    Attributes:
      items: one `ImageItem` per image, in file order.
      rejects: rows, lesions and images that did not become part of an item (see `data_gen.types.Reject`).
      stats: counters (see the module docstring for the keys).
    """

    items: list[ImageItem]
    rejects: list[Reject]
    stats: dict[str, int]

    def __add__(self, other: "AnnotationSet") -> "AnnotationSet":
        stats = collections.Counter(self.stats)
        stats.update(other.stats)
        return AnnotationSet(self.items + other.items, self.rejects + other.rejects, dict(sorted(stats.items())))


# ---------------------------------------------------------------------------------------------------------------
# Config access (adapter configs are ml_collections ConfigDicts, plain dicts in tests).


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]`, or `default` when absent or None (a ConfigDict placeholder reads as None)."""
    if cfg is None:
        return default
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


# Every adapter reads `options.class_map` (raw class name -> canonical class; see `classes.class_map`) and
# `options.duplicates` (what to do with a row repeated exactly; see the module docstring).
COMMON_OPTIONS = ("class_map", "duplicates")
DUPLICATE_MODES = ("merge", "reject")
# File name endings counted as images by `Collector.count_unannotated` when the adapter has no single extension.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")


def options(cfg: Any, known: Sequence[str]) -> Mapping[str, Any]:
    """`cfg.options`, checked against the adapter's `known` options (plus `COMMON_OPTIONS`).

    Raises:
      ConfigFileError: an option the adapter does not read (the message names the nearest it does).
    """
    opts = cfg_get(cfg, "options", {}) or {}
    check_keys(opts, tuple(known) + COMMON_OPTIONS, "adapter.options")
    return opts


def duplicates_mode(opts: Mapping[str, Any]) -> str:
    """`options.duplicates`, checked: 'merge' (default) or 'reject'."""
    mode = str(opts.get("duplicates") or "merge")
    if mode not in DUPLICATE_MODES:
        raise ConfigError(f"adapter.options.duplicates: unknown value {mode!r}; expected one of "
                          f"{list(DUPLICATE_MODES)}")
    return mode


def as_dict(value: Any) -> dict:
    """A ConfigDict or mapping as a plain dict (empty for None)."""
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value)


def require_root(cfg: Any, adapter: str) -> str:
    root = cfg_get(cfg, "root")
    if not root:
        raise ConfigError(f"adapter.root is not set for the {adapter!r} adapter: pass root=/path/to/dataset in the "
                          f"config argument (configs/data/{adapter}.py:root=...)")
    return os.path.expanduser(str(root))


def resolve(root: str, path: str) -> str:
    """`path` as given when absolute, else relative to the dataset root."""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.join(root, path)


@functools.lru_cache(maxsize=64)
def _relative_name(path: str, root: str) -> str:
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    return os.path.basename(path) if rel.startswith("..") else rel


def row_ref(path: str, root: str, where: Any) -> str:
    """'annotations/train.csv:17': the file relative to the dataset root (basename if outside it) and the place."""
    return f"{_relative_name(path, root)}:{where}"


# ---------------------------------------------------------------------------------------------------------------
# Values.


def normalize_label(text: str) -> str:
    """Case- and whitespace-insensitive form of a class name: 'Nodule/Mass ' -> 'nodule/mass'."""
    return " ".join(str(text).split()).lower()


def parse_number(text: Any) -> float:
    """A finite float from a CSV/JSON field; ValueError (with the offending text) otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a number")
    value = float(text.strip()) if isinstance(text, str) else float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_fields(fields: Sequence[tuple[str, Any]]) -> list[float]:
    """Parses named fields [(name, text), ...]; the ValueError names the first bad field and its text."""
    out = []
    for name, text in fields:
        try:
            out.append(parse_number(text))
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {text!r} is not a number") from None
    return out


def parse_number_list(text: str, n: int) -> list[float]:
    """'x1, y1, x2, y2' -> n floats (DeepLesion's comma-separated fields); ValueError otherwise."""
    parts = [p for p in str(text).replace("[", " ").replace("]", " ").split(",")]
    if len(parts) != n:
        raise ValueError(f"expected {n} comma-separated numbers, got {text!r}")
    return [parse_number(p) for p in parts]


def box_problem(box: tuple[float, float, float, float]) -> Optional[str]:
    """'inverted_box', 'zero_area' or None for a pixel xyxy box (see the module docstring)."""
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        return "inverted_box"
    if x2 == x1 or y2 == y1:
        return "zero_area"
    return None


class ClassMap:
    """Raw dataset class names -> canonical lowercase classes.

    Args:
      table: raw name -> canonical name (keys matched after `normalize_label`; values normalized too).
      open_vocab: every name is known (COCO categories, the authors' JSON): a name missing from `table` maps to its
        normalized self. Closed vocabularies (VinDr, NIH, DeepLesion types) count the names they do not know.
    """

    def __init__(self, table: Optional[Mapping[str, str]] = None, open_vocab: bool = False):
        self.open_vocab = open_vocab
        self._table = {normalize_label(k): normalize_label(v) for k, v in (table or {}).items()}

    def lookup(self, raw: str) -> tuple[str, bool]:
        """(canonical class, known?) for a raw name; unknown names come back normalized."""
        key = normalize_label(raw)
        if key in self._table:
            return self._table[key], True
        return key, self.open_vocab

    @property
    def classes(self) -> list[str]:
        return sorted(set(self._table.values()))


# ---------------------------------------------------------------------------------------------------------------
# The accumulator every adapter fills.


class Collector:
    """Builds items image by image while counting every row.

    Args:
      root: the dataset root (row references are relative to it; image paths must stay under it).
      folders: more folders image paths may lie in (the adapter's configured image folder, which the user may
        have put elsewhere); config keys, never paths read from annotation files.
      duplicates: 'merge' or 'reject' for rows repeated exactly (`duplicates_mode`).
    """

    def __init__(self, root: str = "", *, folders: Sequence[Optional[str]] = (), duplicates: str = "merge"):
        self.root = root
        self.guard = PathGuard((root, *folders), what="adapter.root" + (" or the adapter's image folder"
                                                                        if any(folders) else ""))
        self.duplicates = duplicates
        self.stats: collections.Counter = collections.Counter()
        self.rejects: list[Reject] = []
        self.referenced: set[str] = set()  # normalized paths of images some row names (inside the dataset)
        self._items: dict[str, ImageItem] = {}
        self._item_rows: dict[str, str] = {}
        self._refused: dict[str, str] = {}  # image key -> the row where its path was refused
        self._box_rows: dict[str, dict[tuple, str]] = {}  # image key -> (reader, class, box) -> first row
        self._no_finding: collections.Counter = collections.Counter()  # image key -> its "No finding" rows
        self._claims: set[str] = set()  # images for which some row names a finding (valid box or not)

    # -- rejects and counters -----------------------------------------------------------------------------------
    def reject(self, kind: str, where: str, reason: str, detail: str = "", rows: int = 1) -> None:
        """Records a reject; `rows` is how many annotation rows it swallows (0 for an image-only reject)."""
        self.rejects.append(Reject(kind=kind, item=where, reason=reason, detail=detail))
        self.stats[f"reject:{reason}"] += 1
        self.stats["rows_rejected"] += rows

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n

    # -- items --------------------------------------------------------------------------------------------------
    def item(self, image_key: str, path: str, where: str, rows: int = 1, **fields: Any) -> Optional[ImageItem]:
        """The item of `image_key`, created on first sight with `fields`; None (and a reject) for a duplicate id,
        a path outside the dataset (`outside_root`), or a later row of an image refused for its path
        (`image_rejected`).

        Args:
          image_key: the dataset's image id.
          path: the image file; the same key with a *different* path is a duplicate id.
          where: the row reference, for the reject.
          rows: annotation rows lost if this is rejected.
          **fields: ImageItem fields for a new item (source, patient_key, modality, ...).
        """
        existing = self._items.get(image_key)
        if existing is None:
            if image_key in self._refused:
                self.reject("row", where, "image_rejected",
                            f"the image of this row was rejected at {self._refused[image_key]}", rows=rows)
                return None
            if not self.inside(path, where, rows=rows):
                self._refused[image_key] = where
                return None
            self.referenced.add(os.path.normpath(path))
            item = ImageItem(path=path, image_key=image_key, **fields)
            self._items[image_key] = item
            self._item_rows[image_key] = where
            return item
        if existing.path != path and os.path.normpath(existing.path) != os.path.normpath(path):
            # the detail names rows, not the id or file names (they can carry patient numbers)
            self.reject("image", where, "duplicate_image_id",
                        f"this image id is already used by {self._item_rows[image_key]} for another file", rows=rows)
            return None
        return existing

    def inside(self, path: str, where: str, rows: int = 0, field: str = "") -> bool:
        """True when `path` resolves under the dataset's folders; else False and an `outside_root` reject."""
        try:
            self.guard.check(path, field=field)
        except InputError as e:
            self.reject("image", where, e.reason, str(e), rows=rows)
            return False
        return True

    def refused(self, image_key: str) -> Optional[str]:
        """The row where this image's path was refused (`outside_root`), or None."""
        return self._refused.get(image_key)

    def count_unannotated(self, folders: Sequence[str], suffixes: Sequence[str]) -> int:
        """Counts the files in `folders` (not recursive) ending in one of `suffixes` that no row named.

        Adds the count to `stats['unannotated_images']` (present even when zero) and returns it. A folder that
        does not exist is skipped.

        Raises:
          InputError(reason='unreadable_folder'): a folder that cannot be listed (permissions, a symbolic link
            loop), naming it.
        """
        suffixes = tuple(s.lower() for s in suffixes)
        n = 0
        for folder in dict.fromkeys(folders):
            try:
                with os.scandir(folder) as entries:
                    names = [(e.name, e.path) for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                raise InputError(f"cannot list this image folder ({e.strerror or e}; a symbolic link loop?); fix "
                                 "the folder or point the adapter's image_dir elsewhere", path=folder,
                                 reason="unreadable_folder") from None
            for name, path in names:
                if name.lower().endswith(suffixes) and os.path.normpath(path) not in self.referenced:
                    n += 1
        self.stats["unannotated_images"] += n
        return n

    def add_lesion(self, item: ImageItem, box: tuple[float, float, float, float], raw_label: str,
                   class_map: ClassMap, where: str, reader: Optional[str] = None,
                   label: Optional[str] = None, known: bool = True) -> bool:
        """Validates one box and attaches it to `item`; False (and a lesion reject) for a bad box.

        The class is `class_map.lookup(raw_label)`, unless the caller already resolved it (`label`, `known`). A
        row that repeats an earlier row of this image exactly (reader, class, box) is merged or rejected
        (`self.duplicates`) and returns False.
        """
        self.claim(item.image_key)
        problem = box_problem(box)
        if problem is not None:
            self.reject("lesion", where, problem, f"box x1,y1,x2,y2 = {', '.join(f'{v:g}' for v in box)}")
            return False
        signature = (reader, normalize_label(raw_label), label, tuple(float(v) for v in box))
        seen = self._box_rows.setdefault(item.image_key, {})
        if signature in seen:
            self.stats["duplicate_rows"] += 1
            if self.duplicates == "reject":
                self.reject("row", where, "duplicate_row", f"repeats {seen[signature]} (same reader, class and box)")
            else:
                self.stats["merged_boxes"] += 1  # absorbed into the identical box of the earlier row
            return False
        seen[signature] = where
        if label is None:
            label, known = class_map.lookup(raw_label)
        if not known:
            self.note_unknown(item, raw_label, label)
        item.lesions.append(LesionAnnotation(box=tuple(float(v) for v in box), label=label,
                                             raw_label=str(raw_label), reader=reader, row=where))
        return True

    def note_unknown(self, item: ImageItem, raw_label: str, label: str) -> None:
        self.stats[f"unknown_class:{label}"] += 1
        if raw_label not in item.unknown_labels:
            item.unknown_labels = item.unknown_labels + (str(raw_label),)

    def mark_no_finding(self, image_key: str) -> None:
        """One 'No finding' row for an image (the image is negative unless it also has lesions)."""
        self._no_finding[image_key] += 1
        self.stats["no_finding_rows"] += 1

    def claim(self, image_key: str) -> None:
        """Some row says this image has a finding (call it even when the row is then rejected)."""
        self._claims.add(image_key)

    def claimed(self, image_key: str) -> bool:
        return image_key in self._claims

    def drop(self, image_key: str) -> None:
        """Forgets an item that was rejected as a whole (the caller recorded the reject)."""
        self._items.pop(image_key, None)
        self._no_finding.pop(image_key, None)
        self._box_rows.pop(image_key, None)

    def items(self) -> list[ImageItem]:
        return list(self._items.values())

    def finish(self) -> AnnotationSet:
        """Settles negatives, drops images left without any usable annotation (rejected), totals the counters."""
        out = []
        for key, item in self._items.items():
            if item.lesions:
                item.negative = False
                if key in self._no_finding:
                    self.stats["no_finding_overruled"] += 1  # some reader saw a lesion: the image is positive
            elif (key in self._no_finding or item.negative) and key not in self._claims:
                item.negative = True
            else:
                # a finding was named but every box of it was rejected: neither positive nor safely negative;
                # the image's "No finding" rows go down with it
                swallowed = self._no_finding.get(key, 0)
                self.stats["no_finding_rows"] -= swallowed
                self.reject("image", self._item_rows[key], "no_valid_annotations",
                            "every finding row of this image was rejected", rows=swallowed)
                continue
            out.append(item)
        for key in ("rows", "rows_rejected", "no_finding_rows", "merged_boxes", "duplicate_rows"):
            self.stats[key] += 0  # present even when zero, so the accounting identity can be checked
        self.stats["images"] = len(out)
        self.stats["negative_images"] = sum(item.negative for item in out)
        self.stats["lesions"] = sum(len(item.lesions) for item in out)
        return AnnotationSet(out, list(self.rejects), dict(sorted(self.stats.items())))


def is_no_finding(raw_label: str) -> bool:
    return normalize_label(raw_label) == NO_FINDING
