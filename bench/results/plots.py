"""Plots of the report tables, so of the result store only: average score against the
student's batch-1 latency with the Pareto front, and the score per domain as grouped bars.

Drawn on matplotlib's Agg canvas without pyplot (no display, no global figure state) and
imported lazily, so `python -m bench` starts fast. Only measured rows are drawn: a paper's
rows have no latency measured here and come from another protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results.tables import METRICS, Row, Table

log = logging.getLogger(__name__)

FIGSIZE = (6.4, 4.0)  # inches
DPI = 120
TEACHER_COLOUR = "0.45"  # grey, a shade no student gets
TEACHER_MARKERS = ("s", "D", "^", "v")  # a table's teacher rows often share one latency: told apart by shape


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, score) points that no other point beats on both lower latency and higher
    score, by increasing latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_paths(table: Table, out_dir: str | Path) -> tuple[Path, Path]:
    """Where `write_plots` draws `table`'s accuracy-latency plot and its per-domain bars."""
    return Path(out_dir) / f"{table.slug}-accuracy-latency.png", Path(out_dir) / f"{table.slug}-domains.png"


def write_plots(tables: Sequence[Table], out_dir: str | Path) -> dict[str, list[Path]]:
    """`<slug>-accuracy-latency.png` and `<slug>-domains.png` per table (slug: `<suite>-<preset>`);
    the paths written, by table slug. A plot whose fields are missing is skipped with a warning."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = {}
    for table in tables:
        latency_path, domains_path = plot_paths(table, out_dir)
        paths = [plot_accuracy_latency(table, latency_path), plot_domains(table, domains_path)]
        written[table.slug] = [p for p in paths if p is not None]
    return written


def existing_plots(tables: Sequence[Table], out_dir: str | Path) -> dict[str, list[Path]]:
    """The plots an earlier `--plots out_dir` drew for these tables, by table slug."""
    return {table.slug: [p for p in plot_paths(table, out_dir) if p.is_file()] for table in tables}


def plot_accuracy_latency(table: Table, path: Path) -> Path | None:
    """Each measured method (the teacher too) as a labelled point; the front as a step line."""
    measured = [r for r in table.rows if r.source == "measured"]
    points = [(r.latency_ms, r.scores["avg"].mean, r) for r in measured
              if r.latency_ms is not None and r.scores.get("avg") is not None]
    if not points:
        log.warning("%s: no method has both a batch-1 latency and an average; %s not drawn", table.name, path.name)
        return None
    left_out = [r.method for r in measured if all(r is not p[2] for p in points)]
    if left_out:
        log.warning("%s: %s left out of %s (no latency or no average)", table.name, ", ".join(left_out), path.name)
    fig = _figure()
    ax = fig.add_subplot()
    colours, teachers = _student_colours(table), 0
    for x, y, row in points:  # a legend, not labels beside the points: close scores overlap
        if row.is_teacher:
            style = {"marker": TEACHER_MARKERS[teachers % len(TEACHER_MARKERS)], "color": TEACHER_COLOUR}
            teachers += 1
        else:
            style = {"marker": "o", "color": colours[row.method]}
        ax.scatter([x], [y], zorder=3, label=row.method, **style)
    front = pareto_front([(x, y) for x, y, _ in points])
    # post: a latency budget between two front points buys the score of the faster one
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="C3", linewidth=1,
            linestyle="--", label="Pareto front", zorder=2)
    ax.margins(x=0.1, y=0.1)
    ax.set_xlabel("batch-1 latency, median (ms)")
    ax.set_ylabel(f"average test {METRICS[table.metric]} (%)")
    ax.set_title(table.name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_domains(table: Table, path: Path) -> Path | None:
    """A group of bars per domain, a bar per measured method, with the std over seeds."""
    rows = [r for r in table.rows if r.source == "measured" and any(r.scores.get(d) for d in table.domains)]
    if not rows:
        log.warning("%s: no per-domain scores; %s not drawn", table.name, path.name)
        return None
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    colours = _student_colours(table)
    for i, row in enumerate(rows):
        stats = [row.scores.get(d) for d in table.domains]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(table.domains))]
        ax.bar(xs, [math.nan if s is None else s.mean for s in stats], width,
               yerr=[math.nan if s is None or s.std is None else s.std for s in stats], capsize=2,
               label=row.method, color=TEACHER_COLOUR if row.is_teacher else colours[row.method])
    ax.set_xticks(range(len(table.domains)), table.domains)
    ax.set_ylabel(f"test {METRICS[table.metric]} (%)")
    ax.set_ylim(_floor(rows, table.domains), 100)
    ax.set_title(table.name, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _floor(rows: Sequence[Row], domains: Sequence[str]) -> float:
    """The y axis starts a little below the lowest bar, at a multiple of 10, so that close
    scores can be told apart."""
    lowest = min(s.mean - (s.std or 0.0) for r in rows for d in domains if (s := r.scores.get(d)))
    return max(0.0, 10 * math.floor((lowest - 5) / 10))


def _student_color(i: int):
    """tab20's hues without its greys (the teachers' colour): the nine dark shades, then the nine
    light ones, so that eleven and more methods get colours of their own (tab10 has a grey and
    repeats after ten)."""
    from matplotlib import colormaps

    shades = [k for k in range(0, 20, 2) if k != 14] + [k for k in range(1, 20, 2) if k != 15]
    return colormaps["tab20"](shades[i % len(shades)])


def _student_colours(table: Table) -> dict[str, Any]:
    """A colour per measured student, by its place in the table, so that a method has the same
    colour in both plots of a table."""
    students = [r.method for r in table.rows if r.source == "measured" and not r.is_teacher]
    return {method: _student_color(i) for i, method in enumerate(students)}


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    log.debug("wrote %s", path)
    return path
