"""Reading annotation files: CSVs with their line numbers (refusing a header that lacks a needed column), JSON.

Whatever is wrong with a file as a whole (not UTF-8, a CSV field over `csv.field_size_limit()` (128 KiB: usually
an unclosed quote swallowing the rest of the file), another CSV syntax error, JSON nested deeper than the
parser's recursion limit) raises `InputError` naming the file, the place and what to do, never a traceback.
"""

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
      InputError(reason='missing_file' | 'empty_file' | 'missing_column' | 'not_utf8' | 'bad_csv'): naming the
        file (and the column or line).
    """
    if not os.path.isfile(path):
        raise InputError(f"the {adapter} annotation file does not exist; set {config_key} (relative to "
                         f"adapter.root, or absolute) to the file with header: {expected_header}", path=path,
                         reason="missing_file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = _records(reader)
            header = next(records, None)
            if header is None:
                raise InputError(f"the file is empty; the {adapter} adapter expects the header: {expected_header}",
                                 path=path, reason="empty_file")
            header = [h.strip() for h in header[1]]
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(
                    f"missing column {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                    + f"; the {adapter} adapter expects the header: {expected_header}; found: {','.join(header)}",
                    path=path, field=missing[0], reason="missing_column")
            rows = [(line, fields) for line, fields in records if any(v.strip() for v in fields)]
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except _CsvLineError as e:
        raise InputError(f"the record starting on line {e.line}: {_csv_problem(e.error)}", path=path,
                         reason="bad_csv") from None
    return CsvTable(path=path, header=header, rows=rows)


class _CsvLineError(Exception):
    def __init__(self, error: csv.Error, line: int):
        super().__init__(str(error))
        self.error, self.line = error, line


def _records(reader) -> Iterator[tuple[int, list[str]]]:
    """(line number the record ends on, fields); a csv.Error becomes _CsvLineError with the line it starts on."""
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _CsvLineError(e, start) from None
        yield reader.line_num, fields


def _csv_problem(e: csv.Error) -> str:
    text = str(e)
    if "field larger than field limit" in text:
        return (f"a field is longer than {csv.field_size_limit() // 1024} KiB: most likely a quote (\") opens a "
                "field that never closes; fix the quoting there")
    return f"not valid CSV ({text}); re-export it as a comma-separated UTF-8 file"


def _not_utf8(path: str) -> InputError:
    """The error for a file that is not UTF-8, placed by line (the decoder's own offset is within a buffer)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as whole:
        line = data.count(b"\n", 0, whole.start) + 1
        where = f" (line {line}, byte {data[whole.start:whole.start + 1]!r})"
    return InputError(f"not UTF-8 text{where}; re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`",
                      path=path, reason="not_utf8")


def read_json(path: str, *, adapter: str, expected: str, config_key: str = "adapter.json") -> Any:
    """Loads a JSON annotation file.

    Raises:
      InputError(reason='missing_file' | 'bad_json' | 'not_utf8'): naming the file (and the JSON error's line and
        column).
    """
    if not os.path.isfile(path):
        raise InputError(f"the {adapter} annotation file does not exist; set {config_key} (relative to adapter.root, "
                         f"or absolute) to a JSON file holding {expected}", path=path, reason="missing_file")
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the {adapter} adapter "
                             f"expects {expected}", path=path, reason="bad_json") from None
        except RecursionError:
            raise InputError(f"JSON nested too deeply for the parser; the {adapter} adapter expects {expected}, "
                             "a few levels deep: check how the file was generated", path=path,
                             reason="bad_json") from None
