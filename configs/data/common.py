"""The build-config schema shared by every `configs/data/<name>.py`, and its command-line argument parser.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out DIR

The text after the colon is `arg`: comma-separated `key=value` pairs. A key is a short alias (`root`, `masks`,
`merge`, ... see `ALIASES`) or a dotted config path (`image.max_side=512`, `adapter.options.merge_iou=0.4`).
Values take the type of the field they set (int, float, bool: true/false/1/0/yes/no); fields without a fixed
type (options) get int, float, bool or None (`none`/`null`) when the text reads as one, else the text; `none`
unsets a path placeholder (`modality=none`). Paths containing commas cannot be passed this way: use
`--config.adapter.root=...` overrides instead.
"""

from __future__ import annotations

from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from data_gen.errors import ConfigError

# short key -> config path
ALIASES = {
    "root": "adapter.root",
    "csv": "adapter.csv",
    "json": "adapter.json",
    "image_dir": "adapter.image_dir",
    "masks": "masks.root",
    "mask_source": "masks.source",
    "builtin": "masks.builtin",
    "merge": "adapter.options.merge",
    "merge_iou": "adapter.options.merge_iou",
    "modality": "adapter.modality",
    "max_side": "image.max_side",
    "ct_window": "image.ct_window",
    "rgb_windows": "image.rgb_windows",
    "backend": "synth.backend",
    "seed": "synth.seed",
    "llm_url": "synth.llm.base_url",
    "llm_model": "synth.llm.model",
    "val": "split.val",
    "test": "split.test",
    "hard_fraction": "curriculum.hard_fraction",
    "records_per_shard": "write.records_per_shard",
    "salt": "salt",
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def base_config(name: str, adapter: str) -> ml_collections.ConfigDict:
    """Every section of the build config with its defaults; dataset configs fill `adapter` and change the rest.

    Args:
      name: dataset name (also `image/source` in the records).
      adapter: the adapter registry key (`data_gen.annotations.ADAPTERS`).
    """
    str_ = lambda: config_dict.placeholder(str)  # noqa: E731  (unset path: None, still typed for overrides)
    config = ml_collections.ConfigDict()
    config.name = name
    config.adapter = ml_collections.ConfigDict({
        "name": adapter,
        "root": str_(),  # the dataset folder; relative file names below are relative to it
        "source": name,  # written to item.source
        "options": ml_collections.ConfigDict({"class_map": ml_collections.ConfigDict()}),
    })
    config.image = ml_collections.ConfigDict({
        "max_side": 896,  # long side of the stored image (aspect kept)
        "ct_window": "lung",  # lung | mediastinum | abdomen | bone | auto
        "rgb_windows": False,  # True: three CT windows as RGB channels
        "xray_voi": "auto",  # radiographs: the DICOM's VOI LUT / window when present
    })
    config.masks = ml_collections.ConfigDict({
        # auto: item.mask_ref, format inferred (PNG folder, NIfTI folder or file, npy/npz, json), else builtin;
        # or one of png_dir | cxas_npz | totalseg_dir | totalseg_ml | labelmap | builtin | totalsegmentator_run |
        # cxas_run | none
        "source": "auto",
        "root": str_(),  # default folder of per-image masks (<root>/<image key>/...)
        "builtin": True,  # fall back to the built-in segmenter when an image has no masks
    })
    config.link = ml_collections.ConfigDict({
        "min_score": 0.1,  # fraction of the lesion box covered by the host organ's mask
        "max_distance_mm": 30.0,  # nearest-organ fallback radius when the pixel spacing is known
        "max_distance_px": 100.0,  # ... and when it is not
        "prefer_specific": True,  # lobe/zone over the whole lung when both contain the lesion
    })
    config.synth = ml_collections.ConfigDict({
        "backend": "template",  # template | llm
        "seed": 0,
        "llm": ml_collections.ConfigDict({
            "base_url": str_(),  # OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
            "model": str_(),
            "api_key_env": "OPENAI_API_KEY",  # name of the environment variable holding the key (optional)
            "max_concurrency": 8,
            "timeout_s": 120.0,
            "retries": 2,
            "cache_dir": str_(),
        }),
    })
    config.split = ml_collections.ConfigDict({"val": 0.1, "test": 0.1, "salt": "medclm"})
    # stratify: decide pools per domain at plan time so every domain with >= 2 images has both pools.
    config.curriculum = ml_collections.ConfigDict({"hard_fraction": 0.3, "stratify": True})
    config.write = ml_collections.ConfigDict({"records_per_shard": 1024})
    config.salt = "medclm"  # salt of the pseudonymous image ids: set your own secret for real data
    return config


def parse_arg(arg: Optional[str]) -> dict[str, str]:
    """'root=/x,masks=/y' -> {'root': '/x', 'masks': '/y'} (whitespace around keys and values stripped).

    Raises:
      ConfigError: a part without '=', an empty key, or a key given twice.
    """
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"config argument {part!r} is not key=value (the argument is 'k=v,k2=v2', e.g. "
                              "'root=/data/vindr,masks=/data/cxas')")
        if key in out:
            raise ConfigError(f"config argument key {key!r} is given twice")
        out[key] = value.strip()
    return out


def _literal(text: str) -> Any:
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _coerce(path: str, current: Any, field_type: Optional[type], text: str) -> Any:
    kind = field_type or (type(current) if current is not None else None)
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:  # 'none' unsets a path placeholder; masks.source='none' stays the string
            return None if current is None and text.lower() in ("none", "null") else text
    except ValueError:
        raise ConfigError(f"config key {path}: {text!r} is not a valid {kind.__name__}") from None
    return _literal(text)


def set_path(config: ml_collections.ConfigDict, path: str, text: str, *, create: bool = False) -> None:
    """Sets `config.<path>` from text, converting to the field's type.

    Args:
      create: allow new keys under `adapter.options` (adapter-specific options need no declaration).
    """
    parts = path.split(".")
    node = config
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise ConfigError(f"config key {path!r} does not exist (no section {p!r})")
        node = node[p]
    leaf = parts[-1]
    if leaf not in node:
        if not (create and path.startswith("adapter.options.")):
            raise ConfigError(f"config key {path!r} does not exist; short keys: {', '.join(sorted(ALIASES))}")
        node[leaf] = _literal(text)
        return
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"config key {path!r} is a section; set one of its keys ({', '.join(node[leaf].keys())})")
    ref = node.get_ref(leaf)
    node[leaf] = _coerce(path, node[leaf], ref.get_type(), text)


def apply_arg(config: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
    """Applies a `k=v,...` argument to a config (see the module docstring); returns the same config."""
    for key, value in parse_arg(arg).items():
        set_path(config, ALIASES.get(key, key), value, create=True)
    return config
