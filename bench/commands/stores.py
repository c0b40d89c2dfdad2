"""`teacher` and `cache`: the store of trained teachers and the cache of their outputs."""

from __future__ import annotations

import time

from bench.commands.args import csv_list, setting_args, train_ratio
from bench.commands.run import make_grid
from bench.errors import BenchError


def add_teacher_parser(sub) -> None:
    """The `teacher` command: train, ls, rm."""
    teacher = sub.add_parser("teacher", help="the teacher store: train, list, remove")
    teacher_sub = teacher.add_subparsers(dest="teacher_command", required=True)
    t_train = teacher_sub.add_parser("train", help="train (or reuse) a suite's teachers, no students")
    t_train.add_argument("--suite", required=True)
    t_train.add_argument("--preset", default=None, help="a name or a .toml file (default: cpu)")
    setting_args(t_train)
    t_train.add_argument("--domains", type=csv_list, default=None)
    t_train.add_argument("--data-dir", default=None)
    t_train.add_argument("--train-ratio", type=train_ratio, default=1.0)
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


def add_cache_parser(sub) -> None:
    """The `cache` command: ls, clear."""
    cache = sub.add_parser("cache", help="the teacher-output cache: list, clear")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("ls", help="list cached teacher outputs")
    c_clear = cache_sub.add_parser("clear", help="remove cached teacher outputs (all, or by key prefix)")
    c_clear.add_argument("keys", nargs="*")


def cmd_teacher(args) -> int:
    from bench.grid.runner import Runner
    from bench.plugins import get_registry
    from bench.results.render import render_rows
    from bench.teachers.store import TeacherStore

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
                 "test acc": round(info["test_accuracy"], 4), "last ¼ gain": _last_quarter_gain(info),
                 "train s": info.get("wall_seconds")}
                for key, info in store.entries()]
        print(render_rows(rows) if rows else f"no teachers stored in {store.root}")
    else:
        from bench.teachers.outputs import remove_caches_of

        for prefix in args.keys:
            key = store.remove(prefix)
            folders, size = remove_caches_of(key)
            print(f"removed teacher {key} and {folders} cache(s) of its outputs, {size / 2**20:.1f} MB")
    return 0


def cmd_cache(args) -> int:
    import shutil

    from bench.results.render import render_rows
    from bench.teachers.outputs import list_caches, outputs_root

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


def _last_quarter_gain(info: dict) -> float | None:
    """Points the teacher's dev accuracy gained in the last quarter of its steps (the rule that marks a
    student unconverged at one point or more); a joint teacher's worst domain. None: too few evaluations."""
    from bench.results.convergence import convergence

    history, steps = info.get("history") or [], info.get("steps") or 0
    gains = [convergence(history, steps, domain)["last_quarter_gain"] for domain in info.get("domains") or [None]]
    known = [g for g in gains if g is not None]
    return max(known) if known else None


def _train_rows(sizes: dict) -> int:
    """Training rows of a teacher: its domain's, or the sum over a joint teacher's domains."""
    return sizes["train"] if "train" in sizes else sum(s["train"] for s in sizes.values())
