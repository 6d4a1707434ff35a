"""Random access to one split of a `medclm-data build`: the source the Grain pipeline reads.

    src = RecordSource("out/", "train")        # reads dataset_info.json and the `.index` files, never a payload
    len(src), src[i]                           # record i of the split: `decode_example`'s dict of lists
    grain.MapDataset.source(src).shuffle(seed=0)[process_index::process_count]

Opening. The split's shards are the ones `dataset_info.json` lists (`shards[split]`), in that order; its schema
version must be one this reader knows. Each shard's `.index` file (`records/shards.py`: one "<offset> <frame
length>" line per record) is parsed by numpy's C parser (not a Python loop: millions of lines) into one flat
table, reading only the index files and `os.stat` of the shards.
Record i lives in shard `s = searchsorted(starts, i, "right") - 1`, where `starts` int64[S + 1] holds the number
of each shard's first record; its frame spans `bounds[i + s] : bounds[i + s + 1]` (bytes of shard s), where
`bounds` int64[N + S] lists each shard's frame offsets followed by the shard's end (8 bytes per record in memory
and in the pickle sent to every Grain worker, instead of 16 for offsets and lengths).

Index checks. An index must parse, start at byte 0, be contiguous, and end exactly at the shard's size. A missing,
unparsable or mismatched index is rebuilt by walking the shard's frame headers (12 bytes per frame, length CRC
checked; payloads are not read). The rebuilt index is kept in memory and a warning says how to make it permanent:
it is written next to the shard only with `write_index=True`, because the data folder may be read-only, shared,
or an archived build, and rewriting it silently would also hide that it was damaged. Every read then checks the
frame's own length header against the index, so an index that passes the size check but belongs to another
shard still cannot return a wrong record. A shard that ends inside a frame (truncated) raises with
`on_error="raise"`; with `"skip"` its complete frames are used and the records after the cut are counted in
`lost` (exactly, when the old index agrees with the frames before the cut; such an index is never written).

Reads. `os.pread(fd, length, offset)` has no shared file position, so reads from Grain's threads cannot interleave
a seek and a read (a shared handle with seek-then-read returned corrupted records under load). Descriptors are
opened on first use and kept in an LRU of at most `max_open_files`, lent out with a reader count so that eviction
never closes a descriptor under another thread's pread (the OS would reuse its number for the next file opened).
A cached descriptor saves an open and a close per read (a syscall pair locally, a round trip on network
storage); the cap keeps thousands of shards, times the Grain workers, under the descriptor limit.

Bad records. A frame that fails its CRCs, is cut short, does not match its index entry, does not decode, or
decodes but breaks `schema.check_record` is a bad record. `on_error="raise"` raises `RecordError` naming the
shard, the frame's byte offset and the record's number in the split; `on_error="skip"` returns None and counts
the record by reason in `skipped` (thread-safe; per process: every Grain worker counts its own).

Pickling (Grain worker processes): the state is the configuration and the index table, so workers neither
re-read nor rebuild indexes; descriptors, locks and counters belong to a process and are recreated after
unpickling or a fork.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import operator
import os
import struct
import threading
from typing import Any, Iterator, Literal, Optional

import numpy as np

from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError
from medclm_jax.records.example import decode_example
from medclm_jax.records.shards import index_path
from medclm_jax.records.tfrecord import FOOTER_BYTES, HEADER_BYTES, masked_crc32c

log = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.json"
KNOWN_SCHEMA_VERSIONS = (schema.SCHEMA_VERSION,)
ON_ERROR = ("raise", "skip")
FRAMING_BYTES = HEADER_BYTES + FOOTER_BYTES
_SKIP_HINT = "to skip bad records and count them instead, open the source with on_error='skip'"


# ---------------------------------------------------------------------------------------------------------------
# dataset_info.json and the split's shards.


def load_dataset_info(data_dir: str) -> dict[str, Any]:
    """`dataset_info.json` of a build, refused unless its schema is one this reader knows.

    Raises:
      RecordError(reason='missing_dataset_info' | 'bad_dataset_info' | 'schema_version').
    """
    path = os.path.join(data_dir, DATASET_INFO)
    if not os.path.isfile(path):
        raise RecordError(f"no {DATASET_INFO}: this is not a finished `medclm-data build` output; point data_dir "
                          "at the folder given to `--out`", path=path, reason="missing_dataset_info")
    with open(path, encoding="utf-8") as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"not valid JSON ({e}); rebuild the dataset", path=path,
                              reason="bad_dataset_info") from None
    described = info.get("schema") or {}
    name, version = described.get("name"), described.get("version")
    if name != schema.SCHEMA_NAME or version not in KNOWN_SCHEMA_VERSIONS:
        known = ", ".join(f"v{v}" for v in KNOWN_SCHEMA_VERSIONS)
        raise RecordError(f"the records follow schema {name!r} version {version!r}, this reader knows "
                          f"{schema.SCHEMA_NAME!r} {known}: rebuild the dataset with this version of medclm-data "
                          "(`medclm-data build --config ... --out DIR`), or read it with the medclm-jax version "
                          "that wrote it", path=path, reason="schema_version")
    return info


def split_shard_paths(data_dir: str, info: dict[str, Any], split: str) -> list[str]:
    """Paths of the shards `dataset_info.json` lists for `split`, in its order; each must exist."""
    info_path = os.path.join(data_dir, DATASET_INFO)
    shards = info.get("shards") or {}
    if split not in shards:
        raise RecordError(f"the build has no split {split!r}; its splits are {sorted(shards)}", path=info_path,
                          reason="missing_split")
    paths = []
    for name in shards[split]:
        if os.path.basename(name) != name or not name.startswith(f"{split}-"):
            raise RecordError(f"shard name {name!r} of split {split!r} is not a file name of that split; the file "
                              "was edited by hand: rebuild the dataset", path=info_path, reason="bad_dataset_info")
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise RecordError(f"listed in {DATASET_INFO} but not on disk: copy it from the build output or rebuild "
                              "the dataset", path=path, reason="missing_shard")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Index files: parse, check, rebuild from the frame headers.


def parse_index(path: str) -> np.ndarray:
    """int64[n, 2] (offset, frame length) rows of an `.index` file.

    Raises:
      RecordError(reason='bad_index'): not two integers per line.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        return np.zeros((0, 2), np.int64)
    try:
        table = np.loadtxt(io.BytesIO(raw), dtype=np.int64, ndmin=2, comments=None)
    except ValueError as e:
        raise RecordError(f"unparsable ({e})", path=path, reason="bad_index") from None
    if table.shape[1] != 2:
        raise RecordError(f"expected '<offset> <length>' lines, got {table.shape[1]} numbers per line", path=path,
                          reason="bad_index")
    return table


