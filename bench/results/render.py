"""Rendering report tables: markdown, LaTeX (booktabs), HTML, CSV (plain numbers, for
machines), and the generated results page (regenerated, never edited by hand)."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.results.convergence import MIN_GAIN
from bench.results.report import LEARNT_MARGIN, build_tables
from bench.results.significance import SIGNIFICANT
from bench.results.tables import FORMATS, METRICS, REPORTED_NOTE, Column, Row, Summary, Table, summarize

log = logging.getLogger(__name__)

UNCONVERGED_MARK = "‡"  # after a score some of whose runs had not converged
TEACHER_TRAINING_NOTE = ("Teacher training: the wall time of the teachers the runs distilled from, each once "
                         "(they serve every seed), as recorded; 0: no teacher.")


@dataclass(frozen=True)
class Markup:
    bold: Callable[[str], str]
    escape: Callable[[str], str]


_LATEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "×": r"$\times$", "†": r"\textsuperscript{\dag}", "‡": r"\textsuperscript{\ddag}", "−": r"$-$",
    "<": r"$<$",
})

MARKUP = {
    "md": Markup(lambda s: f"**{s}**", lambda s: s.replace("|", r"\|")),
    "latex": Markup(lambda s: rf"\textbf{{{s}}}", lambda s: s.translate(_LATEX)),
    "html": Markup(lambda s: f"<b>{s}</b>", lambda s: html.escape(s, quote=False)),
}


def _number(column: Column, value: Any) -> str:
    """The number a cell prints, at the precision it prints it: what "best" compares."""
    if column.kind == "score":
        return f"{value.mean:.1f}"
    if column.kind == "params":
        return f"{value / 1e6:.1f}"
    if column.kind == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if column.kind in ("ratio", "minutes"):
        return f"{value:.1f}"
    return str(value)


def _parts(column: Column, value: Any) -> tuple[str, str]:
    """A cell as (the part a mark covers, the rest): ("85.0", " ± 7.1"), ("2.0M", "")."""
    number = _number(column, value)
    if column.kind == "score":
        return number, "" if value.std is None else f" ± {value.std:.1f}"
    return number + {"params": "M", "ratio": "×"}.get(column.kind, ""), ""


def _value(row: Row, column: Column) -> Any:
    return row.scores.get(column.key) if column.kind == "score" else getattr(row, column.key)


def best_cells(table: Table) -> set[tuple[int, str]]:
    """(row index, column key) of the best measured student per ranked column, compared as
    printed, so ties are all marked. A column where no student beats another gets no mark, nor one
    that ranks nothing (`Table.unranked`)."""
    marked = set()
    for column in table.columns:
        if column.best is None or column.key in table.unranked:
            continue
        shown = {i: float(_number(column, v)) for i, r in enumerate(table.rows)
                 if r.ranked and (v := _value(r, column)) is not None}
        if len(set(shown.values())) < 2:
            continue
        target = (max if column.best == "max" else min)(shown.values())
        marked |= {(i, column.key) for i, v in shown.items() if v == target}
    return marked


def _grid(table: Table, markup: Markup) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, body cells and notes, with `markup`'s bold and escaping."""
    best = best_cells(table)
    body = []
    for i, row in enumerate(table.rows):
        cells = [markup.escape(row.label)]
        for column in table.columns:
            value = _value(row, column)
            if value is None:
                cells.append("-")
                continue
            head, rest = (markup.escape(part) for part in _parts(column, value))
            late = column.kind == "score" and column.key in row.unconverged_in
            late = markup.escape(UNCONVERGED_MARK) if late else ""
            cells.append((markup.bold(head) if (i, column.key) in best else head) + rest + late)
        body.append(cells)
    headers = [markup.escape(h) for h in ["method", *(c.header for c in table.columns)]]
    return headers, body, [markup.escape(n) for n in _notes(table, bool(best))]


def _unconverged_note(table: Table) -> list[str]:
    if not table.unconverged:
        return []
    runs = "" if isinstance(table, Summary) else f" (points gained in brackets): {', '.join(table.unconverged)}"
    return [f"{UNCONVERGED_MARK} {len(table.unconverged)} run(s) behind the cell had not converged: the mean dev "
            f"accuracy of the last quarter of training was at least {100 * MIN_GAIN:g} point above the quarter "
            f"before{runs}."]


def _unjudged_note(table: Table) -> list[str]:
    if not table.unjudged:
        return []
    counts = ", ".join(f"{k} {n}" for k, n in table.unjudged.items())
    return [f"Whether {sum(table.unjudged.values())} run(s) had converged is unknown ({counts}): the last two quarters "
            "of their training did not each hold a dev evaluation (too short a training for the preset's eval_every; "
            "a smaller one would judge it)."]


