"""Sharded TFRecord output with a per-shard random-access index, written atomically.

Layout in `out_dir`, for a split `train` with 3 shards:

    train-00000-of-00003.tfrecord          TFRecord frames (see `tfrecord.py`)
    train-00000-of-00003.tfrecord.index    one text line per record: "<offset> <length>\\n"

Index format: `offset` is the byte offset of the record's frame (its length header) in the shard; `length` is the
whole frame's size in bytes (12-byte header + data + 4-byte CRC), so `offset + length` is the next frame's offset
and the data is `shard[offset + 12 : offset + length - 4]`. This is the format of the `tfrecord` PyPI package and
of NVIDIA DALI's `tfrecord2idx`, so those readers can use our indexes too.

Atomicity: every shard and its index are written under hidden temporary names (`.{split}-{i:05d}.<token>.tmp`
and `.idx.tmp`) and renamed to their final names only when complete, the index first and the shard last. A
`*.tfrecord` under its final name therefore always has its complete index next to it, and an interrupted run
leaves only hidden temp files (removed by `remove_stale_temps`), never a half shard that looks finished.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import uuid
from typing import Iterable, Optional

from medclm_jax.records.errors import RecordError
from medclm_jax.records import tfrecord

INDEX_SUFFIX = ".index"
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<num>\d{5})\.tfrecord$")
_TEMP_RE = re.compile(r"^\.(?P<split>.+)-(?P<index>\d{5})\.[0-9a-f]{10}(\.idx)?\.tmp$")  # `_OpenShard`'s names


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`{split}-{index:05d}-of-{num_shards:05d}.tfrecord`."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is not in [0, {num_shards})")
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def index_path(shard_path: str) -> str:
    """The index file of a shard: `<shard>.tfrecord.index`."""
    return str(shard_path) + INDEX_SUFFIX


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its final path, index path, record count and size in bytes."""

    path: str
    index_path: str
    num_records: int
    num_bytes: int


class _OpenShard:
    """One shard being written under temp names; `finish` renames it into place."""

    def __init__(self, out_dir: str, split: str, index: int):
        token = uuid.uuid4().hex[:10]
        self.index = index
        self.tmp_path = os.path.join(out_dir, f".{split}-{index:05d}.{token}.tmp")
        self.tmp_index = os.path.join(out_dir, f".{split}-{index:05d}.{token}.idx.tmp")
        self.writer = tfrecord.TFRecordWriter(self.tmp_path)
        self.entries: list[tuple[int, int]] = []

    def write(self, data: bytes) -> None:
        self.entries.append(self.writer.write(data))

    def close(self) -> None:
        self.writer.close(fsync=True)

    def finish(self, final_path: str) -> ShardInfo:
        self.close()
        with open(self.tmp_index, "w", encoding="ascii") as f:
            f.writelines(f"{offset} {length}\n" for offset, length in self.entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp_index, index_path(final_path))  # index first: a final-named shard has its index
        os.replace(self.tmp_path, final_path)
        return ShardInfo(final_path, index_path(final_path), len(self.entries), self.writer.offset)

    def discard(self) -> None:
        self.writer.close()
        for p in (self.tmp_path, self.tmp_index):
            if os.path.exists(p):
                os.remove(p)


