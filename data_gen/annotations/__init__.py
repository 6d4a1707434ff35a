"""Dataset adapters: annotation files -> `ImageItem`s (pixel xyxy boxes, canonical classes) + rejects + stats.

    get_adapter("vindr_cxr")(cfg.adapter) -> AnnotationSet(items, rejects, stats)

Adapters: vindr_cxr, nih_cxr14, rsna, deeplesion, coco, generic_json, phantom (one module each, `load(cfg)`).
The rules they share (box validation, unknown classes, duplicate ids, stats keys) are in `base.py`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from data_gen.annotations.base import AnnotationSet
from data_gen.errors import ConfigError

ADAPTERS = ("vindr_cxr", "nih_cxr14", "rsna", "deeplesion", "coco", "generic_json", "phantom")


def get_adapter(name: str) -> Callable[[Any], AnnotationSet]:
    """The adapter registered as `name`: a function `cfg.adapter -> AnnotationSet`.

    Raises:
      ConfigError: unknown name (the message lists the registered ones).
    """
    if name not in ADAPTERS:
        raise ConfigError(f"adapter.name {name!r} is not a registered adapter; choose one of {', '.join(ADAPTERS)}")
    return importlib.import_module(f"data_gen.annotations.{name}").load


__all__ = ["ADAPTERS", "AnnotationSet", "get_adapter"]