def _retrained_note(table: Table) -> list[str]:
    """The teachers whose runs distilled from trainings with different results (bench.results.report)."""
    named = table.retrained_teachers
    where = (" (named under each suite's table)" if isinstance(table, Summary)
             else f", test {METRICS[table.metric]} in brackets: {', '.join(named)}")
    return [f"{len(named)} teacher(s) were trained more than once under one store key (on another machine, or "
            f"with --teacher-cache refresh) and came out different{where}. Their cell is the mean ± std of those "
            "trainings; each run distilled from the one stored when it ran."] if named else []


def _unlearnt_note(table: Table) -> list[str]:
    """The teachers that had not learnt the task (bench.results.report), and what that leaves to rank."""
    named = table.unlearnt_teachers
    if not named:
        return []
    if isinstance(table, Summary):
        return ["Some teachers had not learnt the task (as each suite's table says: less than "
                f"{100 * LEARNT_MARGIN:g} points of test accuracy above always answering the most frequent label), "
                f"so the students distilled from them cannot be ranked there: {'; '.join(named)}."
                + (f" No teacher learnt it in {', '.join(sorted(table.unranked))}: no score is bold there."
                   if table.unranked else "")]
    verdict = "No teacher here learnt the task: this table cannot rank the methods (no score is bold). " \
        if table.unranked else ""
    return [f"{verdict}{len(named)} teacher(s) averaged less than {100 * LEARNT_MARGIN:g} points of test accuracy "
            f"above the {table.majority:.1f}% of always answering the test set's most frequent label, so the "
            f"students distilled from them (in brackets) cannot be ranked: {', '.join(named)}."]


def _notes(table: Table, marked: bool) -> list[str]:
    if isinstance(table, Summary):
        return [f"Each column: a table's {METRICS[table.metric]} averaged over its domains, mean ± std over seeds "
                "(that table gives each domain); bold: the best measured student per column, the teacher not "
                "ranked; seeds: the fewest any of the row's columns holds; runs not converged: over all its "
                "columns. Both training times are added over the full-data columns ('-' where a row lacks one; "
                "a few-shot run's time is in its own table). Student training: the runs' wall time per seed run "
                "on every domain, as recorded, teachers not counted; runs that shared the machine with other work "
                "took longer. "
                + TEACHER_TRAINING_NOTE,
                *_unlearnt_note(table), *_unconverged_note(table), *_unjudged_note(table),
                *_retrained_note(table)]
    reported = any(r.source == "reported" for r in table.rows)
    notes = [*_unlearnt_note(table), *_unconverged_note(table), *_unjudged_note(table), *_retrained_note(table)]
    if marked:
        others = "the teacher and † rows are" if reported else "the teacher is"
        notes.append(f"Bold: the best measured student in each column (highest {METRICS[table.metric]} and "
                     f"speed-up, fewest params, lowest latency); {others} not ranked.")
    if table.timing:
        when = {None: "both timed in the same run",
                "mixed": "timed in several sittings (`bench retime` times them all in one)"}.get(
            table.retimed, f"all timed in one sitting (`bench retime`, {table.retimed})")
        notes.append(f"Latency: median batch-1 forward time in ms ({table.timing}); speed-up: the teacher's "
                     f"median over the student's at batch 1, {when}.")
    if reported:
        notes.append(REPORTED_NOTE)
    return notes


def render(table: Table, fmt: str = "md") -> str:
    """One table with its title and notes, in md, latex or html (csv: `render_csv`)."""
    check_format(fmt)
    if fmt == "csv":
        return render_csv([table])
    return {"md": _render_md, "latex": _render_latex, "html": _render_html}[fmt](table)


def _render_md(table: Table) -> str:
    from tabulate import tabulate

    headers, body, notes = _grid(table, MARKUP["md"])
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return "\n\n".join([f"### {table.title}", text, *notes, *_versus_md(table)]) + "\n"


