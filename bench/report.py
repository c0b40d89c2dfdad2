"""Tables built from the result store only (never from live objects).

One table per (suite, preset): a row per method (teacher first), a column per domain, the
average over domains, and the student's parameters. Accuracy is in percent, the mean over
seeds, with the standard deviation when there are several.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from bench.errors import BenchError

TEACHER_ROW = "teacher"


def to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, with dotted column names (`method.name`, `metrics.accuracy` ...)."""
    rows = list(records)
    if not rows:
        return pd.DataFrame()
    slim = [{k: v for k, v in r.items() if k != "train"} | {"train": {
        k: v for k, v in (r.get("train") or {}).items() if k != "history"}} for r in rows]
    return pd.json_normalize(slim)


def _cell(values: Sequence[float]) -> str:
    vals = [v * 100 for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.1f}"
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f}"


def _millions(n: float | None) -> str:
    return "-" if n is None or (isinstance(n, float) and math.isnan(n)) else f"{n / 1e6:.1f}M"


def accuracy_table(df: pd.DataFrame, domains: Sequence[str],
                   method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """The table of one (suite, preset): methods x domains, average, seeds and parameters.
    Rows: the teacher, then `method_order`, then any other method alphabetically.

    A method's average is taken per seed over all domains, then its mean (± std) over seeds;
    a method that lacks a domain has no average.
    """
    rows = []
    teachers = df.dropna(subset=["teacher.key"]) if "teacher.key" in df else df.iloc[0:0]
    teachers = teachers.drop_duplicates("teacher.key")
    if len(teachers):
        per_domain = {d: teachers.loc[teachers["suite.domain"] == d, "teacher.test_accuracy"].tolist()
                      for d in domains}
        complete = all(len(v) == 1 for v in per_domain.values())
        average = [sum(v[0] for v in per_domain.values()) / len(domains)] if complete else []
        rows.append(_row(TEACHER_ROW, per_domain, average, None, teachers, "teacher.params"))
    methods = list(method_order or [])
    methods = [m for m in methods if m in set(df["method.name"])] + sorted(set(df["method.name"]) - set(methods))
    for method in methods:
        sub = df[df["method.name"] == method]
        per_domain = {d: sub.loc[sub["suite.domain"] == d, "metrics.accuracy"].tolist() for d in domains}
        pivot = sub.pivot_table(index="seed", columns="suite.domain", values="metrics.accuracy")
        average = pivot.reindex(columns=list(domains)).dropna().mean(axis=1).tolist()
        seeds = int(sub.groupby("suite.domain")["seed"].nunique().min())
        rows.append(_row(method, per_domain, average, seeds, sub, "metrics.params"))
    return pd.DataFrame(rows)


def _row(name: str, per_domain: dict[str, list[float]], average: list[float], seeds: int | None,
         df: pd.DataFrame, params_prefix: str) -> dict[str, Any]:
    def largest(column: str) -> float | None:
        return df[column].max() if column in df else None

    return {
        "method": name,
        **{d: _cell(v) for d, v in per_domain.items()},
        "avg": _cell(average),
        "seeds": "-" if seeds is None else str(seeds),
        "params": _millions(largest(f"{params_prefix}.total")),
        "non-emb params": _millions(largest(f"{params_prefix}.non_embedding")),
    }


def render(table: pd.DataFrame, fmt: str = "md") -> str:
    from tabulate import tabulate

    formats = {"md": "github"}
    if fmt not in formats:
        raise BenchError(f"unknown report format {fmt!r}", f"use one of: {', '.join(formats)}")
    return tabulate(table, headers="keys", tablefmt=formats[fmt], showindex=False, disable_numparse=True)


def build_report(records: Iterable[dict[str, Any]], suite: str | None, domain_orders: dict[str, Sequence[str]],
                 fmt: str = "md", method_order: Sequence[str] | None = None) -> str:
    df = to_frame(records)
    if df.empty:
        raise BenchError("the results dir holds no results", "run `python -m bench run ...` first")
    if suite is not None:
        df = df[df["suite.name"] == suite]
        if df.empty:
            raise BenchError(f"no results for suite {suite!r}", "check --suite, or run that suite first")
    parts = []
    for (suite_name, preset), sub in df.groupby(["suite.name", "preset"], sort=True):
        domains = list(domain_orders.get(suite_name) or [])
        domains = [d for d in domains if d in set(sub["suite.domain"])] + sorted(
            set(sub["suite.domain"]) - set(domains))
        table = accuracy_table(sub, domains, method_order)
        parts.append(f"### {suite_name} ({preset} preset): test accuracy (%)\n\n{render(table, fmt)}\n")
    return "\n".join(parts)
