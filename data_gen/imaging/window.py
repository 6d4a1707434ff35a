"""Grey-level mapping to uint8: CT window presets, explicit windows and robust stretching.

The model sees 8-bit images, so every reader ends here. CT is windowed on Hounsfield units with the classic
linear window (values below `center - width/2` are black, above `center + width/2` white, linear between);
other modalities either use the VOI transform their DICOM carries (see `data_gen.imaging.dicom`) or a percentile
stretch.

Presets (center, width) in HU:
  * lung -600/1500, bone 400/1800 and mediastinum 40/400: the usual chest presets (e.g. Radiopaedia
    "Windowing (CT)": lung W1500 L-600, bone W1800 L400; mediastinum W350-400 L40-50).
  * abdomen 60/400: published abdominal soft-tissue presets range over L40-60, W350-400 (Radiopaedia gives
    W400 L50); we take L60, the upper end, which favours enhanced liver/spleen and keeps the preset distinct
    from mediastinum.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np

from data_gen.errors import ConfigError
from data_gen.paths import DEFAULT_MAX_FILE_MB
from medclm_jax.config_file import settings_from

# (center, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "bone": (400.0, 1800.0),
}

# Three windows stacked as RGB when `image.rgb_windows` is True (each channel shows one tissue range).
DEFAULT_RGB_WINDOWS: tuple[str, str, str] = ("lung", "mediastinum", "bone")

# Preset used by `ct_window='auto'` when neither the annotation nor the file gives a window.
AUTO_FALLBACK = {"ct": "mediastinum"}

Window = tuple[float, float]


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: `[center - width/2, center + width/2]` -> `[0, 255]`, clipped, rounded to nearest (ties to
    even).

    Args:
      values: float `[H, W]` (HU for CT, stored/rescaled values otherwise).
      center, width: the window in the units of `values`; width > 0.

    Returns:
      uint8 `[H, W]`.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    scaled = (np.asarray(values, dtype=np.float64) - lo) * 255.0 / width  # this order is exact on integer HU
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def range_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map `[lo, hi]` linearly to `[0, 255]` (clipped). A degenerate range maps everything to 0."""
    if not hi > lo:
        return np.zeros(np.shape(values), dtype=np.uint8)
    return window_to_uint8(values, (lo + hi) / 2.0, hi - lo)


def stretch_to_uint8(values: np.ndarray, mode: str = "percentile", q: float = 0.5) -> np.ndarray:
    """Contrast stretch for images without a window: `minmax` or `percentile` (q and 100-q percentiles).

    The percentile stretch ignores a few saturated pixels (collimator edges, burned-in text), which a min-max
    stretch would let squash the anatomy into a few grey levels.
    """
    v = np.asarray(values, dtype=np.float64)
    if mode == "minmax":
        lo, hi = float(v.min()), float(v.max())
    elif mode == "percentile":
        lo, hi = (float(x) for x in np.percentile(v, [q, 100.0 - q]))
        if not hi > lo:  # mostly flat image with a few outliers: fall back to the full range
            lo, hi = float(v.min()), float(v.max())
    else:
        raise ConfigError(f"image.xray_voi: unknown stretch {mode!r} (expected 'auto', 'percentile' or 'minmax')")
    return range_to_uint8(v, lo, hi)


def resolve_window(name: Union[str, Sequence[float]]) -> Window:
    """A preset name or an explicit `(center, width)` pair -> `(center, width)`."""
    if isinstance(name, str):
        try:
            return CT_WINDOWS[name]
        except KeyError:
            raise ConfigError(
                f"image.ct_window: unknown window {name!r}; expected one of {sorted(CT_WINDOWS)} or 'auto'"
            ) from None
    try:
        c, w = (float(x) for x in name)
    except (TypeError, ValueError):
        raise ConfigError(f"image.ct_window: {name!r} is neither a preset ({', '.join(sorted(CT_WINDOWS))}, auto) "
                          "nor a (center, width) pair in HU") from None
    if not w > 0:
        raise ConfigError(f"image.ct_window: width {w:g} in {name!r} must be > 0 HU (the pair is (center, width))")
    return (c, w)


