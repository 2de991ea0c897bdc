"""The one JSON-record reader of sftkit: line-numbered errors and an explicit skip-or-fail policy.

    report = read_records("data/train.jsonl", on_error="skip")
    for record in report.records:      # Record(source, line, data)
        use(record.data)
    for error in report.errors:        # RecordError: "data/train.jsonl:7: malformed JSON (...)"
        print(error, file=sys.stderr)

Formats:

- ``.jsonl`` (and any other suffix): one JSON value per line; blank lines are skipped. With
  ``on_error="skip"`` a malformed line costs that line only; every later line is still read.
- ``.json``: a list of records, or an object holding exactly one list (``{"data": [...]}``). ``line``
  is then the 1-based position of the record in that list (there are no meaningful file lines).

A missing or unreadable file, a ``.json`` file that cannot be parsed, and a file with no records
always raise :class:`RecordError`, whatever ``on_error`` says: there is nothing to continue with.
Callers validate the *content* of each record themselves and raise ``RecordError(source, line, reason)``
so every data error in the project reads the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ON_ERROR_CHOICES = ("raise", "skip")


class RecordError(ValueError):
    """A record (or a whole file) cannot be used; ``str()`` is one line ``file:line: reason``."""

    def __init__(self, source: str | os.PathLike, line: int | None, reason: str):
        self.source, self.line, self.reason = str(source), line, reason
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Record:
    source: str  # the file the record came from
    line: int  # 1-based line in a .jsonl file; 1-based position in a .json list
    data: Any  # the parsed JSON value

    @property
    def where(self) -> str:
        """``file:line``, the prefix of every error about this record."""
        return f"{self.source}:{self.line}"

    def error(self, reason: str) -> RecordError:
        return RecordError(self.source, self.line, reason)


@dataclass
class ReadReport:
    records: list[Record] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)

    def summary(self) -> str:
        """e.g. ``"120 records, 2 bad lines skipped"``."""
        text = f"{len(self.records)} record{'s' if len(self.records) != 1 else ''}"
        if self.errors:
            text += f", {len(self.errors)} bad record{'s' if len(self.errors) != 1 else ''} skipped"
        return text


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR_CHOICES)}")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise RecordError(path, None, "no such file")
    if path.is_dir():
        raise RecordError(path, None, "is a directory, expected a .jsonl or .json file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RecordError(path, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise RecordError(path, None, f"cannot read ({error.strerror or error})") from None


def _json_list_records(path: Path, text: str) -> list[Record]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(path, error.lineno, f"malformed JSON ({error.msg} at column {error.colno})") from None
    if isinstance(payload, dict):
        lists = [value for value in payload.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise RecordError(path, None, "expected a JSON list of records, or an object holding exactly one list "
                                          f"(found {len(lists)} lists)")
        payload = lists[0]
    if not isinstance(payload, list):
        raise RecordError(path, None, f"expected a JSON list of records, got {type(payload).__name__}")
    return [Record(str(path), position, value) for position, value in enumerate(payload, start=1)]


def read_records(path: str | os.PathLike, *, on_error: str = "raise") -> ReadReport:
    """Read every record of one ``.jsonl`` / ``.json`` file (see the module doc for the formats).

    ``on_error="raise"``: the first malformed line raises :class:`RecordError`. ``"skip"``: malformed
    lines are collected in ``report.errors`` and reading continues with the next line.
    """
    _check_on_error(on_error)
    path = Path(path)
    text = _read_text(path)
    report = ReadReport()
    if path.suffix.lower() == ".json":
        report.records = _json_list_records(path, text)
    else:
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                report.records.append(Record(str(path), line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                record_error = RecordError(path, line_number, f"malformed JSON ({error.msg} at column {error.colno})")
                if on_error == "raise":
                    raise record_error from None
                report.errors.append(record_error)
    if not report.records:
        detail = f" ({len(report.errors)} malformed line(s))" if report.errors else ""
        raise RecordError(path, None, f"no records{detail}")
    return report


def validate_records(records: Iterable[Record], check, *, on_error: str = "raise") -> tuple[list, list[RecordError]]:
    """Apply ``check(record) -> value`` (which raises RecordError / ValueError) to every record.

    Returns ``(values, errors)``; with ``on_error="raise"`` the first error propagates. A plain
    ``ValueError`` from ``check`` is re-raised as a RecordError naming the record's file and line.
    """
    _check_on_error(on_error)
    values, errors = [], []
    for record in records:
        try:
            values.append(check(record))
        except RecordError as error:
            if on_error == "raise":
                raise
            errors.append(error)
        except ValueError as error:
            record_error = record.error(str(error))
            if on_error == "raise":
                raise record_error from None
            errors.append(record_error)
    return values, errors
