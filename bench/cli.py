"""`python -m bench`: run, ls, report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bench.errors import BenchError
from bench.results import DEFAULT_RESULTS_DIR

log = logging.getLogger("bench")

LISTINGS = ("suites", "distillers", "metrics", "presets", "plugins")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}")


def resolve_data_dir(given: str | None) -> str:
    """`--data-dir`, else `$BENCH_DATA_DIR`, else `./data`."""
    data_dir = given or os.environ.get("BENCH_DATA_DIR") or "data"
    if not os.path.isdir(data_dir):
        raise BenchError(f"data dir {data_dir!r} does not exist",
                         "pass --data-dir DIR or set BENCH_DATA_DIR (this project's machines have ../shared/data)")
    return data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "kd-bench: benchmark knowledge-distillation methods on multi-domain suites."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and test students; one result file per run")
    run.add_argument("--methods", required=True, type=_csv, help="comma-separated, e.g. kd,finetune")
    run.add_argument("--suite", required=True)
    run.add_argument("--preset", default=None, help="default: cpu (see `ls presets`)")
    run.add_argument("--domains", type=_csv, default=None, help="default: all of the suite's")
    run.add_argument("--seeds", type=_seeds, default=None, help="default: the preset's (1)")
    run.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    run.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    run.add_argument("--overwrite", action="store_true", help="redo runs whose result exists")

    ls = sub.add_parser("ls", help="list what is registered")
    ls.add_argument("what", choices=LISTINGS)

    report = sub.add_parser("report", help="tables from the result store")
    report.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR)
    report.add_argument("--suite", default=None)
    report.add_argument("--format", default="md", choices=["md"])
    return parser


def cmd_run(args) -> int:
    from bench.plugins import get_registry
    from bench.presets import DEFAULT_PRESET, get_preset
    from bench.report import build_report
    from bench.results import iter_results
    from bench.runner import Grid, Runner

    registry = get_registry()
    suite = registry.suite(args.suite)
    methods = [registry.distiller(m) for m in args.methods]
    preset = get_preset(args.preset or DEFAULT_PRESET)
    domains = args.domains or list(suite.domains)
    suite.check_domains(domains)
    grid = Grid(suite=suite, preset=preset, methods=methods, domains=domains,
                seeds=args.seeds or list(preset.seeds), data_dir=resolve_data_dir(args.data_dir),
                results_dir=args.results_dir, overwrite=args.overwrite)
    written = Runner(grid, registry).run()
    log.info("%d result file(s) written under %s", len(written), args.results_dir)
    records = [r for r in iter_results(args.results_dir)
               if r["suite"]["name"] == suite.name and r["preset"] == preset.name
               and r["method"]["name"] in args.methods]
    print(build_report(records, suite.name, {suite.name: suite.domains}, method_order=args.methods))
    return 0


def cmd_ls(args) -> int:
    from bench.plugins import get_registry

    if args.what == "presets":
        from bench.presets import DEFAULT_PRESET, PRESETS

        for p in PRESETS.values():
            default = " (default)" if p.name == DEFAULT_PRESET else ""
            print(f"{p.name}{default}: {p.description}\n  teacher {p.teacher.describe()}; "
                  f"student {p.student.describe()}\n  {p.sizes()}")
        return 0
    registry = get_registry()
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


def cmd_report(args) -> int:
    from bench.plugins import get_registry
    from bench.report import build_report
    from bench.results import iter_results

    orders = {name: s.domains for name, s in get_registry().suites.items()}
    print(build_report(iter_results(args.results_dir), args.suite, orders, args.format))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "datasets", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bar per weight file loaded
    try:
        return {"run": cmd_run, "ls": cmd_ls, "report": cmd_report}[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
