"""Lazy, per-tensor reading and sharded writing of safetensors files with numpy (bf16 via ml_dtypes).

The format is an 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}`
(plus optional `__metadata__`), then the raw little-endian tensor bytes. We parse it ourselves instead of going
through `safetensors.numpy` because numpy has no bfloat16 (checkpoints are mostly bf16) and because a truncated
or corrupt download must give an error that names the file, not a crash deep inside a Rust binding.

Reading copies one tensor at a time from the file straight into its own numpy array (``readinto`` at the
tensor's offset), so reading a 4B model holds one tensor plus the param tree being built, never a second copy
of the checkpoint. (An earlier version memory-mapped the files: every page it touched stayed in the process's
resident set until the reader closed, so the mapped checkpoint came on top of the param tree at peak;
``benchmarks/convert_memory.py`` measures the peak, README.md has the figures.) A folder with
`model.safetensors.index.json` (HF sharding) is read through its `weight_map`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER_BYTES = 100 << 20

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "U16": np.dtype(np.uint16),
    "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file (or its index) is unreadable: truncated, corrupt or inconsistent."""


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a name like 'float32' or 'bfloat16' (numpy itself has no bfloat16)."""
    return np.dtype(ml_dtypes.bfloat16) if str(name) == "bfloat16" else np.dtype(name)


def read_header(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """Parses and validates one file's header.

    Returns:
      (tensors, metadata, data_start): tensors maps name -> {'dtype', 'shape', 'data_offsets'} with offsets
      relative to data_start (the byte where tensor data begins).

    Raises:
      SafetensorsError: the file is not a well-formed safetensors file (message names the file and the problem).
    """
    path = Path(path)
    size = path.stat().st_size

    def corrupt(why: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: not a valid safetensors file ({why}); re-download or re-export it")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"only {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise corrupt(f"header length {n} does not fit the file size {size}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise corrupt(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"bad header entry for tensor {name!r}: {info!r}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes or begin < 0 or end > data_size:
            raise corrupt(f"tensor {name!r} ({info['dtype']}{shape}) has data_offsets [{begin}, {end}] that do not "
                          f"match its size {nbytes} or the {data_size} data bytes present (truncated?)")
    return header, metadata, 8 + n


class SafetensorsReader:
    """Read-only view of one safetensors file or a (sharded) HF checkpoint folder; tensors load on demand.

    Example:
      reader = SafetensorsReader('/ckpt/paligemma-3b-pt-224')
      w = reader.get('multi_modal_projector.linear.weight')   # np.ndarray, original dtype
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path
        self._where: dict[str, Path] = {}
        self._headers: dict[Path, tuple[dict, int]] = {}
        self._files: dict[Path, Any] = {}
        if path.is_file():
            files = [path]
        elif (path / INDEX_NAME).is_file():
            files = self._from_index(path / INDEX_NAME)
        elif (path / SINGLE_NAME).is_file():
            files = [path / SINGLE_NAME]
        elif path.is_dir() and sorted(path.glob("*.safetensors")):
            files = sorted(path.glob("*.safetensors"))
        else:
            raise FileNotFoundError(f"{path}: no safetensors checkpoint here (expected {SINGLE_NAME}, {INDEX_NAME} "
                                    "or *.safetensors)")
        for file in files:
            tensors, _, start = read_header(file)
            self._headers[file] = (tensors, start)
            for name in tensors:
                if name in self._where and self._where[name] != file:
                    raise SafetensorsError(f"tensor {name!r} appears in both {self._where[name]} and {file}")
                self._where.setdefault(name, file)
        self.metadata = read_header(files[0])[1]

    def _from_index(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsError(f"{index}: not a valid safetensors index ({e!r})") from None
        files = sorted({index.parent / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shard files that are missing: {missing}")
        return files

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)[0]["shape"])

    def get(self, name: str) -> np.ndarray:
        """Returns a fresh numpy array (its own memory, original dtype) for one tensor."""
        info, file, start = self._info(name)
        begin, end = info["data_offsets"]
        out = np.empty(info["shape"], DTYPES[info["dtype"]])
        if end > begin:
            if file not in self._files:
                self._files[file] = open(file, "rb")  # noqa: SIM115 (closed by close())
            f = self._files[file]
            f.seek(start + begin)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
            if got != end - begin:
                raise SafetensorsError(f"{file}: tensor {name!r} is cut short ({got} of {end - begin} bytes); "
                                       f"the file is truncated: download it again")
        return out

    __getitem__ = get

    def _info(self, name: str):
        if name not in self._where:
            raise KeyError(f"tensor {name!r} not found in {self.path}")
        file = self._where[name]
        tensors, start = self._headers[file]
        return tensors[name], file, start

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def write_file(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
               metadata: Mapping[str, str] | None = None) -> int:
    """Writes one safetensors file; returns the number of tensor bytes written."""
    items = [(name, np.ascontiguousarray(arr)) for name, arr in tensors]
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, arr in items:
        if arr.dtype not in _CODES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in items:
            f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return offset


def write_sharded(out_dir: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int = 2 << 30, metadata: Mapping[str, str] | None = None) -> list[str]:
    """Writes an HF-style checkpoint from a stream of tensors, holding at most one shard in memory.

    One shard -> `model.safetensors`; several -> `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`.

    Returns:
      The file names written (relative to out_dir).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    total = 0
    pending: list[tuple[str, np.ndarray]] = []
    pending_bytes = 0

    def flush():
        nonlocal total, pending, pending_bytes
        if pending:
            total += write_file(out / f".shard-{len(shards):05d}.tmp", pending, metadata)
            shards.append([name for name, _ in pending])
        pending, pending_bytes = [], 0

    seen = set()
    for name, arr in tensors:
        if name in seen:
            raise ValueError(f"tensor {name!r} produced twice")
        seen.add(name)
        arr = np.asarray(arr)
        if pending and pending_bytes + arr.nbytes > max_shard_bytes:
            flush()
        pending.append((name, arr))
        pending_bytes += arr.nbytes
    flush()
    if len(shards) == 1:
        os.replace(out / ".shard-00000.tmp", out / SINGLE_NAME)
        return [SINGLE_NAME]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for i, (fname, members) in enumerate(zip(names, shards)):
        os.replace(out / f".shard-{i:05d}.tmp", out / fname)
        weight_map.update({m: fname for m in members})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, INDEX_NAME]