class ShardWriter:
    """Writes one split's records into shards, sequentially.

    Exactly one of:
      * `num_shards=n`: exactly n shards; record k goes to shard k mod n (round robin, so shards are balanced
        without knowing the total in advance; deterministic for a given record order). Empty shards are written
        too, so `-of-n` always holds.
      * `records_per_shard=k`: shards filled in order with k records each (the last may hold fewer); the shard
        count n is known only at `close`, which is when all shards get their final names.

    Nothing under a final name exists until `close()` returns; leaving a `with` block by an exception discards
    the temp files instead.
    """

    def __init__(self, out_dir: str, split: str, num_shards: Optional[int] = None,
                 records_per_shard: Optional[int] = None):
        if (num_shards is None) == (records_per_shard is None):
            raise ValueError("give exactly one of num_shards or records_per_shard")
        if num_shards is not None and num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if records_per_shard is not None and records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        if not split or "/" in split or os.sep in split:
            raise ValueError(f"bad split name {split!r}")
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = str(out_dir)
        self.split = split
        self.num_shards = num_shards
        self.records_per_shard = records_per_shard
        self.num_records = 0
        self._shards: list[_OpenShard] = []
        self._closed = False
        if num_shards is not None:
            self._shards = [_OpenShard(self.out_dir, split, i) for i in range(num_shards)]

    def write(self, data: bytes) -> None:
        """Appends one serialized record (e.g. from `encode_example`)."""
        if self._closed:
            raise ValueError("write after close")
        if self.num_shards is not None:
            shard = self._shards[self.num_records % self.num_shards]
        else:
            if not self._shards or len(self._shards[-1].entries) >= self.records_per_shard:
                if self._shards:
                    self._shards[-1].close()  # full: release the file handle now
                self._shards.append(_OpenShard(self.out_dir, self.split, len(self._shards)))
            shard = self._shards[-1]
        shard.write(data)
        self.num_records += 1

    def close(self) -> list[ShardInfo]:
        """Finishes every shard (fsync, write its index, rename both into place); returns them in order."""
        if self._closed:
            raise ValueError("close called twice")
        self._closed = True
        n = len(self._shards)
        return [s.finish(os.path.join(self.out_dir, shard_name(self.split, s.index, n))) for s in self._shards]

    def abort(self) -> None:
        """Removes the temp files; nothing under a final name is written."""
        self._closed = True
        for s in self._shards:
            s.discard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def write_shard(out_dir: str, split: str, index: int, num_shards: int, records: Iterable[bytes]) -> ShardInfo:
    """Writes one complete shard `index` of `num_shards` atomically (for runners that give each worker a shard).

    If iterating `records` raises, the temp files are removed and nothing under the final name appears.
    """
    final_path = os.path.join(str(out_dir), shard_name(split, index, num_shards))
    os.makedirs(out_dir, exist_ok=True)
    shard = _OpenShard(str(out_dir), split, index)
    try:
        for data in records:
            shard.write(data)
    except BaseException:
        shard.discard()
        raise
    return shard.finish(final_path)


def read_index(shard_path: str) -> list[tuple[int, int]]:
    """The (offset, frame length) of every record of a shard, from its `.index` file.

    Raises:
      RecordError(reason='missing_index' | 'bad_index'): naming the index file (and line).
    """
    path = index_path(shard_path)
    if not os.path.exists(path):
        raise RecordError("the shard has no index file; the shard is unfinished or was copied without it: rewrite "
                         "it", path=path, reason="missing_index")
    entries = []
    expected = 0
    with open(path, encoding="ascii") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            try:
                offset, length = (int(p) for p in parts)
            except ValueError:
                raise RecordError(f"line {line_no}: expected '<offset> <length>', got {line.strip()!r}", path=path,
                                 reason="bad_index") from None
            if offset != expected or length < tfrecord.HEADER_BYTES + tfrecord.FOOTER_BYTES:
                raise RecordError(f"line {line_no}: frame ({offset}, {length}) does not follow the previous one "
                                 f"(expected offset {expected})", path=path, reason="bad_index")
            entries.append((offset, length))
            expected = offset + length
    return entries


def read_shard_record(shard_path: str, i: int, index: Optional[list[tuple[int, int]]] = None,
                      verify: bool = True) -> bytes:
    """Record number `i` (0-based) of a shard, by random access through its index."""
    index = read_index(shard_path) if index is None else index
    if not 0 <= i < len(index):
        raise IndexError(f"{shard_path}: record {i} out of range (the shard holds {len(index)} records)")
    return tfrecord.read_record_at(shard_path, index[i][0], verify=verify)


def list_shards(out_dir: str, split: str) -> list[str]:
    """Finished shards of a split (final names, each with its index), sorted by shard number."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(str(out_dir)), f"{glob.escape(split)}-*-of-*.tfrecord")):
        m = _SHARD_RE.match(os.path.basename(path))
        if m and m.group("split") == split and os.path.exists(index_path(path)):
            found.append((int(m.group("index")), path))
    return [p for _, p in sorted(found)]


def remove_stale_temps(out_dir: str, split: Optional[str] = None, index: Optional[int] = None) -> list[str]:
    """Removes temp files left by an interrupted writer (all splits, one split, or one shard of it); returns the
    removed paths.

    Only names of the writer's own form (`.{split}-{i:05d}.<10 hex>.tmp` and `.idx.tmp`) are touched, so a user's
    hidden file that happens to end in `.tmp` survives. Only call this when no other writer is active in
    `out_dir`: it cannot tell a live temp file from a stale one.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(str(out_dir)), ".*.tmp")):
        m = _TEMP_RE.match(os.path.basename(path))
        if (m and (split is None or m.group("split") == split)
                and (index is None or int(m.group("index")) == index)):
            os.remove(path)
            removed.append(path)
    return sorted(removed)
