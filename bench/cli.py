"""`python -m bench`: run, ls, data, teacher, cache, profile, retime, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import DEFAULT_RESULTS_DIR
from bench.workers import cores, is_worker, run_workers

log = logging.getLogger("bench")

LISTINGS = ("suites", "distillers", "metrics", "presets", "plugins")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"train ratio must be a number in (0, 1], got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    from bench.jobs import parse_shard

    try:
        return parse_shard(text)
    except BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}")


def _jobs(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of worker processes (1 or more)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "kd-bench: benchmark knowledge-distillation methods on multi-domain suites."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and test students; one result file per run")
    run.add_argument("--methods", required=True, type=_csv, help="comma-separated, e.g. kd,finetune")
    run.add_argument("--suite", required=True)
    run.add_argument("--preset", default=None, metavar="NAME|FILE.toml",
                     help="a preset's name (see `ls presets`) or a TOML file changing one (default: cpu)")
    run.add_argument("--domains", type=_csv, default=None, help="default: all of the suite's")
    run.add_argument("--seeds", type=_seeds, default=None, help="default: the preset's (1)")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    run.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    run.add_argument("--train-ratio", type=_ratio, default=1.0,
                     help="keep the first R of each domain's training rows (few-shot), e.g. 0.1")
    run.add_argument("--skip-bad-rows", action="store_true",
                     help="skip and count malformed rows instead of stopping at the first")
    run.add_argument("--overwrite", action="store_true", help="redo runs whose result exists")
    run.add_argument("--resume", action="store_true",
                     help="continue killed runs (and teacher trainings) from their last checkpoint")
    run.add_argument("--shard", type=_shard, default=(1, 1), metavar="K/N",
                     help="run the K-th of N parts of the grid (for N machines or jobs; report merges them)")
    run.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                     help="N worker processes on this machine sharing the grid and its cores (each run and "
                          "teacher still trains once; on a CPU, 2 on 2 cores beats 1 process); the table and "
                          "latencies come after all of them, timed in one sitting")
    run.add_argument("--teacher-precision", default="fp32", choices=["fp32", "bf16"],
                     help="the teacher's forwards while distilling; bf16 runs are stored apart (kd@bf16)")
    run.add_argument("--teacher-cache", default="use", choices=["off", "use", "refresh"],
                     help="keep each training row's teacher outputs on disk, reused by later epochs, seeds and "
                          "methods (default use; refresh: recompute them; see `cache ls`)")
    run.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                     help="save a training checkpoint every STEPS steps (default 100; 0: none)")
    run.add_argument("--option", dest="options", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="a method option, e.g. kd.temperature=4 (repeatable; values as JSON, else text)")
    _setting_args(run)
    run.add_argument("--log-with", type=_csv, default=[], metavar="TRACKER",
                     help="log each student's curves (loss parts, dev accuracy, learning rate) to these trackers "
                          "of accelerate, e.g. tensorboard (pip install kd-bench[tensorboard]), one directory a "
                          "run under <results-dir>/trackers")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (teachers to train or reuse, runs, examples) and stop")

    teacher = sub.add_parser("teacher", help="the teacher store: train, list, remove")
    teacher_sub = teacher.add_subparsers(dest="teacher_command", required=True)
    t_train = teacher_sub.add_parser("train", help="train (or reuse) a suite's teachers, no students")
    t_train.add_argument("--suite", required=True)
    t_train.add_argument("--preset", default=None, help="a name or a .toml file (default: cpu)")
    _setting_args(t_train)
    t_train.add_argument("--domains", type=_csv, default=None)
    t_train.add_argument("--data-dir", default=None)
    t_train.add_argument("--train-ratio", type=_ratio, default=1.0)
    t_train.add_argument("--skip-bad-rows", action="store_true")
    t_train.add_argument("--resume", action="store_true", help="continue a killed teacher training")
    t_train.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                         help="save a training checkpoint every STEPS steps (default 100; 0: none)")
    t_train.add_argument("--kind", choices=("single", "mix", "multi"), default="single",
                         help="single: one per domain; mix: one on the union; multi: shared encoder, a head "
                              "per domain (default: single)")
    teacher_sub.add_parser("ls", help="list stored teachers")
    t_rm = teacher_sub.add_parser("rm", help="remove stored teachers by key (a unique prefix will do)")
    t_rm.add_argument("keys", nargs="+")

    cache = sub.add_parser("cache", help="the teacher-output cache: list, clear")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("ls", help="list cached teacher outputs")
    c_clear = cache_sub.add_parser("clear", help="remove cached teacher outputs (all, or by key prefix)")
    c_clear.add_argument("keys", nargs="*")

    ls = sub.add_parser("ls", help="list what is registered")
    ls.add_argument("what", choices=LISTINGS)

    data = sub.add_parser("data", help="fill the data dir, or count what a suite finds in it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="fill ./data from a local copy or the hub")
    prepare.add_argument("--from", dest="source", default=None,
                         help="a folder holding amazon/ and mnli/ (default: ../shared/data when present)")
    prepare.add_argument("--to", dest="target", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    prepare.add_argument("--suites", type=_csv, default=None, help="default: all")
    stats = data_sub.add_parser("stats", help="rows and labels per domain and split")
    stats.add_argument("--suite", required=True)
    stats.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    stats.add_argument("--skip-bad-rows", action="store_true")

    prof = sub.add_parser("profile", help="time each phase of a method's distillation step")
    prof.add_argument("--method", required=True)
    prof.add_argument("--suite", required=True)
    prof.add_argument("--preset", default=None, metavar="NAME|FILE.toml",
                      help="its models and max length, unless changed (default: cpu)")
    _setting_args(prof)
    prof.add_argument("--domains", type=_csv, default=None, help="default: all of the suite's")
    prof.add_argument("--batch-per-domain", type=int, default=4)
    prof.add_argument("--max-len", type=int, default=None, help="default: the preset's")
    prof.add_argument("--steps", type=int, default=10, help="steps timed (after --warmup steps)")
    prof.add_argument("--warmup", type=int, default=2)
    prof.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    prof.add_argument("--skip-bad-rows", action="store_true")
    prof.add_argument("--teacher-precision", default="fp32", choices=["fp32", "bf16"],
                      help="bf16: also measure the teacher's argmax agreement and loss against fp32")
    prof.add_argument("--length-buckets", type=int, default=None, metavar="N",
                      help="batches per length-sorted chunk (0: plain shuffling); default: the preset's")
    prof.add_argument("--teacher-cache", action="store_true",
                      help="time the steps again with the teacher's outputs from the cache the first pass filled")
    prof.add_argument("--epochs", type=int, default=None,
                      help="with --teacher-cache: rate the steps over this many passes, the filling one included "
                           "(default: the preset's student epochs)")
    prof.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")

    retime = sub.add_parser("retime", help="time the stored results' students and teachers again, in one sitting")
    retime.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR")
    retime.add_argument("--suite", default=None, help="only this suite's results")

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
    return parser


def parse_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`["kd.temperature=4", "tinybert.layer_map=[2,4]"]` -> {"kd": {"temperature": 4}, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise BenchError(f"option {item!r} is not METHOD.KEY=VALUE", "write e.g. --option kd.temperature=4")
        if method not in methods:
            raise BenchError(f"option {item!r} names method {method!r}, which this run does not include",
                             f"the methods of this run: {', '.join(methods)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[key] = tuple(value) if isinstance(value, list) else value
    return out


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of layer numbers such as 0,2,4") from None


def _setting_args(parser: argparse.ArgumentParser) -> None:
    """Changes to the preset (bench.settings): a changed preset is a setting of its own, stored and
    reported apart, e.g. cpu[student_train.epochs=10]-1a2b3c4d."""
    parser.add_argument("--teacher", default=None, metavar="REF",
                        help="the teacher model: pkg:NAME, hf:ID, path:DIR or random:SHAPE (e.g. random:bert-base)")
    parser.add_argument("--student", default=None, metavar="REF", help="the student model, as --teacher")
    parser.add_argument("--student-layers", type=_layers, default=None, metavar="I,J,...",
                        help="cut the student from these layers of its model (0-based)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a preset field, e.g. student_train.epochs=10 or max_train_rows=2000 "
                             "(repeatable; fields as `ls presets` shows them)")


def resolve_args_setting(args, suite: str, registry):
    """The preset of a `run`, `teacher train` or `profile`: --preset changed by the setting args."""
    from bench.settings import parse_sets, resolve_setting

    return resolve_setting(args.preset, suite, registry=registry, teacher=args.teacher, student=args.student,
                           student_layers=args.student_layers, sets=parse_sets(args.sets))


def data_config(args, suite):
    """Where `suite` reads (a files:DIR suite its folder, others --data-dir, $BENCH_DATA_DIR or ./data)."""
    from bench.api import DataConfig
    from bench.datadir import resolve_data_dir

    return DataConfig(suite.source or resolve_data_dir(args.data_dir), skip_bad_rows=args.skip_bad_rows)


def make_grid(args, registry, methods: Sequence[str]):
    """The grid a `run` or `teacher train` names, checked before anything trains."""
    from bench.grid import Grid

    suite = registry.suite(args.suite)
    distillers = [registry.distiller(m) for m in methods]
    preset = resolve_args_setting(args, suite.name, registry)
    domains = args.domains or list(suite.domains)
    suite.check_domains(domains)
    data = data_config(args, suite)
    return Grid(suite=suite, preset=preset, methods=distillers, domains=domains,
                seeds=getattr(args, "seeds", None) or list(preset.seeds), data=data,
                results_dir=getattr(args, "results_dir", DEFAULT_RESULTS_DIR), train_ratio=args.train_ratio,
                overwrite=getattr(args, "overwrite", False), resume=getattr(args, "resume", False),
                checkpoint_every=getattr(args, "checkpoint_every", 100), shard=getattr(args, "shard", (1, 1)),
                teacher_precision=getattr(args, "teacher_precision", "fp32"),
                teacher_cache=getattr(args, "teacher_cache", "use"), log_with=tuple(getattr(args, "log_with", ())),
                method_options=parse_options(getattr(args, "options", []), methods))


def cmd_run(args) -> int:
    from bench.failures import failed_error
    from bench.plugins import get_registry
    from bench.runner import Runner

    registry = get_registry()
    grid = make_grid(args, registry, args.methods)
    runner = Runner(grid, registry)
    if args.dry_run:
        print("\n".join(runner.plan()))
        return 0
    if args.jobs > 1 and not is_worker():
        return _run_workers(args, runner, registry)
    written = runner.run()
    if not runner.main:  # the main process reports for all
        return 0
    log.info("%d result file(s) written under %s", len(written), args.results_dir)
    code = 0 if is_worker() else _report_run(args, grid)  # the workers' parent reports for them all
    if runner.failures:
        print(f"error: {failed_error(runner.failures)}", file=sys.stderr)
        return 1
    return code


def _run_workers(args, runner, registry) -> int:
    """`run --jobs N`: the workers train, then their runs are timed again here, in one sitting (each
    timed itself while the others trained), and the table printed."""
    from bench.retime import retime_results

    log.info("%d worker processes of %d thread(s) each share the grid", args.jobs, max(1, cores() // args.jobs))
    codes = run_workers(args.argv, args.jobs)
    mine = [key.path(args.results_dir) for job in runner.jobs() for key in job.keys]
    if done := [p for p in mine if p.exists()]:
        retime_results(args.results_dir, registry, runner.grid.suite.name, only=done)
    code = _report_run(args, runner.grid)
    if failed := [k + 1 for k, c in enumerate(codes) if c != 0]:
        print(f"error: worker(s) {', '.join(map(str, failed))} of {args.jobs} ended with an error (above)\n"
              f"  fix it and run the same command again: finished runs are kept", file=sys.stderr)
        return 1
    return code


def _report_run(args, grid) -> int:
    """The table of the grid's suite, preset and methods from every result in the results dir, and
    a warning naming its unconverged runs."""
    from bench.convergence import MIN_GAIN, describe, unconverged
    from bench.render import build_report
    from bench.report import with_convergence
    from bench.results import iter_results

    suite, preset = grid.suite, grid.preset
    labels = [grid.label(m) for m in grid.methods]
    records = [r for r in iter_results(args.results_dir)
               if r["suite"]["name"] == suite.name and r["preset"] == preset.name
               and r["suite"]["train_ratio"] == args.train_ratio
               and r["method"].get("label", r["method"]["name"]) in labels]
    if records:
        print(build_report(records, suite.name, {suite.name: suite.domains}, method_order=labels))
    if late := unconverged([with_convergence(r) for r in records]):
        log.warning("%d run(s) had not converged (mean dev accuracy of the last quarter of training at least %g point "
                    "above the quarter before): %s.\n  Their scores are marked in the tables; give them more steps "
                    "(the preset's student_train.epochs) before ranking them.", len(late), 100 * MIN_GAIN,
                    "; ".join(describe(r) for r in late))
    return 0


def cmd_profile(args) -> int:
    from bench.plugins import get_registry
    from bench.profile import as_dict, profile

    registry = get_registry()
    suite = registry.suite(args.suite)
    method = registry.distiller(args.method)
    preset = resolve_args_setting(args, suite.name, registry)
    domains = args.domains or list(suite.domains)
    suite.check_domains(domains)
    result = profile(registry, method, suite, preset, data_config(args, suite),
                     domains, args.batch_per_domain, args.max_len or preset.max_len, args.steps, args.warmup,
                     teacher_precision=args.teacher_precision, length_buckets=args.length_buckets,
                     teacher_cache=args.teacher_cache, epochs=args.epochs)
    print("\n".join(result.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(as_dict(result), indent=2) + "\n")
    return 0


def cmd_ls(args) -> int:
    from bench.plugins import get_registry

    registry = get_registry()
    if args.what == "presets":
        from bench.presets import DEFAULT_PRESET, PRESETS

        for p in [*PRESETS.values(), *registry.presets.values()]:
            default = " (default)" if p.name == DEFAULT_PRESET else ""
            print(f"{p.name}{default} [{p.source}]: {p.description}\n  teacher {p.teacher.describe()}; "
                  f"student {p.student.describe()}\n  {p.sizes()}")
        print("Change one with --set FIELD=VALUE (e.g. student_train.epochs=10, max_train_rows=2000, max_len=64) "
              "or a TOML file (docs/OWN.md)")
        return 0
    if args.what == "suites":
        for s in registry.suites.values():
            print(f"{s.name}: {s.description}\n  domains {', '.join(s.domains)}; labels {', '.join(s.labels)}")
    elif args.what == "distillers":
        for d in registry.distillers.values():
            print(f"{d.name:<12} {d.description}  [{registry.owner('distiller', d.name)}]")
    elif args.what == "metrics":
        for m in registry.metrics.values():
            print(f"{m.name:<12} {m.description}")
    else:
        for name, plugin in registry.pm.list_name_plugin():
            hooks = sorted(h.name for h in registry.pm.get_hookcallers(plugin) or [])
            print(f"{name}: {', '.join(hooks)}")
    return 0


def cmd_teacher(args) -> int:
    from bench.plugins import get_registry
    from bench.render import render_rows
    from bench.runner import Runner
    from bench.teachers import TeacherStore

    store = TeacherStore()
    if args.teacher_command == "train":
        registry = get_registry()
        grid = make_grid(args, registry, [])
        for domain, t in Runner(grid, registry).teachers.get(args.kind, grid.domains).items():
            print(f"{domain}: teacher {t.key} dev {t.info['dev_accuracy']:.4f} test {t.info['test_accuracy']:.4f}")
    elif args.teacher_command == "ls":
        rows = [{"key": key, "model": info["identity"]["model"]["ref"], "suite": info["identity"]["suite"],
                 "domain": info["identity"].get("domain") or ",".join(info["identity"]["domains"]),
                 "kind": info["identity"]["kind"],
                 "train rows": _train_rows(info["identity"]["sizes"]), "dev acc": round(info["dev_accuracy"], 4),
                 "test acc": round(info["test_accuracy"], 4), "train s": info.get("wall_seconds")}
                for key, info in store.entries()]
        print(render_rows(rows) if rows else f"no teachers stored in {store.root}")
    else:
        from bench.teacher_outputs import remove_caches_of

        for prefix in args.keys:
            key = store.remove(prefix)
            folders, size = remove_caches_of(key)
            print(f"removed teacher {key} and {folders} cache(s) of its outputs, {size / 2**20:.1f} MB")
    return 0


def cmd_cache(args) -> int:
    import shutil

    from bench.render import render_rows
    from bench.teacher_outputs import list_caches, outputs_root

    caches = list_caches()
    if args.cache_command == "ls":
        rows = [{"key": c["key"], "teacher": c["identity"].get("teacher"), "domain": c["identity"].get("domain"),
                 "precision": c["identity"].get("precision"), "chunks": c["chunks"],
                 "MB": round(c["bytes"] / 2**20, 1),
                 "written": time.strftime("%Y-%m-%d %H:%M", time.localtime(c["modified"]))} for c in caches]
        print(render_rows(rows) if rows else f"no teacher outputs cached in {outputs_root()}")
        return 0
    chosen = [c for c in caches if not args.keys or any(c["key"].startswith(k) for k in args.keys)]
    if args.keys and not chosen:
        raise BenchError(f"no cached teacher outputs with a key starting {' or '.join(map(repr, args.keys))}",
                         "see `python -m bench cache ls` for the keys")
    for c in chosen:
        shutil.rmtree(outputs_root() / c["key"], ignore_errors=True)
    print(f"removed {len(chosen)} teacher-output cache(s), {sum(c['bytes'] for c in chosen) / 2**20:.1f} MB")
    return 0


def _train_rows(sizes: dict) -> int:
    """Training rows of a teacher: its domain's, or the sum over a joint teacher's domains."""
    return sizes["train"] if "train" in sizes else sum(s["train"] for s in sizes.values())


def cmd_data(args) -> int:
    from bench import datadir
    from bench.plugins import get_registry
    from bench.render import render_rows

    registry = get_registry()
    if args.data_command == "prepare":
        suites = [registry.suite(n) for n in args.suites] if args.suites else list(registry.suites.values())
        target = Path(args.target or os.environ.get("BENCH_DATA_DIR") or datadir.DEFAULT_DATA_DIR)
        source = Path(args.source) if args.source else datadir.default_source()
        if source is not None and not source.is_dir():
            raise BenchError(f"--from {source} is not a folder", "give the folder that holds amazon/ and mnli/")
        for line in datadir.prepare(suites, target, source):
            print(line)
        return 0
    suite = registry.suite(args.suite)
    cfg = data_config(args, suite)
    print(render_rows(datadir.stats(suite, cfg)))
    return 0


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
    from bench.retime import retime_results

    written = retime_results(args.results_dir, get_registry(), args.suite)
    log.info("%d result file(s) retimed under %s", len(written), args.results_dir)
    return 0


def cmd_report(args) -> int:
    """Tables on stdout in --format; the files written (plots, page) named on stderr, so that
    stdout stays one clean table or CSV."""
    from bench.paper import read_paper
    from bench.plugins import get_registry
    from bench.render import render_tables, write_page
    from bench.report import build_tables, summarize
    from bench.results import iter_results

    if args.suite and args.suite.startswith("files:"):  # files:DIR as given to `run`: the name its results keep
        from bench.files_suite import suite_name

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
        from bench.plots import write_plots

        plots = write_plots(tables, args.plots)
    written = [p for paths in plots.values() for p in paths]
    if args.ratios:
        from bench.traces import write_ratio_plots

        written += write_ratio_plots(records, args.ratios, args.suite)
    if args.write:
        # Plot links are relative to the results dir's parent (results/ for results/runs), where
        # the page is meant to sit: a page written elsewhere to compare is then byte-identical.
        link_base = Path(args.results_dirs[0]).resolve().parent
        if not args.plots:  # the plots an earlier --plots drew beside the store (results/plots)
            from bench.plots import existing_plots

            plots = existing_plots(tables, link_base / "plots")
        from bench.traces import drawn_ratio_plots

        ratios = drawn_ratio_plots(records, tables, args.ratios or link_base / "plots")
        written.append(write_page(args.write, tables, _report_command(args), link_base, plots, ratios))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what `run --jobs N` hands its workers
    level = logging.DEBUG if args.verbose else logging.INFO
    if os.environ.get("RANK", "0") != "0":  # a process of accelerate/torchrun other than the main: errors only
        level = logging.WARNING
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "datasets", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bar per weight file loaded
    try:
        commands = {"run": cmd_run, "ls": cmd_ls, "data": cmd_data, "teacher": cmd_teacher,
                    "report": cmd_report, "profile": cmd_profile, "cache": cmd_cache,
                    "retime": cmd_retime}
        return commands[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
