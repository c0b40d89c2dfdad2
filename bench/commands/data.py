"""`data` and `ls`: the data folder filled or counted, and what the plugins registered."""

from __future__ import annotations

import os
from pathlib import Path

from bench.commands.args import csv_list
from bench.commands.run import data_config
from bench.errors import BenchError

LISTINGS = ("suites", "distillers", "metrics", "presets", "plugins")


def add_data_parser(sub) -> None:
    """The `data` command: prepare, stats."""
    data = sub.add_parser("data", help="fill the data dir, or count what a suite finds in it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="fill ./data from a local copy or the hub")
    prepare.add_argument("--from", dest="source", default=None,
                         help="a folder holding amazon/ and mnli/ (default: ../shared/data when present)")
    prepare.add_argument("--to", dest="target", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    prepare.add_argument("--suites", type=csv_list, default=None, help="default: all")
    stats = data_sub.add_parser("stats", help="rows and labels per domain and split")
    stats.add_argument("--suite", required=True)
    stats.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    stats.add_argument("--skip-bad-rows", action="store_true")


def add_ls_parser(sub) -> None:
    """The `ls` command."""
    ls = sub.add_parser("ls", help="list what is registered")
    ls.add_argument("what", choices=LISTINGS)


def cmd_data(args) -> int:
    from bench.data import datadir
    from bench.plugins import get_registry
    from bench.results.render import render_rows

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
