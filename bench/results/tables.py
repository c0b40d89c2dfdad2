"""The report's tables as data: a row per method (its scores as mean, spread and seeds), the
columns, the comparison of one method with the others, and the summary of tables (the main
table). bench/results/report.py builds them from the result store; bench/results/render.py
renders them."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TEACHER_ROW = "teacher"
FORMATS = ("md", "latex", "csv", "html")
METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}  # result key -> label in titles
REPORTED_NOTE = "† reported in the paper, not measured here"


@dataclass(frozen=True)
class Stat:
    """A score in percent: the mean over seeds and the sample std (None for one value)."""

    mean: float
    std: float | None = None

    @classmethod
    def of(cls, fractions: Iterable[float]) -> Stat | None:
        """From scores in 0..1, skipping missing ones; None when none is left."""
        vals = [float(v) * 100 for v in fractions if v is not None and not math.isnan(v)]
        if not vals:
            return None
        mean = sum(vals) / len(vals)
        if len(vals) == 1:
            return cls(mean)
        return cls(mean, (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5)


@dataclass
class Row:
    """One line of a table. `scores` holds the domains and "avg"; params are counts."""

    method: str
    source: str = "measured"  # or "reported": copied from a paper, not run here
    is_teacher: bool = False
    scores: dict[str, Stat | None] = field(default_factory=dict)
    seeds: int | None = None
    params: float | None = None
    non_embedding: float | None = None
    latency_ms: float | None = None  # median batch-1 forward time
    speedup: float | None = None  # teacher median / student median, batch 1
    train_minutes: float | None = None  # student training per seed, as recorded (teachers not counted)
    # the training of the teachers the runs distilled from, each once (they serve every seed), as recorded;
    # 0 for a method without a teacher; a teacher row: its own
    teacher_minutes: float | None = None
    unconverged: int | None = None  # runs behind the row whose dev curve had not flattened (bench.results.convergence)
    unconverged_in: frozenset[str] = frozenset()  # the score keys (domains, "avg") those runs enter

    @property
    def label(self) -> str:
        return f"{self.method}†" if self.source == "reported" else self.method

    @property
    def ranked(self) -> bool:
        """Only measured students compete for "best": the teacher is the reference, and a
        paper's numbers come from another protocol."""
        return not self.is_teacher and self.source == "measured"


@dataclass(frozen=True)
class Column:
    key: str  # a key of Row.scores (kind "score") or a Row attribute
    header: str
    kind: str  # score, count, params, ms, ratio, minutes
    best: str | None = None  # "max", "min", or None: not ranked


@dataclass(frozen=True)
class Versus:
    """One method (the table's `versus` method) against another, on the table's domains."""

    method: str
    delta: Stat | None  # the versus method's average minus this one's, in points: mean (± std) over paired seeds
    seeds: int  # seeds both ran on every domain
    leads: int  # domains where the versus method's mean over seeds is the higher
    domains: int
    train_minutes: float | None  # this method's student training per seed, as recorded (teachers not counted)
    teacher_minutes: float | None  # the training of its teachers, each once, as recorded (Row.teacher_minutes)
    # the paired randomisation test (bench.results.significance) over every test example of those seeds and
    # domains; None where a run lacks its predictions
    p_value: float | None = None
    examples: int = 0


@dataclass
class Table:
    suite: str
    train_ratio: float
    preset: str
    metric: str
    domains: list[str]
    rows: list[Row]
    timing: str | None = None  # the conditions latency was measured under, for the note
    retimed: str | None = None  # the day of the `bench retime` sitting every latency comes from, or "mixed"
    versus: str | None = None  # the method compared with every other (`report --versus`), if it ran here
    comparisons: list[Versus] = field(default_factory=list)  # its own first, then the others in row order
    unconverged: list[str] = field(default_factory=list)  # the runs whose training had not converged, described
    unjudged: dict[str, int] = field(default_factory=dict)  # method -> its runs whose convergence is unknown
    # the teachers (kind and domain) trained more than once with different test scores, with those scores
    retrained_teachers: list[str] = field(default_factory=list)
    # the teachers that had not learnt the task (bench.results.report.LEARNT_MARGIN), each with its average
    # test accuracy and the methods distilled from it: "multi 38.7 (hrkd)"; the summary's, a column's all in one
    unlearnt_teachers: list[str] = field(default_factory=list)
    majority: float | None = None  # answering each test set's most frequent label: its accuracy (%), averaged
    # score columns that rank nothing, so none of their cells is bold: every column of a table none of whose
    # teachers learnt the task; the summary's, the columns of such tables
    unranked: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        few_shot = f", {self.train_ratio:g} of train" if self.train_ratio != 1.0 else ""
        return f"{self.suite} ({self.preset} preset{few_shot})"

    @property
    def title(self) -> str:
        return f"{self.name}: test {METRICS[self.metric]} (%)"

    @property
    def slug(self) -> str:
        """For file names; few-shot tables as `<suite>-r<ratio>`, as in the store."""
        suite = self.suite if self.train_ratio == 1.0 else f"{self.suite}-r{self.train_ratio:g}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{suite}-{self.preset}")

    @property
    def columns(self) -> list[Column]:
        return [*(Column(d, d, "score", "max") for d in self.domains),
                Column("avg", "avg", "score", "max"),
                Column("seeds", "seeds", "count"),
                Column("params", "params", "params", "min"),
                Column("non_embedding", "non-emb params", "params", "min"),
                Column("latency_ms", "latency (ms)", "ms", "min"),
                Column("speedup", "speed-up", "ratio", "max")]


