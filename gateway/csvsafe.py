"""CSV for people who open it in Excel or WPS: every CSV the gateway writes goes through here.

- A cell that starts with `=`, `+`, `-`, `@`, a tab or a CR is a formula to a spreadsheet: a clerk's
  display name `=cmd|' /C calc'!A0` would run on the marketer's machine. Such cells get a leading
  `'` (OWASP's CSV-injection rule). A plain number (`-12.30`, `+5`) is left as it is: the spreadsheet
  reads it as a number, not a formula, and a negative amount must stay a number.
- The text starts with a UTF-8 BOM, or Excel reads the Chinese as mojibake.

`unescape` undoes `cell`, so a file we wrote (the import's errors file) imports again as it is.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any

BOM = "\ufeff"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?", re.ASCII)


def _formula(text: str) -> bool:
    return text.startswith(_FORMULA) and not _NUMBER.fullmatch(text)


def cell(value: Any) -> str:
    """One cell as text, escaped if a spreadsheet would run it. A value that already starts with
    quotes before a formula gets one more, so `unescape` restores it exactly."""
    text = "" if value is None else str(value)
    return "'" + text if _formula(text.lstrip("'")) else text


def unescape(text: str) -> str:
    """The value `cell` was given (for CSV read back in)."""
    return text[1:] if text.startswith("'") and _formula(text.lstrip("'")) else text


class Writer:
    """csv.writer that escapes every cell."""

    def __init__(self, out):
        self._w = csv.writer(out)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([cell(v) for v in row])


def lines(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV text (no BOM): for a document written in parts."""
    buf = io.StringIO()
    w = Writer(buf)
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def dumps(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A whole CSV document: BOM, header, rows."""
    return BOM + lines([header]) + lines(rows)
