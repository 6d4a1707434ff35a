"""Checks before a mask file is opened, and one error for every way a mask file can fail to decode.

Mask references come from annotation files and folder listings, so they are data: a mask folder may hold a
symbolic link to a file elsewhere on the machine, a FIFO (opening it blocks the worker for ever) or a file cut
short by an interrupted copy. The readers (`sources`, `nifti`, `coco`) call these before and around each open:

  * `require_file(path)`: the reference itself exists (`missing_masks`) and is a regular file of at most
    `MAX_MASK_BYTES` (`data_gen.paths.regular_file`: `not_a_file`, `too_large`, ...);
  * `listed_file(folder, name, guard)`: a file found by listing a mask folder also resolves inside that folder
    (`data_gen.paths.PathGuard`: `outside_root`);
  * `decoding(path, what)`: whatever the decoder raises on the file's bytes becomes an `InputError` naming the
    file, `truncated_mask` when the stream ends early, `too_large` for Pillow's decompression-bomb guard, else
    `bad_mask`, so the pipeline counts the fallback by reason instead of dropping the image as
    `unexpected_error:EOFError`;
  * `opencv()`: OpenCV (opencv-python-headless, a dependency), imported on first use, which decodes PNG/JPEG
    masks several times faster than Pillow and JPEGs at 1/2, 1/4, 1/8 scale (`sources.read_mask_image`).

Standard library only (no numpy, no Pillow), so every reader can import it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import zipfile
import zlib
from types import ModuleType
from typing import Iterator

from data_gen.errors import InputError
from data_gen.paths import DEFAULT_MAX_FILE_MB, PathGuard, max_bytes, regular_file

MAX_MASK_BYTES = max_bytes(DEFAULT_MAX_FILE_MB)  # a file on disk, and an npz member once decompressed
# One mask plane (a NIfTI slice, a label map, a COCO RLE): 2**28 pixels is 16384 x 16384, 4x the largest
# radiograph detector; anything declaring more is a damaged header, not anatomy.
MAX_MASK_PIXELS = 2**28

_EARLY_END = ("truncated", "not fully written", "ended before", "incomplete", "unexpected end")


def opencv() -> ModuleType:
    """The `cv2` module, imported here rather than at start-up (workers that read no PNG/JPEG masks skip it).

    Raises:
      ImportError: naming the package to install when it is missing (it is a dependency of this project).
    """
    try:
        return importlib.import_module("cv2")
    except ImportError as e:
        raise ImportError("reading PNG/JPEG organ masks needs OpenCV, a dependency of medclm-jax: "
                          "pip install opencv-python-headless (or reinstall the project)") from e


def require_file(path: str) -> None:
    """The mask reference itself: `missing_masks` when absent, else a regular file of sane size."""
    if not os.path.lexists(path):
        raise InputError("mask file not found; check masks.root / the item's mask_ref",
                         path=path, reason="missing_masks")
    regular_file(path, MAX_MASK_BYTES)


def folder_guard(folder: str) -> PathGuard:
    """Confines the files listed in one mask folder to it."""
    return PathGuard([folder], "the mask folder (masks.root / the item's mask_ref)")


def listed_file(folder: str, name: str, guard: PathGuard) -> str:
    """`folder/name` for a file found by listing `folder`: inside it after symbolic links, regular, of sane size."""
    path = os.path.join(folder, name)
    guard.check(path, field="mask file")
    regular_file(path, MAX_MASK_BYTES)
    return path


def failure_reason(e: BaseException) -> str:
    """The countable reason for a decoder's exception (see the module docstring)."""
    if isinstance(e, EOFError):
        return "truncated_mask"
    if type(e).__name__ == "DecompressionBombError":  # Pillow's, matched by name: no Pillow import here
        return "too_large"
    if isinstance(e, (OSError, ValueError, zlib.error, zipfile.BadZipFile)):
        text = str(e).lower()
        if any(words in text for words in _EARLY_END):
            return "truncated_mask"
    return "bad_mask"


_HOW = {"truncated_mask": "the file ends early (an interrupted copy or export?)",
        "too_large": "the image declares more pixels than the decoder's safety limit",
        "bad_mask": "the file is damaged or is not what its name says"}


@contextlib.contextmanager
def decoding(path: str, what: str) -> Iterator[None]:
    """Turns whatever a decoder raises on a bad file into `InputError` naming the file (see the module docstring).

    Decoders (Pillow, numpy, zipfile, gzip, nibabel) raise many types on a damaged file: OSError, EOFError,
    ValueError, zlib.error, BadZipFile, SyntaxError, nibabel's ImageFileError... Only the decoding call is
    wrapped, so the net is no wider than the file's own bytes. `MemoryError` passes through: it is the machine,
    not the file; an `InputError` raised inside (a check on the content) passes through unchanged.
    """
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        reason = failure_reason(e)
        detail = str(e).replace(path, os.path.basename(path))  # decoders repeat the path; name it once
        raise InputError(f"cannot read {what}: {_HOW[reason]} ({type(e).__name__}: {detail}); re-export or "
                         "re-copy it", path=path, reason=reason) from e