@dataclass
class Summary(Table):
    """A paper's main table: a row per method, a column per table of one preset (suite and train
    ratio, `domains` holds their names) with that table's average over its domains."""

    @property
    def name(self) -> str:
        return f"summary ({self.preset} preset)"

    @property
    def title(self) -> str:
        return f"{self.name}: test {METRICS[self.metric]} (%), the average over each suite's domains"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"summary-{self.preset}")

    @property
    def columns(self) -> list[Column]:
        return [*(Column(d, d, "score", "max") for d in self.domains),
                Column("seeds", "seeds", "count"),
                Column("unconverged", "runs not converged", "count"),
                Column("params", "params", "params", "min"),
                Column("train_minutes", "student training (min per seed)", "minutes"),
                Column("teacher_minutes", "teacher training (min)", "minutes")]


def summarize(tables: Sequence[Table]) -> list[Summary]:
    """One Summary per preset; its columns: each suite, followed by its few-shot ratios. A paper's
    rows are left out: their one average cannot stand for every suite. Seeds: the fewest any of the
    row's columns holds."""
    summaries = []
    for preset in dict.fromkeys(t.preset for t in tables):
        group = sorted((t for t in tables if t.preset == preset), key=lambda t: (t.suite, -t.train_ratio))
        columns = [t.suite if t.train_ratio == 1.0 else f"{t.suite} ({t.train_ratio:g} of train)" for t in group]
        parts: dict[str, list[tuple[str, Row]]] = {}
        for column, table in zip(columns, group):
            for row in table.rows:
                if row.source == "measured":
                    parts.setdefault(row.method, []).append((column, row))
        full = {c for c, t in zip(columns, group) if t.train_ratio == 1.0}
        rows = [_summary_row(method, found, full) for method, found in parts.items()]
        rows.sort(key=lambda r: not r.is_teacher)  # stable: teachers first, then the methods in order
        summaries.append(Summary("summary", 1.0, preset, group[0].metric, columns, rows,
                                 unconverged=[u for t in group for u in t.unconverged],
                                 unjudged={c: sum(t.unjudged.values()) for c, t in zip(columns, group) if t.unjudged},
                                 retrained_teachers=[r for t in group for r in t.retrained_teachers],
                                 unlearnt_teachers=[f"{c}: {', '.join(t.unlearnt_teachers)}"
                                                    for c, t in zip(columns, group) if t.unlearnt_teachers],
                                 unranked=frozenset(c for c, t in zip(columns, group) if t.unranked)))
    return summaries


def _summary_row(method: str, found: Sequence[tuple[str, Row]], full: set[str]) -> Row:
    """One method's rows of several tables as one row: each table's average under its column; the
    training time added up over the full-data columns (a few-shot run's cost is its own table's), so
    rows compare: unknown where the row lacks one of those columns or one lacks the time."""
    seeds = [r.seeds for _, r in found if r.seeds is not None]
    costs = [(r.train_minutes, r.teacher_minutes) for c, r in found if c in full]
    minutes, teacher_minutes = ([m for m, _ in costs], [t for _, t in costs])
    complete = len(costs) == len(full)
    counts = [r.unconverged for _, r in found if r.unconverged is not None]
    return Row(method, is_teacher=found[0][1].is_teacher, scores={c: r.scores.get("avg") for c, r in found},
               seeds=min(seeds) if seeds else None, params=next((r.params for _, r in found if r.params), None),
               train_minutes=sum(minutes) if complete and None not in minutes else None,
               teacher_minutes=sum(teacher_minutes) if complete and None not in teacher_minutes else None,
               unconverged=sum(counts) if counts else None,
               unconverged_in=frozenset(c for c, r in found if r.unconverged))
