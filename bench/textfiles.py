"""Reading a suite's text files line by line, with every bad line reported as `file:line: reason`.

Public for suite plugins: a reader hands each bad line to its own `bad(lineno, reason)`, which
stops the read or skips and counts the line (--skip-bad-rows)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.errors import BenchError


class BadRow(ValueError):
    """A line that is not a row: `reason`, and `row`, the JSON object when the line was one."""

    def __init__(self, reason: str, row: dict | None = None):
        super().__init__(reason)
        self.reason, self.row = reason, row


def utf8_lines(path: Path, bad: Callable[[int, str], None], header: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text with its line break) of each line of a UTF-8 file, a BOM tolerated. A line
    whose bytes are not UTF-8 goes to `bad` and is left out; in a `header` it stops the read, since
    the columns cannot be told without it."""
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                reason = f"bytes that are not UTF-8 at byte {offset + exc.start} of the file"
                if header and lineno == 1:
                    raise BenchError(f"{path}:1: {reason}", "save the file as UTF-8") from None
                bad(lineno, reason)
                text = None
            offset += len(raw)
            if text is not None:
                yield lineno, text


def json_object(line: str, fields: tuple[str, ...]) -> dict:
    """One jsonl line as an object holding `fields` (their values unchecked), else BadRow."""
    try:
        row = json.loads(line.rstrip("\r\n"))  # without the line break, an error's column is on this line
    except json.JSONDecodeError as exc:
        raise BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise BadRow(f"a JSON {type(row).__name__}, not an object with {', '.join(fields)}")
    if missing := [k for k in fields if k not in row]:
        raise BadRow(f"missing field(s) {', '.join(missing)}", row)
    return row
