"""Reading annotation files: CSVs with their line numbers (refusing a header that lacks a needed column), JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Iterator, Sequence

from data_gen.errors import InputError


@dataclasses.dataclass
class CsvTable:
    """A CSV file held in memory.

    Attributes:
      path: the file.
      header: column names, stripped of whitespace (and of a UTF-8 byte-order mark).
      rows: (line number in the file, fields) for each non-empty data row; line 1 is the header.
    """

    path: str
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, name: str) -> int:
        return self.header.index(name)

    def has(self, name: str) -> bool:
        return name in self.header

    def records(self, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
        """(line, {column: stripped value}) for the named columns; short rows read as empty fields."""
        idx = [(c, self.header.index(c)) for c in columns if c in self.header]
        for line, fields in self.rows:
            yield line, {c: (fields[i].strip() if i < len(fields) else "") for c, i in idx}


def read_csv(path: str, *, adapter: str, required: Sequence[str], expected_header: str,
             config_key: str = "adapter.csv") -> CsvTable:
    """Reads a whole CSV, checking its header first.

    Args:
      path: the CSV file.
      adapter: the adapter name, for messages.
      required: columns that must be in the header.
      expected_header: the header the adapter expects, quoted in the error so the user can compare.
      config_key: the config key that points at this file, for the missing-file message.

    Raises:
      InputError(reason='missing_file' | 'empty_file' | 'missing_column'): naming the file (and the column).
    """
    if not os.path.isfile(path):
        raise InputError(f"the {adapter} annotation file does not exist; set {config_key} (relative to "
                         f"adapter.root, or absolute) to the file with header: {expected_header}", path=path,
                         reason="missing_file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"the file is empty; the {adapter} adapter expects the header: {expected_header}",
                             path=path, reason="empty_file")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(
                f"missing column {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                + f"; the {adapter} adapter expects the header: {expected_header}; found: {','.join(header)}",
                path=path, field=missing[0], reason="missing_column")
        rows = []
        for fields in reader:
            if any(v.strip() for v in fields):
                rows.append((reader.line_num, fields))
    return CsvTable(path=path, header=header, rows=rows)


def read_json(path: str, *, adapter: str, expected: str, config_key: str = "adapter.json") -> Any:
    """Loads a JSON annotation file.

    Raises:
      InputError(reason='missing_file' | 'bad_json'): naming the file (and the JSON error's line and column).
    """
    if not os.path.isfile(path):
        raise InputError(f"the {adapter} annotation file does not exist; set {config_key} (relative to adapter.root, "
                         f"or absolute) to a JSON file holding {expected}", path=path, reason="missing_file")
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the {adapter} adapter "
                             f"expects {expected}", path=path, reason="bad_json") from None
