"""Rows a paper reports: read from a CSV the user supplies, shown apart from measured rows."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.results.tables import Row, Stat

log = logging.getLogger(__name__)


def read_paper(path: str | os.PathLike, domains: Collection[str] | None = None) -> list[Row]:
    """Rows from a CSV of a paper's numbers: a `method` column and any of the domain columns,
    `avg` (in percent, as papers print it: `85.3` or `85.3 ± 0.4`) and `params` (millions, `14.5`).
    Given `domains`, other columns (notes, venue ...) are left out with a warning."""
    path = Path(path)
    hint = "give a CSV whose first line names the columns, e.g. method,books,dvd,avg,params"
    if not path.is_file():
        raise BenchError(f"paper file {path} does not exist", hint)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"paper file {path} is not a readable CSV ({str(exc).strip()})", hint) from None
    df.columns = [c.strip() for c in df.columns]
    if "method" not in df.columns:
        raise BenchError(f"paper file {path} has no `method` column (columns: {', '.join(df.columns)})", hint)
    dupes = sorted(set(df["method"][df["method"].duplicated()]))
    if dupes:
        raise BenchError(f"paper file {path} names {', '.join(dupes)} more than once",
                         "keep one row per method (one file per paper)")
    if domains is not None:
        other = [c for c in df.columns if c not in {"method", "params", "avg", *domains}]
        if other:
            log.warning("paper file %s: columns %s are not domains; left out", path, ", ".join(other))
            df = df.drop(columns=other)
    if df.empty:
        log.warning("paper file %s has no rows", path)
    return [_paper_row(path, line, record) for line, record in enumerate(df.to_dict("records"), start=2)]


def _paper_row(path: Path, line: int, record: dict[str, str]) -> Row:
    method = record.pop("method").strip()
    if not method:
        raise BenchError(f"{path}:{line}: the method is empty", "name the method of every row")
    params = _paper_number(path, line, "params", record.pop("params", "").removesuffix("M"))
    scores = {}
    for column, raw in record.items():
        mean, _, std = raw.replace("%", "").partition("±")
        scores[column] = None
        if (value := _paper_number(path, line, column, mean)) is not None:
            if not 1.0 < value <= 100.0:
                raise BenchError(f"{path}:{line}: {column} = {raw!r} is not a score in percent",
                                 "give it as papers print it, e.g. 85.3 (not the fraction 0.853)")
            scores[column] = Stat(value, _paper_number(path, line, column, std))
    return Row(method, source="reported", scores=scores, params=None if params is None else params * 1e6)


def _paper_number(path: Path, line: int, column: str, raw: str) -> float | None:
    text = raw.strip()
    if text in ("", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"{path}:{line}: {column} is {raw.strip()!r}, not a number",
                         "give scores in percent (85.3 or 85.3 ± 0.4) and params in millions (14.5); "
                         "leave unknowns empty") from None
