"""Config files and the one parser of `key=value` text: `--config path/to/file.py:arg` and `--set key=value`.

`load_config("path.py:arg", overrides)` imports the file by path (config folders are not packages), calls its
`get_config(arg)` and applies `overrides` like `["write.records_per_shard=64"]` (big_vision's `--config.x.y=v`,
written here as `--set x.y=v`). A config file that takes a `k=v,k2=v2` argument applies it with `apply_arg`, so
the argument and `--set` follow the same rules:

  * A key is a dotted path that must exist (`link.min_score`); an unknown key is an error naming the key and the
    nearest valid ones. A section named `*_map` (`adapter.options.class_map`) is a lookup table, not a schema:
    `adapter.options.class_map.Nodule=mass` adds a row.
  * The text becomes the field's type: bool (true/false, 1/0, yes/no, on/off), int, float, str; tuple, list and
    dict fields take a Python literal. `none`/`null` sets None, except on a str field that holds a string
    (`masks.source=none` is a value). A field with no type (None and untyped) takes None, a bool, a Python
    literal, else the text.

Settings read from a config section into a frozen dataclass (`settings_from`) follow the same key rule, and
`config_section` writes such a dataclass's defaults as the section, so the dataclass is the one source of them.
Pure Python: importing this module does not import jax.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from typing import Any, Iterable, Mapping, Optional

import ml_collections
from ml_collections import config_dict

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
NONE = ("none", "null")
MAP_SUFFIX = "_map"  # sections that are lookup tables: their keys are data, so new ones may be added


class ConfigFileError(ValueError):
    """A config file, key or value is wrong; the message names it."""


# ---- keys ----------------------------------------------------------------------------------------------------------

def unknown_key(key: str, valid: Iterable[str], *, listed: Iterable[str] = ()) -> ConfigFileError:
    """`config has no key 'link.overlay_tolerence'; did you mean 'link.overlay_tolerance'?`

    Args:
      key: the key as the user wrote it.
      valid: every key that would have been accepted; the nearest (difflib) are suggested.
      listed: keys to list instead when none is near (e.g. the keys of the section the key pointed into).
    """
    matches = difflib.get_close_matches(key, sorted(set(valid)), n=3, cutoff=0.6)
    message = f"config has no key {key!r}"
    if matches:
        message += f"; did you mean {' or '.join(repr(m) for m in matches)}?"
    elif listed:
        message += f"; valid keys here: {', '.join(sorted(set(listed)))}"
    return ConfigFileError(message)


def key_paths(config: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every value in a ConfigDict or mapping (leaves; a `*_map` table counts as one)."""
    out = []
    for k, v in config.items():
        path = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, Mapping)) and not str(k).endswith(MAP_SUFFIX):
            out += key_paths(v, path + ".")
        else:
            out.append(path)
    return out


def check_keys(section: Any, valid: Iterable[str], path: str) -> None:
    """Raises `unknown_key` for the first key of `section` (a mapping) that is not in `valid`."""
    valid = list(valid)
    for k in section.keys():
        if k not in valid:
            raise unknown_key(f"{path}.{k}" if path else str(k), [f"{path}.{v}" if path else v for v in valid],
                              listed=valid)


# ---- values --------------------------------------------------------------------------------------------------------

def _untyped(text: str) -> Any:
    low = text.strip().lower()
    if low in NONE:
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_value(text: str, current: Any = None, kind: Optional[type] = None) -> Any:
    """Text -> a value for a field holding `current` (of declared type `kind`); the rules in the module docstring.

    Raises:
      ValueError: the text is not a value of the field's type.
    """
    kind = kind or (type(current) if current is not None else None)
    low = text.strip().lower()
    if low in NONE and (kind is not str or current is None):
        return None
    if kind is bool:
        if low in TRUE or low in FALSE:
            return low in TRUE
        raise ValueError(f"{text!r} is not a valid bool (true/false, 1/0, yes/no, on/off)")
    if kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a valid {kind.__name__}") from None
    if kind is str:
        return text
    if kind in (tuple, list, dict):
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{text!r} is not a Python {kind.__name__} literal") from e
        if not isinstance(value, (tuple, list) if kind is not dict else dict):
            raise ValueError(f"{text!r} is not a {kind.__name__}")
        return kind(value)
    return _untyped(text)


def _field_type(node: ml_collections.ConfigDict, leaf: str) -> Optional[type]:
    try:
        return node.get_ref(leaf).get_type()  # a typed placeholder keeps its type while None
    except ValueError:  # a plain None: no type
        return None


