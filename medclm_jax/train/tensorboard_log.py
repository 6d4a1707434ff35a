"""TensorBoard event files without TensorFlow: every scalar of the run's train and eval log lines, by step.

    tb = TensorBoardLog(os.path.join(workdir, "tensorboard"), start_step, replay=records_kept_in_the_jsonl)
    tb.write(record)          # a `train.metrics` log line: each int / float field becomes a scalar of its key
    tb.close()

The file. An event file is a TFRecord file (`records/tfrecord.py`'s framing, masked CRC-32C) of serialized
`tensorflow.Event` protos, encoded here by hand (protobuf wire format; only the fields used):

    Event       { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
                  SessionLog session_log = 7 }  (one of file_version, summary, session_log)
    Summary     { repeated Value value = 1 }       Value { string tag = 1; float simple_value = 2 }
    SessionLog  { SessionStatus status = 1 }       (START = 1)

The first event holds `file_version` "brain.Event:2" (readers check it); each log line is one event at its step
whose values are its numeric fields under their own keys (`loss`, `loss/easy`, `eval/loss/hard`, `mfu`, ...;
booleans as 0 / 1, text fields left out). Values are float32, as `simple_value` is. Only process 0 writes.

Names and restarts. Each start of the trainer writes a new file, `events.out.tfevents.<time>.<host>` (seconds since
the epoch, 10 digits; moved past the newest file already there, so names sort in the order they were written,
which is the order TensorBoard reads a folder's files in); nothing is appended to or overwrites an older file.
A run resumed from the checkpoint of step S writes, after the version, a `SessionLog` START event at step S, then
replays the lines `metrics.jsonl` keeps at steps >= S (the evaluation of step S, done before that checkpoint).
TensorBoard's Python loader (`EventAccumulator`, `purge_orphaned_data` on by default) drops every point at a step
>= S it read before a START at S, and its Rust data server drops a tag's points at steps >= a step that goes back;
either way the points of the interrupted run that the resumed one redoes are shown once, with the resumed run's
values, and the curves equal `metrics.jsonl` (which `JsonlLog.truncate_from` cuts at the same steps).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any, BinaryIO, Iterable, Mapping, Optional

from medclm_jax.records.tfrecord import frame_record

FILE_VERSION = "brain.Event:2"
PREFIX = "events.out.tfevents."
_START = 1  # SessionLog.SessionStatus.START


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def scalar_value(tag: str, value: float) -> bytes:
    """A `Summary.Value` with a float32 `simple_value`."""
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int, *, file_version: Optional[str] = None,
                 scalars: Optional[Mapping[str, float]] = None, session_start: bool = False) -> bytes:
    """A serialized `Event` (module docstring) with one of `file_version`, `scalars`, `session_start` (a oneof)."""
    if (file_version is not None) + bool(scalars) + session_start != 1:
        raise ValueError("an Event holds exactly one of file_version, summary and session_log")
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars:
        out += _length_delimited(5, b"".join(_length_delimited(1, scalar_value(t, v)) for t, v in scalars.items()))
    if session_start:
        out += _length_delimited(7, _key(1, 0) + _varint(_START))
    return out


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """A log line's scalars: every int / float / bool field but `step`, as floats, in the line's order."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


def new_file_name(directory: str, now: float, host: str) -> str:
    """`events.out.tfevents.<time>.<host>` with <time> past every event file already in `directory`."""
    stamp = int(now)
    for name in os.listdir(directory):
        if name.startswith(PREFIX):
            digits = name[len(PREFIX):].split(".", 1)[0]
            if digits.isdigit():
                stamp = max(stamp, int(digits) + 1)
    return f"{PREFIX}{stamp:010d}.{host}"


class TensorBoardLog:
    """A new event file in `directory` for a run (re)started at `start_step` (module docstring).

    Args:
      replay: log lines kept from before this start (`metrics.read_jsonl` after `truncate_from(start_step)`); the
        ones at steps >= start_step are written again after the START event.
      active: False on processes other than 0 (then nothing is written or created).
    """

    def __init__(self, directory: str, start_step: int, *, replay: Iterable[Mapping[str, Any]] = (),
                 active: bool = True):
        self.path: Optional[str] = None
        self._file: Optional[BinaryIO] = None
        if not active:
            return
        os.makedirs(directory, exist_ok=True)
        now = time.time()
        self.path = os.path.join(directory, new_file_name(directory, now, socket.gethostname()))
        self._file = open(self.path, "xb")  # pylint: disable=consider-using-with
        self._write(encode_event(now, 0, file_version=FILE_VERSION))
        self._write(encode_event(now, start_step, session_start=True))
        for record in replay:
            if int(record["step"]) >= start_step:
                self.write(record)

    def _write(self, event: bytes) -> None:
        assert self._file is not None
        self._file.write(frame_record(event))
        self._file.flush()  # a TensorBoard watching the run sees each line as it comes

    def write(self, record: Mapping[str, Any]) -> None:
        """One log line as one event at its `step` (nothing when it has no scalar, or on other processes)."""
        scalars = scalars_of(record)
        if self._file is not None and scalars:
            self._write(encode_event(time.time(), int(record["step"]), scalars=scalars))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

