"""Errors with enough context to fix the input: the file, the row or tag, the field, and what to do."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data. `reason` is a short machine-countable code (e.g. `not_dicom`, `box_outside`)."""

    def __init__(self, message: str, *, path: str = "", field: str = "", reason: str = "bad_input"):
        self.path = path
        self.field = field
        self.reason = reason
        where = ", ".join(x for x in (path, f"field {field}" if field else "") if x)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(ValueError):
    """A config key is missing or has a bad value; the message names the key."""
