"""`run`: a grid of methods, domains and seeds trained, tested and recorded, then its table; and
the grid a command names (also `teacher train`'s), checked before anything trains."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from bench.commands.args import csv_list, seed_list, setting_args, shard, train_ratio, worker_count
from bench.errors import BenchError
from bench.grid.workers import cores, is_worker, run_workers
from bench.results.records import DEFAULT_RESULTS_DIR

log = logging.getLogger("bench")


def add_run_parser(sub) -> None:
    """The `run` command and its options."""
    run = sub.add_parser("run", help="train and test students; one result file per run")
    run.add_argument("--methods", required=True, type=csv_list, help="comma-separated, e.g. kd,finetune")
    run.add_argument("--suite", required=True)
    run.add_argument("--preset", default=None, metavar="NAME|FILE.toml",
                     help="a preset's name (see `ls presets`) or a TOML file changing one (default: cpu)")
    run.add_argument("--domains", type=csv_list, default=None, help="default: all of the suite's")
    run.add_argument("--seeds", type=seed_list, default=None, help="default: the preset's (1)")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    run.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    run.add_argument("--train-ratio", type=train_ratio, default=1.0,
                     help="keep the first R of each domain's training rows (few-shot), e.g. 0.1")
    run.add_argument("--skip-bad-rows", action="store_true",
                     help="skip and count malformed rows instead of stopping at the first")
    run.add_argument("--overwrite", action="store_true", help="redo runs whose result exists")
    run.add_argument("--resume", action="store_true",
                     help="continue killed runs (and teacher trainings) from their last checkpoint")
    run.add_argument("--shard", type=shard, default=(1, 1), metavar="K/N",
                     help="run the K-th of N parts of the grid (for N machines or jobs; report merges them)")
    run.add_argument("--jobs", type=worker_count, default=1, metavar="N",
                     help="N worker processes on this machine sharing the grid and its cores (each run and "
                          "teacher still trains once; on a CPU, 2 on 2 cores beats 1 process); the table and "
                          "latencies come after all of them, timed in one sitting")
    run.add_argument("--teacher-precision", default="fp32", choices=["fp32", "bf16"],
                     help="the teacher's forwards while distilling; bf16 runs are stored apart (kd@bf16)")
    run.add_argument("--student-precision", default="fp32", choices=["fp32", "bf16"],
                     help="the student's training forwards (bf16 autocast; loss, weights, optimizer and evaluation "
                          "stay fp32); bf16 runs are stored apart (kd@student-bf16)")
    run.add_argument("--teacher-cache", default="use", choices=["off", "use", "refresh"],
                     help="keep each training row's teacher outputs on disk, reused by later epochs, seeds and "
                          "methods (default use; refresh: recompute them; see `cache ls`)")
    run.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                     help="save a training checkpoint every STEPS steps (default 100; 0: none)")
    run.add_argument("--option", dest="options", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="a method option, e.g. kd.temperature=4 (repeatable; values as JSON, else text)")
    setting_args(run)
    run.add_argument("--log-with", type=csv_list, default=[], metavar="TRACKER",
                     help="log each student's curves (loss parts, dev accuracy, learning rate) to these trackers "
                          "of accelerate, e.g. tensorboard (pip install kd-bench[tensorboard]), one directory a "
                          "run under <results-dir>/trackers")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (teachers to train or reuse, runs, examples) and stop")


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


def resolve_args_setting(args, suite: str, registry):
    """The preset of a `run`, `teacher train` or `profile`: --preset changed by the setting args."""
    from bench.settings import parse_sets, resolve_setting

    return resolve_setting(args.preset, suite, registry=registry, teacher=args.teacher, student=args.student,
                           student_layers=args.student_layers, sets=parse_sets(args.sets))


def data_config(args, suite):
    """Where `suite` reads (a files:DIR suite its folder, others --data-dir, $BENCH_DATA_DIR or ./data)."""
    from bench.api import DataConfig
    from bench.data.datadir import resolve_data_dir

    return DataConfig(suite.source or resolve_data_dir(args.data_dir), skip_bad_rows=args.skip_bad_rows)


def make_grid(args, registry, methods: Sequence[str]):
    """The grid a `run` or `teacher train` names, checked before anything trains."""
    from bench.grid.spec import Grid

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
                student_precision=getattr(args, "student_precision", "fp32"),
                teacher_cache=getattr(args, "teacher_cache", "use"), log_with=tuple(getattr(args, "log_with", ())),
                method_options=parse_options(getattr(args, "options", []), methods))


def cmd_run(args) -> int:
    from bench.grid.failures import failed_error
    from bench.grid.runner import Runner
    from bench.plugins import get_registry

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
    from bench.results.retime import retime_results

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
    from bench.results.convergence import MIN_GAIN, describe, unconverged
    from bench.results.records import iter_results
    from bench.results.render import build_report
    from bench.results.report import with_convergence

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
