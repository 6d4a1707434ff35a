"""The build config: its sections and defaults (`base_config`), its short argument keys, and the dataset configs.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out DIR \
        [--set link.min_score=0.2]

A dataset config, `configs/data/<name>.py`, is loaded by path (configs/ is not a package) and defines
`get_config(arg)`: `base_config(name, adapter)`, the dataset's adapter keys and changes, then `apply_arg(config,
arg)`. `arg` is comma-separated `key=value` pairs; a key is a short alias (`root`, `masks`, `merge`, ... see
`ALIASES`) or a dotted config path (`image.max_side=512`, `adapter.options.merge_iou=0.4`). The argument and
`--set` share one parser, `medclm_jax.config_file` (value types, `none`, unknown keys); a value that contains a
comma goes through `--set adapter.root=...`.

The sections `image`, `masks`, `link` and `synth` are written from the defaults of the settings that read them
(`ImageOptions`, `MaskSettings`, `LinkSettings`, `SynthSettings`): each dataclass is the one source of its section's
keys and defaults. `validate` reads every section once, so a bad key or value stops a build before any image.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import ml_collections
from ml_collections import config_dict

from data_gen.annotations import ADAPTERS
from data_gen.errors import ConfigError
from data_gen.imaging.window import ImageOptions
from data_gen.link import LinkSettings
from data_gen.segment.load import MaskSettings
from data_gen.synth.settings import SynthSettings
from medclm_jax import config_file
from medclm_jax.config_file import ConfigFileError, check_keys, config_section

# configs/data/ of the repository this package is run from (configs ship with the repository, not the package).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "data")

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

# The sections read into typed settings: name -> its settings class.
SETTINGS = {"image": ImageOptions, "masks": MaskSettings, "link": LinkSettings, "synth": SynthSettings}


def base_config(name: str, adapter: str) -> ml_collections.ConfigDict:
    """Every section of the build config with its defaults; dataset configs fill `adapter` and change the rest.

    Args:
      name: dataset name (also `image/source` in the records).
      adapter: the adapter registry key (`data_gen.annotations.ADAPTERS`).
    """
    config = ml_collections.ConfigDict()
    config.name = name
    config.adapter = ml_collections.ConfigDict({
        "name": adapter,
        "root": config_dict.placeholder(str),  # the dataset folder; relative file names below are relative to it
        "source": name,  # written to item.source
        # the adapter's options (each adapter lists those it reads in its OPTIONS); class_map: raw -> canonical class;
        # duplicates: a row repeated exactly is 'merge'd into the first or 'reject'ed (never a second record)
        "options": ml_collections.ConfigDict({"class_map": ml_collections.ConfigDict(), "duplicates": "merge"}),
    })
    for section, settings in SETTINGS.items():
        config[section] = config_section(settings)
    config.split = ml_collections.ConfigDict({"val": 0.1, "test": 0.1})
    # stratify: decide pools per domain at plan time so every domain with >= 2 images has both pools.
    config.curriculum = ml_collections.ConfigDict({"hard_fraction": 0.3, "stratify": True})
    config.write = ml_collections.ConfigDict({"records_per_shard": 1024})
    config.salt = "medclm"  # salt of the pseudonymous image ids: set your own secret for real data
    return config


def apply_arg(config: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
    """Applies a dataset config's `k=v,...` argument (see the module docstring); returns the same config.

    Raises:
      ConfigFileError: a malformed argument, an unknown key (naming the nearest valid ones) or a bad value.
    """
    return config_file.apply_arg(config, arg, ALIASES)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Reads every settings section and checks the other sections' keys and values, so a config that wrote a key
    no code reads (a typo in a config file) or a value out of range fails before the build starts, not as a
    reject on every image. The adapter checks its own options when it is loaded, also before any image.

    Raises:
      ConfigFileError: an unknown key, naming the nearest valid ones, or a value of the wrong type.
      ConfigError: a bad value; the message names the key, the value and what is valid.
    """
    if cfg.adapter.name not in ADAPTERS:
        raise ConfigError(f"adapter.name: unknown adapter {cfg.adapter.name!r}; expected one of {list(ADAPTERS)}")
    for section, settings in SETTINGS.items():
        settings.from_config(cfg[section])
    reference = base_config(str(cfg.name), str(cfg.adapter.name))
    check_keys(cfg, reference.keys(), "")
    for section in ("split", "curriculum", "write"):
        check_keys(cfg[section], reference[section].keys(), section)
    val, test = _number(cfg, "split.val"), _number(cfg, "split.test")
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ConfigError(f"split.val={val:g}, split.test={test:g}: each must be in [0, 1) and their sum below 1 "
                          "(the rest is train)")
    hard = _number(cfg, "curriculum.hard_fraction")
    if not 0.0 <= hard < 1.0:
        raise ConfigError(f"curriculum.hard_fraction must be in [0, 1) (the share of images kept for Hard), "
                          f"got {hard:g}")
    if not isinstance(cfg.curriculum.stratify, bool):
        raise ConfigError(f"curriculum.stratify must be true or false, got {cfg.curriculum.stratify!r}")
    per_shard = cfg.write.records_per_shard
    if isinstance(per_shard, bool) or not isinstance(per_shard, int) or per_shard < 1:
        raise ConfigError(f"write.records_per_shard must be an integer >= 1, got {per_shard!r}")
    if not isinstance(cfg.salt, str) or not cfg.salt:
        raise ConfigError(f"salt must be a non-empty string (it keys the pseudonymous image ids), got {cfg.salt!r}")


def _number(cfg: ml_collections.ConfigDict, key: str) -> float:
    section, name = key.split(".")
    value = cfg[section][name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def config_path(name: str) -> str:
    """The path of the dataset config `configs/data/<name>.py` in the repository this package runs from.

    Raises:
      ConfigFileError: no such file (e.g. an installed package without the repository: configs/ is not part of it).
    """
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise ConfigFileError(f"dataset config {name!r} not found at {path}: configs/ ships with the repository, "
                              "not the installed package; run from a checkout (pip install -e .)")
    return path


def load_dataset_config(name: str, arg: Optional[str] = None,
                        overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`configs/data/<name>.py` loaded by path with its argument and `--set` overrides, e.g.
    `load_dataset_config("phantom", f"root={raw}")`."""
    return config_file.load_config_file(config_path(name), arg, overrides)
