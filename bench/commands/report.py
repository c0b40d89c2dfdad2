"""`report` and `retime`: tables, plots and the results page from the result store, and its latencies
timed again in one sitting."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.results.records import DEFAULT_RESULTS_DIR

log = logging.getLogger("bench")


def add_retime_parser(sub) -> None:
    """The `retime` command."""
    retime = sub.add_parser("retime", help="time the stored results' students and teachers again, in one sitting")
    retime.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR")
    retime.add_argument("--suite", default=None, help="only this suite's results")


def add_report_parser(sub) -> None:
    """The `report` command and its options."""
    report = sub.add_parser("report", help="tables and plots from the result store")
    report.add_argument("--results-dir", dest="results_dirs", action="append", default=None, metavar="DIR",
                        help=f"default {DEFAULT_RESULTS_DIR}; repeat it to merge the stores of a sharded grid")
    report.add_argument("--suite", default=None)
    report.add_argument("--format", default="md", choices=["md", "latex", "csv", "html"],
                        help="of the tables printed on stdout (csv: plain numbers, one row per method)")
    report.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1"])
    report.add_argument("--paper", default=None, metavar="FILE",
                        help="a CSV of a paper's numbers (columns: method, any domains, avg in percent, "
                             "params in millions), added as reported rows marked †")
    report.add_argument("--plots", default=None, metavar="DIR",
                        help="write <suite>-<preset>-accuracy-latency.png and -domains.png per table")
    report.add_argument("--ratios", default=None, metavar="DIR",
                        help="write a heatmap of the per-layer domain ratios (HRKD's) over training steps, "
                             "one PNG per training that traced them")
    report.add_argument("--versus", default="hrkd", metavar="METHOD",
                        help="compare this method with every other, seed by seed, under each table where it ran "
                             "(md, latex, html; default hrkd; none: no comparison)")
    report.add_argument("--summary", action="store_true",
                        help="print the main table instead: a row per method, a column per suite and train ratio "
                             "(its average over domains), one table per preset")
    report.add_argument("--write", default=None, metavar="FILE",
                        help="also write the markdown tables as a page, linking its plots (--plots, else those an "
                        "earlier --plots drew in plots/ beside the results dir)")


def _report_command(args) -> str:
    """The command that regenerates a --write page; the page's own path is left out, so a
    page does not change with its name."""
    import shlex

    words = ["python", "-m", "bench", "report"] + [w for d in args.results_dirs for w in ("--results-dir", d)]
    for flag, value in (("--suite", args.suite), ("--paper", args.paper), ("--plots", args.plots),
                        ("--ratios", args.ratios)):
        if value is not None:
            words += [flag, value]
    if args.metric != "accuracy":
        words += ["--metric", args.metric]
    if args.versus != "hrkd":
        words += ["--versus", args.versus]
    return " ".join(map(shlex.quote, words)) + " --write <this file>"


def cmd_retime(args) -> int:
    from bench.plugins import get_registry
    from bench.results.retime import retime_results

    written = retime_results(args.results_dir, get_registry(), args.suite)
    log.info("%d result file(s) retimed under %s", len(written), args.results_dir)
    return 0


def cmd_report(args) -> int:
    """Tables on stdout in --format; the files written (plots, page) named on stderr, so that
    stdout stays one clean table or CSV."""
    from bench.plugins import get_registry
    from bench.results.paper import read_paper
    from bench.results.records import iter_results
    from bench.results.render import render_tables, write_page
    from bench.results.report import build_tables
    from bench.results.tables import summarize

    if args.suite and args.suite.startswith("files:"):  # files:DIR as given to `run`: the name its results keep
        from bench.data.files_suite import suite_name

        args.suite = suite_name(args.suite)
    # files:DIR suites are not registered: build_tables gives them their records' domains, sorted
    orders = {name: s.domains for name, s in get_registry().suites.items()}
    known = {d for name, domains in orders.items() if args.suite in (None, name) for d in domains}
    paper = read_paper(args.paper, known) if args.paper else None
    args.results_dirs = args.results_dirs or [DEFAULT_RESULTS_DIR]
    records = list(iter_results(*args.results_dirs))  # read once: the tables, heatmaps and page use them
    tables = build_tables(records, args.suite, orders, paper=paper, metric=args.metric,
                          versus=None if args.versus == "none" else args.versus)
    if args.versus not in ("hrkd", "none") and not any(t.versus for t in tables):  # a typo, not silence
        ran = sorted({r.method for t in tables for r in t.rows if r.ranked})
        raise BenchError(f"--versus {args.versus}: no table holds runs of that method (they hold {', '.join(ran)})",
                         "name a method the results hold, or --versus none")
    print(render_tables(summarize(tables) if args.summary else tables, args.format), end="")
    plots = {}
    if args.plots:
        from bench.results.plots import write_plots

        plots = write_plots(tables, args.plots)
    written = [p for paths in plots.values() for p in paths]
    if args.ratios:
        from bench.results.traces import write_ratio_plots

        written += write_ratio_plots(records, args.ratios, args.suite)
    if args.write:
        # Plot links are relative to the results dir's parent (results/ for results/runs), where
        # the page is meant to sit: a page written elsewhere to compare is then byte-identical.
        link_base = Path(args.results_dirs[0]).resolve().parent
        if not args.plots:  # the plots an earlier --plots drew beside the store (results/plots)
            from bench.results.plots import existing_plots

            plots = existing_plots(tables, link_base / "plots")
        from bench.results.traces import drawn_ratio_plots

        ratios = drawn_ratio_plots(records, tables, args.ratios or link_base / "plots")
        written.append(write_page(args.write, tables, _report_command(args), link_base, plots, ratios))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