def _versus_grid(table: Table, markup: Markup) -> tuple[str, list[str], list[list[str]], str] | None:
    """The table's `versus` method against each other student: title, headers, body cells and
    note, with `markup`'s escaping; None where that method did not run."""
    if not table.comparisons:
        return None
    ours, escape = table.versus, markup.escape
    body = []
    for c in table.comparisons:
        delta = "-" if c.delta is None else f"{c.delta.mean:+.1f}"
        if c.delta is not None and c.delta.std is not None:
            delta += f" ± {c.delta.std:.1f}"
        p = "-" if c.p_value is None else escape(_p_value(c.p_value))
        body.append([escape(c.method), escape(delta), str(c.seeds),
                     "-" if c.method == ours else f"{c.leads} of {c.domains}",
                     markup.bold(p) if c.p_value is not None and c.p_value < SIGNIFICANT else p,
                     *("-" if m is None else f"{m:.1f}" for m in (c.train_minutes, c.teacher_minutes))])
    headers = ["method", f"{ours} − method, avg (points)", "paired seeds", f"domains {ours} leads", "p",
               "student training (min per seed)", "teacher training (min)"]
    note = (f"{ours} − method: the difference of their {METRICS[table.metric]} averaged over the domains, taken "
            f"seed by seed over the seeds both ran on every domain: mean ± sample std over those seeds (no std "
            f"for one seed). Domains {ours} leads: on each method's mean over its seeds. p: the paired "
            "randomisation test (Dror et al. 2018), exact, over every test example of those seeds and domains "
            f"pooled; bold: p < {SIGNIFICANT:g}; '-': no seed both ran, or a run kept no predictions. Student "
            "training: the runs' wall time per seed run on every domain, as recorded, teachers not counted; "
            f"runs that shared the machine with other work took longer. {TEACHER_TRAINING_NOTE}")
    note = " ".join([note, *_unlearnt_note(table)])
    return escape(f"{table.name}: {ours} against each method"), [escape(h) for h in headers], body, escape(note)


def _versus_md(table: Table) -> list[str]:
    from tabulate import tabulate

    if (grid := _versus_grid(table, MARKUP["md"])) is None:
        return []
    title, headers, body, note = grid
    return [f"### {title}", tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), note]


