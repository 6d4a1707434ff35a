"""Load `--config path/to/file.py:arg` the way ml_collections' config_flags does, without an absl app.

`path.py:arg` imports the file and calls its `get_config(arg)`; `overrides` like `["write.records_per_shard=64"]`
(the `--config.x.y=v` form of big_vision, written here as `--set x.y=v`) are then applied with the type of the
existing value. Pure Python: importing it does not import jax.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Iterable

import ml_collections


class ConfigFileError(ValueError):
    pass


def _parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigFileError(f"expected a boolean, got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str) or current is None:
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigFileError(f"cannot parse {text!r} for a value of type {type(current).__name__}") from e


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    for item in overrides:
        if "=" not in item:
            raise ConfigFileError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = config
        for p in parts[:-1]:
            if p not in node:
                raise ConfigFileError(f"config has no key {key!r} (no {p!r} in {sorted(node.keys())})")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigFileError(f"config has no key {key!r}; keys here: {sorted(node.keys())}")
        try:
            node[leaf] = _parse_value(text, node[leaf])
        except (ValueError, TypeError) as e:
            raise ConfigFileError(f"config key {key!r}: {e}") from e
    return config


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`configs/data/phantom.py:root=/tmp/p` -> ConfigDict (get_config(arg)) with overrides applied."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigFileError(f"config file {path!r} not found (expected path/to/config.py[:args])")
    name = "medclm_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    return apply_overrides(config, overrides)