def ct_to_uint8(
    hu: np.ndarray,
    window: Union[str, Sequence[float]] = "lung",
    *,
    rgb: Union[bool, Sequence] = False,
    hint: Optional[Window] = None,
    modality: str = "ct",
) -> np.ndarray:
    """Window a CT slice (HU) for display.

    Args:
      hu: float `[H, W]` Hounsfield units.
      window: a preset name (`lung`, `mediastinum`, `abdomen`, `bone`), an explicit `(center, width)`, or
        `auto`: `hint` when given (the dataset's window, e.g. DeepLesion `DICOM_windows`, or the DICOM's own
        window), else the modality's fallback preset (mediastinum for CT).
      rgb: False for one channel; True for the three default windows (lung, mediastinum, bone) as R, G, B; or a
        sequence of three windows (names or pairs).
      hint: `(center, width)` used by `auto`.
      modality: picks the `auto` fallback.

    Returns:
      uint8 `[H, W]`, or `[H, W, 3]` when `rgb`.
    """
    if rgb:
        names = DEFAULT_RGB_WINDOWS if rgb is True else tuple(rgb)
        if len(names) != 3:
            raise ConfigError(f"image.rgb_windows: expected True or three windows, got {rgb!r}")
        chans = [ct_to_uint8(hu, n, hint=hint, modality=modality) for n in names]
        return np.stack(chans, axis=-1)
    if isinstance(window, str) and window == "auto":
        c, w = hint if hint is not None else CT_WINDOWS[AUTO_FALLBACK.get(modality, "mediastinum")]
    else:
        c, w = resolve_window(window)
    return window_to_uint8(hu, c, w)


def deeplesion_window(low_high: Sequence[float]) -> Window:
    """DeepLesion's `DICOM_windows` column gives `low, high` in HU; convert to `(center, width)`."""
    lo, hi = (float(x) for x in low_high)
    return ((lo + hi) / 2.0, hi - lo)


_XRAY_VOI = ("auto", "percentile", "minmax")
# What to do with DICOM images that may carry patient names or dates drawn into the pixels (see ImageOptions).
BURNED_IN_POLICIES = ("reject", "allow")


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """The `image` config section, read once by `from_config`; the fields hold its defaults.

    Attributes:
      ct_window: CT preset name, `auto`, or an explicit `(center, width)` in HU.
      rgb_windows: False, True (lung/mediastinum/bone as R/G/B) or three windows.
      xray_voi: non-CT grey mapping. `auto`: the DICOM's VOI LUT or first window when it has one, else a
        0.5-99.5 percentile stretch; `percentile` or `minmax`: always that stretch.
      max_side: long side of the stored image in pixels (aspect kept). The readers ignore it: the pipeline
        resizes after linking, which runs on the original grid.
      max_file_mb: image files larger than this (MiB) are rejected unread (`too_large`); see `data_gen.paths`.
      burned_in_annotation: a DICOM whose Burned In Annotation (0028,0301) is YES has text (names, dates) drawn
        into its pixels, which no tag-level de-identification removes: `reject` (default; reason
        `burned_in_annotation`) or `allow` (after your own pixel scrubbing).
      secondary_capture: a Secondary Capture image (screenshots, scanned films, converted exports) without that
        tag may carry such text too: `reject` (default; reason `secondary_capture`) or `allow` (for a dataset
        known to be clean, e.g. RSNA Pneumonia, whose de-identified radiographs were stored as SC).
    """

    ct_window: Union[str, tuple[float, float]] = "lung"
    rgb_windows: Union[bool, tuple] = False
    xray_voi: str = "auto"
    max_side: int = 896
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    burned_in_annotation: str = "reject"
    secondary_capture: str = "reject"

    @classmethod
    def from_config(cls, cfg: Any) -> "ImageOptions":
        """Read an ml_collections ConfigDict, a dict, an ImageOptions or None (defaults).

        Raises:
          ConfigFileError: a key that is not a field (the message names the nearest) or a value of the wrong type.
          ConfigError: an unknown window, VOI mode or burned-in policy, or a bad `max_side` / `max_file_mb`;
            the message names the key, the value and the valid choices.
        """
        if isinstance(cfg, ImageOptions):
            return cfg
        s = settings_from(cls, cfg, "image")
        ct_window = s.ct_window
        if not isinstance(ct_window, str):
            ct_window = resolve_window(ct_window)  # (center, width) as floats, width > 0
        elif ct_window != "auto":
            resolve_window(ct_window)  # fail early on a typo
        rgb = s.rgb_windows
        if not isinstance(rgb, bool):
            rgb = tuple(rgb) if isinstance(rgb, (tuple, list)) else (rgb,)
            if len(rgb) != 3:
                raise ConfigError(f"image.rgb_windows: expected True/False or three windows, got {rgb!r}")
            for w in rgb:
                resolve_window(w)
        if s.xray_voi not in _XRAY_VOI:
            raise ConfigError(f"image.xray_voi: unknown value {s.xray_voi!r}; expected one of {list(_XRAY_VOI)}")
        if s.max_side < 1:
            raise ConfigError(f"image.max_side must be >= 1 (pixels of the long side), got {s.max_side}")
        if not s.max_file_mb > 0:
            raise ConfigError(f"image.max_file_mb must be > 0 (MiB), got {s.max_file_mb}")
        for key in ("burned_in_annotation", "secondary_capture"):
            if getattr(s, key) not in BURNED_IN_POLICIES:
                raise ConfigError(f"image.{key}: unknown value {getattr(s, key)!r}; expected one of "
                                  f"{list(BURNED_IN_POLICIES)}")
        return dataclasses.replace(s, ct_window=ct_window, rgb_windows=rgb)
