"""An on-disk cache of accepted VLM replies, keyed by content, so a re-run never asks the same thing twice.

The key is sha256 over (cache version, model, system prompt, user prompt, sha256 of the image pixels and shape):
anything that could change the reply is in it, nothing else (no paths, no record order, no timestamps), so
resumed, re-sharded or parallel builds share entries. Only replies that passed validation are stored; a
failure (server down, invalid reply) is asked again on the next run rather than frozen into the dataset.

Layout: `<cache_dir>/<key[:2]>/<key>.json` holding `{"reply": ..., "model": ..., "stage": ...}`. Writes go to a
temporary file in the same folder and are renamed into place (`os.replace`), so concurrent workers and a
killed process never leave a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Optional

import numpy as np

CACHE_VERSION = 1


def image_digest(pixels: Optional[np.ndarray]) -> str:
    """sha256 of the pixel bytes with dtype and shape ('' for no image)."""
    if pixels is None:
        return ""
    arr = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def cache_key(model: str, system: str, prompt: str, image_sha256: str) -> str:
    payload = json.dumps([CACHE_VERSION, model, system, prompt, image_sha256], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ReplyCache:
    """Reply text by content key under `root` ('' or None disables the cache: get -> None, put -> no-op)."""

    def __init__(self, root: Optional[str]):
        self.root = root or ""

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> Optional[str]:
        if not self.root:
            return None
        try:
            with open(self._path(key), encoding="utf-8") as f:
                return str(json.load(f)["reply"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable entry: ask again; put() will overwrite it

    def put(self, key: str, reply: str, **meta: str) -> None:
        if not self.root:
            return
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"reply": reply, **meta}, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