def index_problem(table: np.ndarray, shard_size: int) -> Optional[str]:
    """Why `table` (int64[n, 2]) cannot be the index of a shard of `shard_size` bytes; None if it can."""
    if len(table) == 0:
        return None if shard_size == 0 else f"lists no record but the shard has {shard_size} bytes"
    offsets, lengths = table[:, 0], table[:, 1]
    if offsets[0] != 0:
        return f"its first frame starts at byte {offsets[0]}, not 0"
    short = np.flatnonzero(lengths < FRAMING_BYTES)
    if short.size:
        return f"line {short[0] + 1}: frame length {lengths[short[0]]} is less than the {FRAMING_BYTES} framing bytes"
    gaps = np.flatnonzero(offsets[1:] != offsets[:-1] + lengths[:-1])
    if gaps.size:
        k = gaps[0] + 1
        return (f"line {k + 1}: offset {offsets[k]} does not follow the previous frame "
                f"({offsets[k - 1] + lengths[k - 1]})")
    end = int(offsets[-1] + lengths[-1])
    if end != shard_size:
        return f"its frames end at byte {end} but the shard has {shard_size} bytes"
    return None


def scan_frames(shard_path: str) -> tuple[np.ndarray, Optional[RecordError]]:
    """Rebuilds a shard's index from its frame headers (12 bytes read per frame; payloads are skipped).

    Returns:
      (int64[n, 2] offset and frame length of every complete frame before the first problem, the problem or None).
      The problem is a RecordError naming the byte offset where the walk stopped: `tfrecord_truncated` (the shard
      ends inside a frame) or `tfrecord_crc` (a length header fails its CRC, so the next frame cannot be found).
    """
    rows: list[tuple[int, int]] = []
    stop = None
    fd = os.open(shard_path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            header = os.pread(fd, HEADER_BYTES, offset)
            if len(header) < HEADER_BYTES:
                stop = RecordError(f"the shard ends inside the length header at byte offset {offset}; it was cut "
                                   "short: rewrite it", path=shard_path, offset=offset, reason="tfrecord_truncated")
                break
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                stop = RecordError(f"length CRC mismatch in the frame at byte offset {offset}; the frames after it "
                                   "cannot be found: rewrite the shard", path=shard_path, offset=offset,
                                   reason="tfrecord_crc")
                break
            frame = FRAMING_BYTES + length
            if offset + frame > size:
                stop = RecordError(f"the frame at byte offset {offset} needs {frame} bytes, the shard ends "
                                   f"{size - offset} bytes into it; it was cut short: rewrite it", path=shard_path,
                                   offset=offset, reason="tfrecord_truncated")
                break
            rows.append((offset, frame))
            offset += frame
    finally:
        os.close(fd)
    return np.asarray(rows, np.int64).reshape(-1, 2), stop


def write_index(shard_path: str, table: np.ndarray) -> None:
    """Writes a shard's `.index` file atomically (temp file, then rename), in `records/shards.py`'s format."""
    path = index_path(shard_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.writelines(f"{offset} {length}\n" for offset, length in table.tolist())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Per-process state: descriptors and counters.


class _OpenFiles:
    """Read-only descriptors of the shards: opened on first use, at most `max_open` kept, least recently used
    closed first; a descriptor being read (lent out) is never closed."""

    def __init__(self, paths: list[str], max_open: int):
        self._paths = paths
        self._max_open = max_open
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[int, list[int]] = collections.OrderedDict()  # shard -> [fd, readers]

    @contextlib.contextmanager
    def lend(self, shard: int) -> Iterator[int]:
        fd = self._acquire(shard)
        try:
            yield fd
        finally:
            with self._lock:
                self._open[shard][1] -= 1
                self._evict()

    def _acquire(self, shard: int) -> int:
        with self._lock:
            entry = self._open.get(shard)
            if entry is not None:
                entry[1] += 1
                self._open.move_to_end(shard)
                return entry[0]
        fd = os.open(self._paths[shard], os.O_RDONLY)  # outside the lock: opening can be slow on network storage
        with self._lock:
            entry = self._open.get(shard)
            if entry is not None:  # another thread opened it meanwhile
                os.close(fd)
                entry[1] += 1
                self._open.move_to_end(shard)
                return entry[0]
            self._open[shard] = [fd, 1]
            self._evict()
            return fd

    def _evict(self) -> None:
        """Closes idle descriptors beyond the cap, oldest first (caller holds the lock)."""
        excess = len(self._open) - self._max_open
        if excess <= 0:
            return
        idle = []
        for shard, (_, readers) in self._open.items():
            if readers == 0:
                idle.append(shard)
                if len(idle) == excess:
                    break
        for shard in idle:
            os.close(self._open.pop(shard)[0])

    def num_open(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()


class _ProcessState:
    """What a process does not share with the pickled source: descriptors, the skip counter and its lock."""

    def __init__(self, paths: list[str], max_open: int):
        self.pid = os.getpid()
        self.files = _OpenFiles(paths, max_open)
        self.lock = threading.Lock()
        self.skipped: collections.Counter = collections.Counter()


_STATE_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# The source.


class RecordSource:
    """One split of a build as a random-access sequence of decoded records (Grain's `RandomAccessDataSource`).

    Args:
      data_dir: the build's output folder (holds `dataset_info.json`, the shards and their `.index` files).
      split: `train`, `val`, `test` (any split `dataset_info.json` lists).
      on_error: `raise` a `RecordError` at a bad record, or `skip` it: `src[i]` returns None, counted in `skipped`.
      verify_crc: check both CRCs of every frame read (the framing and index agreement are always checked).
      check_schema: check every decoded record with `schema.check_record`.
      write_index: write an index rebuilt from the frames next to its shard (default: keep it in memory, warn).
      max_open_files: descriptors kept open per process (least recently used closed first).

    Attributes:
      skipped: reason -> records skipped by reads in this process (`on_error="skip"`).
      lost: reason -> records the source cannot offer at all, found at opening (the records after the cut of a
        truncated shard, `on_error="skip"`); `len(self) + sum(lost.values())` is the split's record count.
    """

    def __init__(self, data_dir: str, split: str, *, on_error: Literal["raise", "skip"] = "raise",
                 verify_crc: bool = True, check_schema: bool = True, write_index: bool = False,
                 max_open_files: int = 128):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.data_dir = os.path.abspath(data_dir)
        self.split = split
        self.on_error = on_error
        self.verify_crc = verify_crc
        self.check_schema = check_schema
        self.write_index = write_index
        self.max_open_files = max_open_files
        info = load_dataset_info(self.data_dir)
        self.shard_paths = split_shard_paths(self.data_dir, info, split)
        self.lost: dict[str, int] = {}
        tables = [self._load_index(path) for path in self.shard_paths]
        counts = np.array([len(t) for t in tables], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Per shard: its frame offsets, then its end (see the module docstring).
        self._bounds = np.concatenate(
            [np.zeros(0, np.int64)] + [np.append(t[:, 0], t[-1].sum() if len(t) else 0) for t in tables]
        ).astype(np.int64)
        self._check_count(info)
        self._proc: Optional[_ProcessState] = _ProcessState(self.shard_paths, max_open_files)

    # -- opening --------------------------------------------------------------------------------------------

    def _load_index(self, shard_path: str) -> np.ndarray:
        """The shard's (offset, frame length) table: its `.index` if that fits the shard, else rebuilt."""
        size = os.stat(shard_path).st_size
        ipath = index_path(shard_path)
        stored = None
        if not os.path.isfile(ipath):
            problem = "is missing"
        else:
            try:
                stored = parse_index(ipath)
            except RecordError as e:
                problem = f"is unreadable ({e})"
            else:
                problem = index_problem(stored, size)
                if problem is None:
                    return stored
        table, stop = scan_frames(shard_path)
        if stop is not None:
            if self.on_error == "raise":
                error = RecordError(f"{stop} (its index {problem}); {_SKIP_HINT} (the frames before the cut are "
                                    "then used)", reason=stop.reason)
                error.path, error.offset = shard_path, stop.offset
                raise error
            agrees = stored is not None and len(stored) > len(table) and np.array_equal(stored[:len(table)], table)
            lost = len(stored) - len(table) if agrees else 1
            self.lost[stop.reason] = self.lost.get(stop.reason, 0) + lost
            log.warning("%s; using its %d complete frames, %s record(s) after byte offset %d are lost", stop,
                        len(table), lost if agrees else "an unknown number of", stop.offset)
            return table
        if self.write_index:
            write_index(shard_path, table)
            log.warning("%s %s; rebuilt it from the shard's %d frame headers and wrote it", ipath, problem, len(table))
        else:
            log.warning("%s %s; rebuilt it from the shard's %d frame headers, in memory only (every opening "
                        "rebuilds it again). To fix it for good, open once with RecordSource(..., "
                        "write_index=True) or copy the index from the build output.", ipath, problem, len(table))
        return table

    def _check_count(self, info: dict[str, Any]) -> None:
        expected = (((info.get("counts") or {}).get("per_split") or {}).get(self.split) or {}).get("records")
        found = len(self) + sum(self.lost.values())
        if expected is None or int(expected) == found:
            return
        message = (f"{DATASET_INFO} counts {expected} records in split {self.split!r}, its shards hold {found}: "
                   "shards of another build are mixed in or a shard was replaced; rebuild the dataset or copy "
                   "all its files from one build")
        if self.on_error == "raise":
            raise RecordError(message, path=os.path.join(self.data_dir, DATASET_INFO), reason="count_mismatch")
        log.warning("%s", message)

    # -- the sequence ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int, int]:
        """(shard path, byte offset of the frame, frame length in bytes) of record `index` of the split."""
        i, shard = self._shard_of(index)
        offset = int(self._bounds[i + shard])
        return self.shard_paths[shard], offset, int(self._bounds[i + shard + 1]) - offset

    def _shard_of(self, index: int) -> tuple[int, int]:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {index} out of range: split {self.split!r} has {n} records")
        return i, int(np.searchsorted(self._starts, i, side="right")) - 1

    def __getitem__(self, index: int) -> Optional[dict[str, list]]:
        """Record `index` of the split, decoded and checked; None if it is bad and `on_error="skip"`.

        Thread-safe. Raises RecordError (bad record, `on_error="raise"`), IndexError (out of range).
        """
        try:
            return self.read(index)
        except RecordError as error:
            if self.on_error == "raise":
                raise
            proc = self._process()
            with proc.lock:
                proc.skipped[error.reason] += 1
                first = proc.skipped[error.reason] == 1
            if first:
                log.warning("skipping bad records (first of reason %r): %s", error.reason, error)
            return None

    def read(self, index: int) -> dict[str, list]:
        """Record `index` of the split, decoded and checked; a bad record raises whatever `on_error` says.

        For callers that count bad records themselves (the input pipeline: by reason, in the main process);
        nothing is added to `skipped`. Thread-safe.

        Raises:
          RecordError: naming the shard, the frame's byte offset and the record's number; `reason` as the cause's.
          IndexError: out of range.
        """
        i, shard = self._shard_of(index)
        offset = int(self._bounds[i + shard])
        length = int(self._bounds[i + shard + 1]) - offset
        proc = self._process()
        try:
            with proc.files.lend(shard) as fd:
                frame = os.pread(fd, length, offset)
            record = decode_example(_unframe(frame, length, self.verify_crc))
            if self.check_schema:
                schema.check_record(record)
            return record
        except RecordError as e:
            where = (f"record {i} of split {self.split!r} (record {i - int(self._starts[shard])} of the shard), "
                     f"frame at byte offset {offset}")
            hint = f"; {_SKIP_HINT}" if self.on_error == "raise" else ""
            error = RecordError(f"{where}: {e}{hint}", path=self.shard_paths[shard], offset=offset, reason=e.reason)
            error.field = e.field
            raise error from e

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> records skipped by reads in this process so far."""
        proc = self._process()
        with proc.lock:
            return dict(proc.skipped)

    def iter_records(self) -> Iterator[dict[str, list]]:
        """Every good record in split order (shard by shard, in file order: sequential reads)."""
        for i in range(len(self)):
            record = self[i]
            if record is not None:
                yield record

    def __repr__(self) -> str:
        # Deterministic (Grain's checkpoints compare it): no object ids, no per-process state.
        return (f"RecordSource(data_dir={self.data_dir!r}, split={self.split!r}, records={len(self)}, "
                f"shards={len(self.shard_paths)}, on_error={self.on_error!r}, verify_crc={self.verify_crc})")

    # -- processes and descriptors ----------------------------------------------------------------------------

    def _process(self) -> _ProcessState:
        proc = self._proc
        if proc is not None and proc.pid == os.getpid():
            return proc
        with _STATE_LOCK:  # first use after unpickling or a fork: new descriptors, lock and counters
            inherited = self._proc
            if inherited is None or inherited.pid != os.getpid():
                if inherited is not None:  # forked: close this process's copies (its lock may be held: don't take it)
                    for fd, _ in list(inherited.files._open.values()):  # pylint: disable=protected-access
                        with contextlib.suppress(OSError):
                            os.close(fd)
                self._proc = _ProcessState(self.shard_paths, self.max_open_files)
            return self._proc

    def num_open_files(self) -> int:
        """Descriptors this process holds open now (at most `max_open_files` while no read is in flight)."""
        return self._process().files.num_open()

    def close(self) -> None:
        """Closes this process's descriptors; the source stays usable (they reopen on the next read)."""
        proc = self._proc
        if proc is not None and proc.pid == os.getpid():
            proc.files.close()

    def __enter__(self) -> "RecordSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_proc"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _unframe(frame: bytes, length: int, verify_crc: bool) -> bytes:
    """The data of one TFRecord frame read whole by its index entry (`tfrecord.py` has the layout)."""
    if len(frame) < length:
        raise RecordError(f"the shard ends {len(frame)} bytes into this {length}-byte frame: it was cut short after "
                          "its index was read; rewrite it", reason="tfrecord_truncated")
    header = frame[:8]
    (data_length,) = struct.unpack("<Q", header)
    if verify_crc:
        (length_crc,) = struct.unpack("<I", frame[8:HEADER_BYTES])
        if masked_crc32c(header) != length_crc:
            raise RecordError("length CRC mismatch: the shard is corrupt (rewrite it), or its index does not "
                              "belong to it (delete the `.index` file to have it rebuilt)", reason="tfrecord_crc")
    if data_length + FRAMING_BYTES != length:
        raise RecordError(f"the frame's header says {data_length} data bytes, the index {length - FRAMING_BYTES}: "
                          "the index does not belong to this shard; delete the `.index` file to have it rebuilt",
                          reason="index_mismatch")
    data = frame[HEADER_BYTES:length - FOOTER_BYTES]
    if verify_crc:
        (data_crc,) = struct.unpack("<I", frame[length - FOOTER_BYTES:length])
        if masked_crc32c(data) != data_crc:
            raise RecordError("data CRC mismatch: the shard is corrupt, rewrite it", reason="tfrecord_crc")
    return data


def read_split(data_dir: str, split: str, **kwargs) -> list[dict[str, list]]:
    """Every good record of a (small) split, in order: evaluation sets. `kwargs` go to `RecordSource`."""
    with RecordSource(data_dir, split, **kwargs) as source:
        return list(source.iter_records())
