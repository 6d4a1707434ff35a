"""`load_masks`: an image's organ masks from wherever the config says, on the image grid, with display names.

`masks.source` selects the reader; `'auto'` infers it from the item's `mask_ref` (or, when that is None, from
`masks.root`/<image key>):

  folder of PNG/JPEG           -> per-organ PNGs (`png_dir`)
  folder of .nii/.nii.gz       -> TotalSegmentator per-class (`totalseg_dir`)
  one .nii/.nii.gz file        -> TotalSegmentator `--ml` multilabel (`totalseg_ml`)
  .npy / .npz                  -> CXAS stack (`cxas_npz`)
  .json                        -> COCO or label map + names (`labelmap`)
  nothing                      -> the built-in segmenter when `masks.builtin` (default True), else no masks

Explicit sources: png_dir | cxas_npz | totalseg_dir | totalseg_ml | labelmap | builtin | totalsegmentator_run |
cxas_run | none. A mask reference that does not exist raises `InputError(reason='missing_masks')`, masks that are
all empty `reason='empty_masks'`; the pipeline decides whether to fall back to the built-in segmenter.

Mask references are data (an annotation's `mask_ref`, a COCO image id used as the key), so a reference built from
`masks.root` must resolve, symbolic links followed, inside `masks.root` (`reason='outside_root'`); the readers
check every file they open (`data_gen.segment.sources`). Every failure names the file, relative to `masks.root`
(`masks.root/<image>/liver.nii.gz`, the form the build's rejects use) when it lies there, with a countable reason:
`missing_masks`, `empty_masks`, `outside_root`, `not_a_file`, `too_large`, `truncated_mask`, `bad_mask`, ...

Masks are held on the linking grid (`data_gen.segment.grid`): the image grid when its long side is at most
`masks.grid_max_side` (1024 by default), else cells of 2, 4, ... pixels (`OrganMasks.cell`), so 159 CXAS masks of a
2048 x 2048 radiograph hold 167 MB instead of 667 MB. A mask on a finer grid comes onto it by area, one on a coarser
grid by nearest neighbour; empty masks are dropped and masks whose raw names share a display name are merged (OR).
`OrganMasks.source` names the reader, with `+resampled` appended when any mask was on neither the image's grid nor
the linking grid, and `builtin+not_chest` when the built-in segmenter found
no pair of lung fields on a radiograph (a limb, a lateral view: no thoracic organs, the lesions link to
`unknown`), so the pipeline's per-source counter also counts those.
`load_masks_with_stats` additionally returns the counts.

The `masks` config section is read once into `MaskSettings`, whose fields hold its defaults.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from data_gen.errors import ConfigError, InputError
from data_gen.paths import PathGuard
from data_gen.segment import names as organ_names
from data_gen.segment import sources
from data_gen.segment.grid import cell_for, fit_plane, grid_shape, mask_bounds
from data_gen.types import ImageItem, LoadedImage, OrganMasks
from medclm_jax.config_file import settings_from

SOURCES = ("auto", "png_dir", "cxas_npz", "totalseg_dir", "totalseg_ml", "labelmap", "builtin",
           "totalsegmentator_run", "cxas_run", "none")
_STACK_SUFFIXES = (".npz", ".npy")


@dataclasses.dataclass(frozen=True)
class MaskSettings:
    """The `masks` config section, read once by `from_config`; the fields hold its defaults.

    Attributes:
      source: the reader (`SOURCES`; see the module docstring).
      root: default folder of per-image masks (`<root>/<image key>...`); relative `mask_ref`s are relative to it.
      builtin: fall back to the built-in segmenter when an image has no masks.
      fast: `totalsegmentator_run`: TotalSegmentator's fast (3 mm) model.
      device: `totalsegmentator_run` / `cxas_run`: 'gpu' | 'cpu' ...; None: the tool's own default (gpu for
        TotalSegmentator, cpu for CXAS).
      cxas_weights: `cxas_run`: the folder holding CXAS's weights (never downloaded by a build).
      cxas_model: `cxas_run`: the CXAS model name.
      grid_max_side: the linking grid's long side at most (`data_gen.segment.grid`); 0: the image grid.
    """

    source: str = "auto"
    root: Optional[str] = None
    builtin: bool = True
    fast: bool = False
    device: Optional[str] = None
    cxas_weights: str = "~/weights"
    cxas_model: str = "UNet_ResNet50_default"
    grid_max_side: int = 1024

    @classmethod
    def from_config(cls, cfg: Any) -> "MaskSettings":
        """Reads the `masks` ConfigDict, a dict, a MaskSettings or None (the defaults).

        Raises:
          ConfigFileError: a key that is not a field (the message names the nearest) or a value of the wrong type.
          ConfigError: an unknown `source`.
        """
        s = settings_from(cls, cfg, "masks")
        if s.source not in SOURCES:
            raise ConfigError(f"masks.source: unknown source {s.source!r}; one of {', '.join(SOURCES)}")
        if s.grid_max_side and s.grid_max_side < 64 or s.grid_max_side < 0:
            raise ConfigError(f"masks.grid_max_side must be >= 64 pixels (or 0: the image grid); got "
                              f"{s.grid_max_side}")
        return s


def _existing(path: str) -> Optional[str]:
    return path if os.path.exists(path) else None


def _lexically_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _root_guard(root: str) -> PathGuard:
    return PathGuard([root], "masks.root")


def resolve_mask_ref(item: ImageItem, cfg: Any) -> Optional[str]:
    """The item's mask file/folder: `item.mask_ref` (relative to `masks.root` when relative), else the first of
    `root/<key>`, `root/<key>.npz|.npy|.nii.gz|.nii|.json` that exists, for key in (image key, image file stem).

    Returns None when there is nothing to look for (no mask_ref and no root). A configured reference that does not
    exist is returned as is (the reader raises `missing_masks` naming it). An absolute `mask_ref` is the adapter's
    (checked against the dataset root when it read the annotation) and is returned as is.

    Raises:
      InputError(reason='outside_root'): a reference built from `masks.root` that resolves outside it, symbolic
        links followed: a relative `mask_ref` of `../x`, an existing `root/<key>...` that is a link out, or
        image keys that all lead out (a COCO id of `../../x` and no usable file name); the same message whether
        or not the target exists.
    """
    root = MaskSettings.from_config(cfg).root
    if item.mask_ref:
        ref = str(item.mask_ref)
        if root and not os.path.isabs(ref):
            ref = os.path.join(str(root), ref)
            _root_guard(str(root)).check(ref, field="mask_ref")
        return ref
    if not root:
        return None
    guard = _root_guard(str(root))
    keys: list[str] = []
    for k in (item.image_key, os.path.basename(str(item.path))):
        stem = sources.nifti_stem(k) or os.path.splitext(k)[0]
        for cand in (k, stem):
            if cand and cand not in keys:
                keys.append(cand)
    # A key that names a place outside the root (an absolute image key, a COCO id of `../../x`) is no candidate;
    # it is dropped before probing, so whether a file exists out there never changes the outcome. A candidate
    # inside the root that is a symbolic link out of it is refused (below), not skipped.
    base = os.path.normpath(str(root))
    inside = [k for k in keys if _lexically_under(os.path.normpath(os.path.join(base, k)), base)]
    if keys and not inside:
        guard.check(os.path.join(str(root), keys[0]), field="mask_ref")  # raises outside_root
    for key in inside:
        for suffix in ("", ".npz", ".npy", ".nii.gz", ".nii", ".json"):
            found = _existing(os.path.join(str(root), key + suffix))
            if found:
                guard.check(found, field="mask_ref")  # root/<key>.npz may itself be a link out of the root
                return found
    return os.path.join(str(root), inside[0] if inside else "")


def infer_source(ref: str) -> str:
    """The reader for a mask reference (see the module docstring)."""
    if os.path.isdir(ref):
        entries = os.listdir(ref)
        if any(sources.nifti_stem(f) for f in entries):
            return "totalseg_dir"
        if any(f.lower().endswith(sources.PNG_SUFFIXES) for f in entries):
            return "png_dir"
        raise InputError("the mask folder holds neither PNG nor NIfTI masks", path=ref, reason="missing_masks")
    low = ref.lower()
    if sources.nifti_stem(os.path.basename(ref)):
        return "totalseg_ml"
    if low.endswith(_STACK_SUFFIXES):
        return "cxas_npz"
    if low.endswith(".json"):
        return "labelmap"
    if not os.path.exists(ref):
        raise InputError("mask reference not found; check masks.root / the item's mask_ref", path=ref,
                         reason="missing_masks")
    raise InputError("cannot tell the mask format from the name (expected a folder, .nii(.gz), .npy/.npz or "
                     ".json); set masks.source", path=ref, reason="bad_mask")


def _read(source: str, ref: str, item: ImageItem, image: LoadedImage, cell: int) -> sources.RawMasks:
    if source == "png_dir":  # decoded onto the linking grid: no full-resolution stack is ever held
        return sources.read_png_dir(ref, (image.height, image.width), cell)
    if source == "cxas_npz":
        return sources.read_cxas_stack(ref)
    if source == "totalseg_dir":
        return sources.read_totalseg_dir(ref, item.slice_index)
    if source == "totalseg_ml":
        return sources.read_totalseg_ml(ref, item.slice_index)
    if source == "labelmap":
        keys = (item.image_key, os.path.basename(str(item.path)))
        return sources.read_json_masks(ref, item.slice_index, keys, (image.height, image.width))
    raise ConfigError(f"masks.source: unknown source {source!r}; one of {', '.join(SOURCES)}")


def to_organ_masks(raw_names: Sequence[str], masks: Union[np.ndarray, list[np.ndarray]], shape: tuple[int, int],
                   source: str, cell: int = 1, own: bool = False) -> tuple[OrganMasks, dict[str, int]]:
    """Raw masks on any grid -> OrganMasks with display names on the linking grid of an image of `shape`
    (`cell` pixels per cell; 1: the image grid); counts what it changed.

    Args:
      own: `masks` is a stack nobody else holds (a reader's), so dropping and merging compact it in place rather
        than into a second stack (at CXAS scale the copy would double the worker's peak memory).

    Returns:
      (OrganMasks, stats) with stats keys `masks_read`, `resampled` (masks on neither the image's grid nor the
      linking grid), `empty_dropped`, `merged`, `kept`.
    """
    stats = {"masks_read": len(raw_names), "resampled": 0, "empty_dropped": 0, "merged": 0}
    grid_hw = grid_shape(shape[0], shape[1], cell)
    dtype = np.dtype(bool) if cell == 1 else np.dtype(np.uint8)  # bool pixels, or each cell's coverage
    if isinstance(masks, np.ndarray) and masks.ndim == 3 and masks.shape[1:] == grid_hw and \
            (cell == 1 or masks.dtype == dtype):
        grid = masks.astype(dtype, copy=False)
        own = own or grid is not masks
    else:
        grid = np.empty((len(raw_names),) + grid_hw, dtype)
        for i, m in enumerate(masks):
            stats["resampled"] += m.shape not in (grid_hw, tuple(shape))
            onto = m.dtype == dtype and m.shape == grid_hw  # a reader's plane already on the grid
            grid[i] = m if onto else fit_plane(m.astype(bool, copy=False), grid_hw, coverage=cell > 1)
        own = True
    bounds = np.stack([mask_bounds(plane) for plane in grid]) if len(grid) else np.zeros((0, 4), np.int64)
    nonempty = bounds[:, 1] > bounds[:, 0]
    stats["empty_dropped"] = int((~nonempty).sum())
    order: list[str] = []
    index: dict[str, list[int]] = {}
    for i, raw in enumerate(raw_names):
        if not nonempty[i]:
            continue
        d = organ_names.display_name(raw)
        if d not in index:
            order.append(d)
            index[d] = []
        index[d].append(i)
    kept_bounds = np.zeros((len(order), 4), np.int64)
    for j, d in enumerate(order):  # a merged organ's box holds all of its parts' boxes
        b = bounds[index[d]]
        kept_bounds[j] = (b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max())
    if len(order) == len(raw_names):
        out = grid  # nothing dropped or merged: no copy (159 masks at 2048 px are 667 MB)
    else:
        # In place when owned: the j-th kept name first occurs at raw index >= j, so every plane is read before
        # a later write can reach it.
        out = grid if own else np.empty((len(order),) + grid_hw, bool)
        for j, d in enumerate(order):
            idx = index[d]
            out[j] = grid[idx[0]] if len(idx) == 1 else grid[idx].max(axis=0)  # union (of coverage: its bound)
            stats["merged"] += len(idx) - 1
        out = out[:len(order)]
    stats["kept"] = len(order)
    label = source + ("+resampled" if stats["resampled"] else "")
    return OrganMasks(names=order, masks=out, source=label, cell=cell, bounds=kept_bounds), stats


def load_masks_with_stats(item: ImageItem, image: LoadedImage, cfg: Any) -> tuple[OrganMasks, dict[str, int]]:
    """`load_masks`, also returning the counts of `to_organ_masks` (plus `builtin` when it ran)."""
    settings = MaskSettings.from_config(cfg)
    source = settings.source
    shape = (image.height, image.width)
    cell = cell_for(image.height, image.width, settings.grid_max_side)
    if source == "none":
        return OrganMasks(names=[], masks=np.zeros((0,) + shape, bool), source="none"), {"kept": 0}
    if source == "builtin":
        return _builtin(image, cell)
    if source in ("totalsegmentator_run", "cxas_run"):
        from data_gen.segment import external  # local: the optional segmenters are heavy imports

        raw = external.run(source, item, image, settings)
        om, stats = to_organ_masks(raw.names, raw.masks, shape, raw.source, cell, own=True)
        return _check_nonempty(om, stats, raw.path)

    try:
        return _load_from_files(item, image, settings, source, cell)
    except InputError as e:
        raise _named_under_root(e, settings.root) from e


def _named_under_root(e: InputError, root: Optional[str]) -> InputError:
    """`e` with its file written as `masks.root/<relative path>` when it lies under `masks.root` (the form the
    build's rejects use), so a message never carries the machine's folders; `e` itself otherwise."""
    if not root or not e.path:
        return e
    written = e.path if os.path.isabs(e.path) else os.path.join(os.getcwd(), e.path)
    where = ", ".join(x for x in (e.path, f"field {e.field}" if e.field else "") if x)
    message = str(e)[len(where) + 2:] if str(e).startswith(where + ": ") else str(e)
    for folder in dict.fromkeys((str(root), os.path.abspath(os.path.expanduser(str(root))),
                                 os.path.realpath(os.path.expanduser(str(root))))):
        folder = folder.rstrip(os.sep)
        for path in (e.path, written):
            if path == folder or path.startswith(folder + os.sep):
                named = "masks.root" + path[len(folder):]  # as written: `masks.root/../x` stays visible
                return InputError(message.replace(e.path, named), path=named, field=e.field, reason=e.reason)
    return e


def _load_from_files(item: ImageItem, image: LoadedImage, settings: MaskSettings, source: str,
                     cell: int) -> tuple[OrganMasks, dict[str, int]]:
    shape = (image.height, image.width)
    ref = resolve_mask_ref(item, settings)
    if ref is None:
        if source == "auto":
            if settings.builtin:
                return _builtin(image, cell)
            return OrganMasks(names=[], masks=np.zeros((0,) + shape, bool), source="none"), {"kept": 0}
        raise InputError(f"masks.source={source!r} but the item has no mask_ref and masks.root is not set",
                         path=str(item.path), field="mask_ref", reason="missing_masks")
    if source == "auto":
        if not os.path.exists(ref):
            raise InputError("mask reference not found; check masks.root / the item's mask_ref", path=ref,
                             reason="missing_masks")
        source = infer_source(ref)
    raw = _read(source, ref, item, image, cell)
    om, stats = to_organ_masks(raw.names, raw.masks, shape, raw.source, cell, own=True)
    return _check_nonempty(om, stats, ref)


def _check_nonempty(om: OrganMasks, stats: dict[str, int], ref: str) -> tuple[OrganMasks, dict[str, int]]:
    if len(om) == 0:
        raise InputError(f"all {stats['masks_read']} masks are empty on this image", path=ref,
                         reason="empty_masks")
    return om, stats


def _builtin(image: LoadedImage, cell: int) -> tuple[OrganMasks, dict[str, int]]:
    from data_gen.segment import builtin

    found = builtin.organs(image)
    shape = (image.height, image.width)
    masks = np.stack(found.masks) if found.masks else np.zeros((0,) + shape, bool)
    # A note (a radiograph that is not a frontal chest) joins the source, so the pipeline's counter counts it.
    om, stats = to_organ_masks(found.names, masks, shape, "builtin" + (f"+{found.note}" if found.note else ""),
                               cell, own=True)
    stats["builtin"] = 1
    if found.note:
        stats[found.note] = 1
    return om, stats


def load_masks(item: ImageItem, image: LoadedImage, cfg: Any) -> OrganMasks:
    """The organ masks of one image on its pixel grid (the pipeline's step 2).

    Args:
      item: the image item (`mask_ref`, `slice_index`, `image_key`, `path` are used).
      image: the loaded image (its grid, and `hu`/`pixels` for the built-in segmenter).
      cfg: `MaskSettings`, or the `masks` ConfigDict / dict it is read from (see the module docstring).

    Returns:
      OrganMasks with bool `[K, h, w]` masks on the linking grid of `image.pixels` (`OrganMasks.cell` pixels per
      cell; the image grid itself up to `masks.grid_max_side`), display names, no empty mask. With the built-in
      segmenter K may be 0 when it finds nothing (e.g. a blank image).

    Raises:
      InputError: naming the file (as `masks.root/...` when under it) with a countable reason: `missing_masks`,
        `empty_masks`, `outside_root`, `not_a_file`, `too_large`, `truncated_mask`, `bad_mask`, ... (see the
        module docstring).
      ConfigError: an unknown `masks.source`.
    """
    return load_masks_with_stats(item, image, cfg)[0]