def _p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _render_latex(table: Table) -> str:
    headers, body, notes = _grid(table, MARKUP["latex"])
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{MARKUP['latex'].escape(table.title)}}}", rf"\label{{tab:{table.slug}}}",
             rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}", r"\toprule", " & ".join(headers) + r" \\",
             r"\midrule"]
    groups = [[c for c, r in zip(body, table.rows) if key(r)] for key in (
        lambda r: r.is_teacher, lambda r: r.ranked, lambda r: r.source == "reported")]
    for n, group in enumerate(g for g in groups if g):
        if n:
            lines.append(r"\midrule")  # teacher | measured students | reported rows
        lines += [" & ".join(cells) + r" \\" for cells in group]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"{\footnotesize " + (r"\par" + "\n").join(notes) + r"\par}"]
    lines.append(r"\end{table}")
    if (grid := _versus_grid(table, MARKUP["latex"])) is not None:
        title, headers, body, note = grid
        lines += [r"\begin{table}[t]", r"\centering", rf"\caption{{{title}}}", rf"\label{{tab:{table.slug}-versus}}",
                  r"\begin{tabular}{lrrrrr}", r"\toprule", " & ".join(headers) + r" \\", r"\midrule",
                  *(" & ".join(cells) + r" \\" for cells in body), r"\bottomrule", r"\end{tabular}",
                  r"\par\smallskip", r"{\footnotesize " + note + r"\par}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _render_html(table: Table) -> str:
    headers, body, notes = _grid(table, MARKUP["html"])
    lines = _html_table(MARKUP["html"].escape(table.title), headers, body, notes)
    if (grid := _versus_grid(table, MARKUP["html"])) is not None:
        title, headers, body, note = grid
        lines += _html_table(title, headers, body, [note])
    return "\n".join(lines) + "\n"


def _html_table(title: str, headers: list[str], body: list[list[str]], notes: list[str]) -> list[str]:
    """A heading, a table and its notes, all already escaped."""
    return [f"<h3>{title}</h3>", "<table>", "<thead>", "<tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>",
            "</thead>", "<tbody>", *("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in body),
            "</tbody>", "</table>", *(f"<p>{n}</p>" for n in notes)]


def csv_frame(tables: Sequence[Table]) -> pd.DataFrame:
    """Plain numbers, one row per (table, method): scores in percent as `<col>_mean` and
    `<col>_std` (empty for a single seed), params as counts, latency in ms, speed-up as a ratio,
    student training in minutes per seed and teacher training in minutes as recorded."""
    domains = list(dict.fromkeys(d for t in tables for d in t.domains))
    score_cols = [f"{d}_{s}" for d in [*domains, "avg"] for s in ("mean", "std")]
    columns = ["suite", "train_ratio", "preset", "method", "source", *score_cols,
               "seeds", "unconverged", "params", "non_embedding_params", "latency_ms", "speedup", "train_minutes",
               "teacher_minutes"]
    records = [_csv_record(t, r) for t in tables for r in t.rows]
    df = pd.DataFrame(records, columns=columns)
    return df.astype({"seeds": "Int64", "unconverged": "Int64", "params": "Int64", "non_embedding_params": "Int64"})


def _csv_record(table: Table, row: Row) -> dict[str, Any]:
    record: dict[str, Any] = {"suite": table.suite, "train_ratio": table.train_ratio, "preset": table.preset,
                              "method": row.method, "source": row.source}
    for key in [*table.domains, "avg"]:
        stat = row.scores.get(key)
        record[f"{key}_mean"] = None if stat is None else round(stat.mean, 4)
        record[f"{key}_std"] = None if stat is None or stat.std is None else round(stat.std, 4)
    return record | {
        "seeds": row.seeds,
        "unconverged": row.unconverged,
        "params": None if row.params is None else round(row.params),
        "non_embedding_params": None if row.non_embedding is None else round(row.non_embedding),
        "latency_ms": None if row.latency_ms is None else round(row.latency_ms, 4),
        "speedup": None if row.speedup is None else round(row.speedup, 4),
        "train_minutes": None if row.train_minutes is None else round(row.train_minutes, 4),
        "teacher_minutes": None if row.teacher_minutes is None else round(row.teacher_minutes, 4),
    }


def render_csv(tables: Sequence[Table]) -> str:
    return csv_frame(tables).to_csv(index=False, lineterminator="\n")


def render_tables(tables: Sequence[Table], fmt: str = "md") -> str:
    """All tables in one text: one CSV for csv (a row per table and method), else one after another."""
    check_format(fmt)
    if fmt == "csv":
        return render_csv(tables)
    return "\n".join(render(t, fmt) for t in tables)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise BenchError(f"unknown report format {fmt!r}", f"use one of: {', '.join(FORMATS)}")


def render_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of plain rows (data stats and the like). Text stays text: a hex key such as
    `12345e6789` is not read as a number."""
    from tabulate import tabulate

    columns = list(rows[0]) if rows else []
    text = [i for i, c in enumerate(columns) if all(isinstance(r.get(c), str) for r in rows)]
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=text or False)


def render_page(tables: Sequence[Table], command: str, link_base: str | os.PathLike,
                plots: Mapping[str, Sequence[Path]] | None = None,
                ratios: Mapping[str, Sequence[tuple[str, Path]]] | None = None) -> str:
    """A markdown page: each preset's summary, then the tables, each with its plots shown and its
    trainings' ratio heatmaps linked (named), relative to `link_base`, the folder the page is
    meant to sit in. Nothing in it depends on the time or on where the page is written, so the
    same store always gives the same bytes."""
    parts = ["# kd-bench results",
             f"Generated by `{command}` from the result store; do not edit it by hand, rerun that command."]
    summaries = [s for s in summarize(tables) if len(s.domains) > 1]  # a preset with one table needs none
    for table in [*summaries, *tables]:
        parts.append(_render_md(table).rstrip("\n").replace("### ", "## ", 1))
        links = [f"![{p.stem}]({_relative(p, link_base)})" for p in (plots or {}).get(table.slug, [])]
        if links:
            parts.append("\n".join(links))
        if heatmaps := (ratios or {}).get(table.slug):
            parts.append("Domain ratios per layer over training: " +
                         ", ".join(f"[{name}]({_relative(p, link_base)})" for name, p in heatmaps) + ".")
    return "\n\n".join(parts) + "\n"


def _relative(path: Path, base: str | os.PathLike) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def write_page(path: str | os.PathLike, tables: Sequence[Table], command: str, link_base: str | os.PathLike,
               plots: Mapping[str, Sequence[Path]] | None = None,
               ratios: Mapping[str, Sequence[tuple[str, Path]]] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(tables, command, link_base, plots, ratios), encoding="utf-8")
    log.debug("wrote %s", path)
    return path


def build_report(records: Iterable[dict[str, Any]], suite: str | None, domain_orders: Mapping[str, Sequence[str]],
                 fmt: str = "md", method_order: Sequence[str] | None = None, *,
                 paper: Sequence[Row] | None = None, metric: str = "accuracy", versus: str | None = None) -> str:
    """The tables of the records (all suites, or `suite`'s) rendered in `fmt`."""
    check_format(fmt)
    tables = build_tables(records, suite, domain_orders, method_order, paper=paper, metric=metric, versus=versus)
    return render_tables(tables, fmt)