def set_value(config: ml_collections.ConfigDict, key: str, text: str,
              aliases: Optional[Mapping[str, str]] = None) -> None:
    """Sets `config.<key>` from text (the one rule for `--set` and config arguments; see the module docstring).

    Args:
      key: a dotted path, or a short key of `aliases` (short key -> dotted path).

    Raises:
      ConfigFileError: an unknown key (naming the nearest valid ones), a section, or a value of the wrong type.
    """
    aliases = aliases or {}
    path = aliases.get(key, key)
    parts = path.split(".")
    node = config

    def unknown() -> ConfigFileError:
        listed = list(node.keys()) + (list(aliases) if node is config else [])
        return unknown_key(key, key_paths(config) + list(aliases), listed=listed)

    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise unknown()
        node = node[p]
    leaf = parts[-1]
    if leaf not in node:
        if len(parts) > 1 and parts[-2].endswith(MAP_SUFFIX):
            node[leaf] = text
            return
        raise unknown()
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigFileError(f"config key {path!r} is a section; set one of its keys "
                              f"({', '.join(node[leaf].keys())})")
    try:
        node[leaf] = parse_value(text, node[leaf], _field_type(node, leaf))
    except (ValueError, TypeError) as e:
        raise ConfigFileError(f"config key {path!r}: {e}") from None


def parse_arg(arg: Optional[str]) -> dict[str, str]:
    """'root=/x, masks=/y' -> {'root': '/x', 'masks': '/y'} (whitespace around keys and values stripped).

    Values cannot contain commas: pass such a value with `--set key=value`.

    Raises:
      ConfigFileError: a part without '=', an empty key, or a key given twice.
    """
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigFileError(f"config argument {part!r} is not key=value (the argument is 'k=v,k2=v2', e.g. "
                                  "'root=/data/vindr,masks=/data/cxas')")
        if key in out:
            raise ConfigFileError(f"config argument key {key!r} is given twice")
        out[key] = value.strip()
    return out


def apply_arg(config: ml_collections.ConfigDict, arg: Optional[str],
              aliases: Optional[Mapping[str, str]] = None) -> ml_collections.ConfigDict:
    """Applies a config file's `k=v,k2=v2` argument (keys may be short `aliases`); returns the same config."""
    for key, text in parse_arg(arg).items():
        set_value(config, key, text, aliases)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Applies `--set key=value` overrides (dotted keys; the value may contain commas and '='); returns config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigFileError(f"override {item!r} must look like key.sub=value")
        set_value(config, key.strip(), text)
    return config


# ---- files ---------------------------------------------------------------------------------------------------------

def load_config_file(path: str, arg: Optional[str] = None,
                     overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Imports the config file at `path` (by path: it need not be in a package), returns `get_config(arg)` with
    `overrides` applied.

    Raises:
      ConfigFileError: no such file, a Python syntax error in it (naming the line), no `get_config`, or a bad
        override.
    """
    if not os.path.isfile(path):
        raise ConfigFileError(f"config file {path!r} not found (expected path/to/config.py[:args])")
    name = "medclm_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:  # IndentationError included
        raise ConfigFileError(f"config file {path!r}, line {e.lineno}: {e.msg}; fix the Python syntax there "
                              f"({(e.text or '').strip()[:80]!r})") from None
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    return apply_overrides(config, overrides)


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`configs/data/phantom.py:root=/tmp/p` -> ConfigDict (get_config(arg)) with overrides applied."""
    path, _, arg = spec.partition(":")
    return load_config_file(path, arg, overrides)


# ---- typed settings ------------------------------------------------------------------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_of(hint: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed); other unions come back unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def config_section(settings_cls: type) -> ml_collections.ConfigDict:
    """A settings dataclass's fields and defaults as a config section, so the dataclass is their one source.

    A None default becomes a typed placeholder (`--set` knows the type while the value is None); a field that is
    itself a settings dataclass becomes a nested section.
    """
    hints = _hints(settings_cls)
    defaults = settings_cls()
    section = ml_collections.ConfigDict()
    for f in dataclasses.fields(settings_cls):
        value = getattr(defaults, f.name)
        inner, _ = _optional_of(hints[f.name])
        if dataclasses.is_dataclass(value):
            section[f.name] = config_section(type(value))
        elif value is None:
            section[f.name] = config_dict.placeholder(inner if isinstance(inner, type) else object)
        else:
            section[f.name] = value
    return section


def _convert(value: Any, kind: Any, key: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif kind is str:
        return value if isinstance(value, str) else str(value)
    else:
        return value  # a union or container: the settings class checks it
    raise ConfigFileError(f"config key {key!r}: {value!r} is not a valid {kind.__name__}")


def settings_from(cls: type, cfg: Any, section: str) -> Any:
    """Reads the config section `section` (a ConfigDict, a mapping, None, or already a `cls`) into `cls`.

    The one reader of "a key with a default": a key that is missing or None takes the dataclass default; a key
    that is not a field is an error naming the nearest fields; values are converted to the field's type (bool,
    int, float, str; nested settings dataclasses recursively; other types are passed as they are).

    Raises:
      ConfigFileError: an unknown key, or a value that is not of its field's type.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    if not hasattr(cfg, "items"):
        raise ConfigFileError(f"config section {section!r} must be a mapping, got {type(cfg).__name__}")
    values = dict(cfg.items())
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(values, names, section)
    hints = _hints(cls)
    kwargs = {}
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        kind, _ = _optional_of(hints[name])
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[name] = settings_from(kind, value, f"{section}.{name}")
        else:
            kwargs[name] = _convert(value, kind, f"{section}.{name}")
    return cls(**kwargs)
