"""TFRecord files without TensorFlow: the framing, a writer, a verifying reader and random access by offset.

A TFRecord file is a plain concatenation of frames, each

    uint64 length          little-endian, the payload size in bytes
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

where `masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xa282ead8  (mod 2**32)` with `c` the CRC-32C (Castagnoli)
of `b`; all uint32 little-endian. The mask exists so that a CRC stored inside the data it covers does not
collide with itself. `tf.data.TFRecordDataset` reads these files bit for bit (no compression).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator

import google_crc32c

from medclm_jax.records.errors import RecordError

HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of it
FOOTER_BYTES = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data` (uint32)."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def frame_record(data: bytes) -> bytes:
    """One complete TFRecord frame (header, data, footer) around `data`."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + bytes(data) + struct.pack("<I", masked_crc32c(data))


class TFRecordWriter:
    """Appends framed records to a new file.

    Use as a context manager. `write` returns where the frame landed (`offset`, `frame_length`) so callers can
    build a random-access index without re-reading the file.
    """

    def __init__(self, path: str):
        self.path = str(path)
        self._file: BinaryIO | None = open(self.path, "wb")  # pylint: disable=consider-using-with
        self.offset = 0  # bytes written so far = offset of the next frame
        self.num_records = 0

    def write(self, data: bytes) -> tuple[int, int]:
        """Appends one record; returns (byte offset of its frame, frame length in bytes = 16 + len(data))."""
        if self._file is None:
            raise ValueError(f"{self.path}: write after close")
        frame = frame_record(data)
        start = self.offset
        self._file.write(frame)
        self.offset += len(frame)
        self.num_records += 1
        return start, len(frame)

    def flush(self, fsync: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())

    def close(self, fsync: bool = False) -> None:
        if self._file is not None:
            self.flush(fsync)
            self._file.close()
            self._file = None

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_frame(f: BinaryIO, path: str, offset: int, verify: bool) -> bytes | None:
    """Reads the frame starting at `offset` (the file is positioned there); None at a clean end of file."""
    header = f.read(HEADER_BYTES)
    if not header:
        return None
    if len(header) < HEADER_BYTES:
        raise RecordError(f"truncated record header at byte offset {offset} ({len(header)} of {HEADER_BYTES} "
                         "bytes); the shard was cut short: rewrite it", path=path, offset=offset, reason="tfrecord_truncated")
    length_bytes = header[:8]
    (length,) = struct.unpack("<Q", length_bytes)
    (length_crc,) = struct.unpack("<I", header[8:])
    if verify and masked_crc32c(length_bytes) != length_crc:
        raise RecordError(f"length CRC mismatch in the record at byte offset {offset} (stored {length_crc:#010x}, "
                         f"computed {masked_crc32c(length_bytes):#010x}); the file is corrupt: rewrite it",
                         path=path, offset=offset, reason="tfrecord_crc")
    # Check the length against what the file holds before reading: a corrupt length read without CRC checks
    # (`verify=False`) must be a truncation error, not an attempt to allocate up to 2**64 bytes.
    left = os.fstat(f.fileno()).st_size - (offset + HEADER_BYTES)
    body = f.read(length + FOOTER_BYTES) if length + FOOTER_BYTES <= left else b""
    if len(body) < length + FOOTER_BYTES:
        raise RecordError(f"truncated record at byte offset {offset}: header says {length} data bytes + "
                         f"{FOOTER_BYTES} CRC bytes, only {max(0, left)} left; the shard was cut short: rewrite it",
                         path=path, offset=offset, reason="tfrecord_truncated")
    data = body[:length]
    if verify:
        (data_crc,) = struct.unpack("<I", body[length:])
        if masked_crc32c(data) != data_crc:
            raise RecordError(f"data CRC mismatch in the record at byte offset {offset} (stored {data_crc:#010x}, "
                             f"computed {masked_crc32c(data):#010x}); the file is corrupt: rewrite it",
                             path=path, offset=offset, reason="tfrecord_crc")
    return data


def iter_tfrecord_frames(path: str, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yields (byte offset of the frame, data) for every record of a TFRecord file, in order.

    Raises:
      RecordError(reason='tfrecord_crc' | 'tfrecord_truncated'): naming the file and the frame's byte offset.
    """
    path = str(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = _read_frame(f, path, offset, verify)
            if data is None:
                return
            yield offset, data
            offset += HEADER_BYTES + len(data) + FOOTER_BYTES


def read_tfrecord(path: str, verify: bool = True) -> Iterator[bytes]:
    """Yields the data of every record of a TFRecord file (CRCs checked unless `verify=False`).

    Truncation is always detected; a CRC mismatch only with `verify`. Errors name the file and byte offset.
    """
    for _, data in iter_tfrecord_frames(path, verify):
        yield data


def read_record_at(path: str, offset: int, verify: bool = True) -> bytes:
    """The data of the one record whose frame starts at byte `offset` (from the shard's `.index` file)."""
    path = str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 <= offset < size:
            raise RecordError(f"byte offset {offset} is outside the file ({size} bytes); the index does not belong "
                             "to this shard: rewrite the shard", path=path, offset=offset, reason="tfrecord_offset")
        f.seek(offset)
        data = _read_frame(f, path, offset, verify)
    assert data is not None
    return data
