"""The record contract's one error type."""

from __future__ import annotations


class RecordError(ValueError):
    """A shard, its index or a record is unusable.

    The message names the file and the byte offset (also in `offset`) (or index line, or key) and says what to do. `reason` is a short
    machine-countable code (`tfrecord_crc`, `tfrecord_truncated`, `missing_index`, `bad_index`, `bad_example`,
    `bad_record`, ...) so a reader that skips bad records can count them by cause.
    """

    def __init__(self, message: str, *, path: str = "", offset: int | None = None, field: str = "",
                 reason: str = "bad_record"):
        self.path = path
        self.offset = offset
        self.field = field
        self.reason = reason
        self.message = message
        where = ", ".join(x for x in (path, f"key {field}" if field else "") if x)
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self):
        # Keep path/offset/field/reason across processes (Grain workers pickle errors back to the main process).
        return _rebuild, (self.message, self.path, self.offset, self.field, self.reason)


def _rebuild(message: str, path: str, offset: int | None, field: str, reason: str) -> RecordError:
    return RecordError(message, path=path, offset=offset, field=field, reason=reason)
