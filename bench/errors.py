"""Errors meant for people: one line of what went wrong, one of what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A user mistake or an environment problem. The CLI prints it without a traceback, exit 2."""

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint

    def __str__(self) -> str:
        return self.what if not self.hint else f"{self.what}\n  {self.hint}"


def unknown_name(kind: str, name: str, known: Iterable[str], listing: str | None = None,
                 hint: str | None = None) -> BenchError:
    """`unknown distiller 'kdd'; did you mean 'kd'?`, with a hint: `hint`, else where to see them all."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    what = f"unknown {kind} {name!r}"
    what += f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"
    if hint is None and listing:
        hint = f"see `python -m bench ls {listing}`"
    return BenchError(what, hint)
