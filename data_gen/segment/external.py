"""Optional adapters that run TotalSegmentator (CT) or CXAS (chest radiographs) when they are installed.

Neither is a dependency: they are found with `importlib.util.find_spec`, and their weights must already be on disk
(both download weights on first use, which a build must never do). Point the config at the weights:

  masks.source = 'totalsegmentator_run'   needs `totalsegmentator` and its weights under `$TOTALSEG_HOME_DIR`
                                          (default `~/.totalsegmentator`); the item's image must be a NIfTI volume
                                          (the key slice of its `--ml` output is used); options masks.fast,
                                          masks.device ('gpu' (default) | 'cpu').
  masks.source = 'cxas_run'               needs `cxas` and its weights under masks.cxas_weights (default
                                          `~/weights`); options masks.cxas_model ('UNet_ResNet50_default'),
                                          masks.device ('cpu' (default) | 'gpu' ...). CXAS segments the windowed
                                          image we already loaded (written to a temporary PNG), so its masks are
                                          on our grid.

The options are fields of `data_gen.segment.load.MaskSettings`, which holds their defaults.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from data_gen.errors import InputError
from data_gen.segment import names as organ_names
from data_gen.segment import sources
from data_gen.types import ImageItem, LoadedImage

if TYPE_CHECKING:
    from data_gen.segment.load import MaskSettings


def available(tool: str) -> bool:
    """Whether the package of `tool` ('totalsegmentator' or 'cxas') is importable."""
    return importlib.util.find_spec(tool) is not None


def _unavailable(msg: str, path: str = "") -> InputError:
    return InputError(msg, path=path, reason="segmenter_unavailable")


def _has_files(folder: str) -> bool:
    return os.path.isdir(folder) and any(files for _, _, files in os.walk(folder))


def run_totalsegmentator(item: ImageItem, image: LoadedImage, settings: "MaskSettings") -> sources.RawMasks:
    """TotalSegmentator `total` with `--ml` on the item's NIfTI volume -> RawMasks of the key slice."""
    if not available("totalsegmentator"):
        raise _unavailable("masks.source='totalsegmentator_run' needs `pip install TotalSegmentator`")
    home = os.environ.get("TOTALSEG_HOME_DIR", os.path.expanduser("~/.totalsegmentator"))
    if not _has_files(home):
        raise _unavailable("TotalSegmentator weights not found (they would be downloaded; builds never download)."
                           " Run TotalSegmentator once by hand or set TOTALSEG_HOME_DIR", path=home)
    path = str(item.path)
    if not sources.nifti_stem(os.path.basename(path)):
        raise InputError("TotalSegmentator needs a NIfTI volume; convert the series first or supply its masks",
                         path=path, reason="segmenter_unsupported_input")
    api = importlib.import_module("totalsegmentator.python_api")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seg.nii.gz")
        kwargs = {"ml": True, "fast": settings.fast, "quiet": True}
        if "device" in inspect.signature(api.totalsegmentator).parameters:  # older releases have no `device`
            kwargs["device"] = settings.device or "gpu"
        api.totalsegmentator(path, out, **kwargs)
        raw = sources.read_totalseg_ml(out, item.slice_index)
    raw.source = "totalsegmentator_run"
    raw.path = path
    return raw


def run_cxas(item: ImageItem, image: LoadedImage, settings: "MaskSettings") -> sources.RawMasks:
    """CXAS on the loaded (windowed) radiograph -> RawMasks `[159, H, W]` in CXAS channel order."""
    if not available("cxas"):
        raise _unavailable("masks.source='cxas_run' needs `pip install cxas`")
    weights = os.path.expanduser(settings.cxas_weights)
    if not _has_files(weights):
        raise _unavailable("CXAS weights not found (they would be downloaded; builds never download); set "
                           "masks.cxas_weights", path=weights)
    segmentor = importlib.import_module("cxas.segmentor")
    model = segmentor.CXAS(model_name=settings.cxas_model, gpus=settings.device or "cpu")
    pixels = image.pixels if image.pixels.ndim == 2 else image.pixels[..., 0]
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "image.png")
        Image.fromarray(np.ascontiguousarray(pixels)).save(png)
        pred = model.process_file(filename=png, do_store=False)
    seg = pred["segmentation_preds"][0]
    seg = np.asarray(seg.detach().cpu().numpy() if hasattr(seg, "detach") else seg).astype(bool)
    names = organ_names.cxas_classes()
    if seg.shape[0] != len(names):
        raise InputError(f"CXAS returned {seg.shape[0]} channels, expected {len(names)}", path=str(item.path),
                         reason="bad_mask")
    return sources.RawMasks(list(names), seg, "cxas_run", str(item.path))


def run(source: str, item: ImageItem, image: LoadedImage, settings: "MaskSettings") -> sources.RawMasks:
    if source == "totalsegmentator_run":
        return run_totalsegmentator(item, image, settings)
    if source == "cxas_run":
        return run_cxas(item, image, settings)
    raise ValueError(f"not an external segmenter: {source!r}")
