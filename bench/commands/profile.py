"""`profile`: the phases of a method's distillation step timed (bench.grid.profile)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.commands.args import csv_list, setting_args
from bench.commands.run import data_config, resolve_args_setting


def add_profile_parser(sub) -> None:
    """The `profile` command and its options."""
    prof = sub.add_parser("profile", help="time each phase of a method's distillation step")
    prof.add_argument("--method", required=True)
    prof.add_argument("--suite", required=True)
    prof.add_argument("--preset", default=None, metavar="NAME|FILE.toml",
                      help="its models and max length, unless changed (default: cpu)")
    setting_args(prof)
    prof.add_argument("--domains", type=csv_list, default=None, help="default: all of the suite's")
    prof.add_argument("--batch-per-domain", type=int, default=4)
    prof.add_argument("--max-len", type=int, default=None, help="default: the preset's")
    prof.add_argument("--steps", type=int, default=10, help="steps timed (after --warmup steps)")
    prof.add_argument("--warmup", type=int, default=2)
    prof.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, else ./data")
    prof.add_argument("--skip-bad-rows", action="store_true")
    prof.add_argument("--teacher-precision", default="fp32", choices=["fp32", "bf16"],
                      help="bf16: also measure the teacher's argmax agreement and loss against fp32")
    prof.add_argument("--student-precision", default="fp32", choices=["fp32", "bf16"],
                      help="bf16: the student's forward under bf16 autocast (run --student-precision)")
    prof.add_argument("--length-buckets", type=int, default=None, metavar="N",
                      help="batches per length-sorted chunk (0: plain shuffling); default: the preset's")
    prof.add_argument("--teacher-cache", action="store_true",
                      help="time the steps again with the teacher's outputs from the cache the first pass filled")
    prof.add_argument("--epochs", type=int, default=None,
                      help="with --teacher-cache: rate the steps over this many passes, the filling one included "
                           "(default: the preset's student epochs)")
    prof.add_argument("--ops", type=int, default=0, metavar="N",
                      help="then run the steps once more under torch's profiler and list the N operators that took "
                           "most of their time")
    prof.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")


def cmd_profile(args) -> int:
    from bench.grid.profile import as_dict, profile
    from bench.plugins import get_registry

    registry = get_registry()
    suite = registry.suite(args.suite)
    method = registry.distiller(args.method)
    preset = resolve_args_setting(args, suite.name, registry)
    domains = args.domains or list(suite.domains)
    suite.check_domains(domains)
    result = profile(registry, method, suite, preset, data_config(args, suite),
                     domains, args.batch_per_domain, args.max_len or preset.max_len, args.steps, args.warmup,
                     teacher_precision=args.teacher_precision, student_precision=args.student_precision,
                     length_buckets=args.length_buckets, teacher_cache=args.teacher_cache, epochs=args.epochs,
                     ops=args.ops)
    print("\n".join(result.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(as_dict(result), indent=2) + "\n")
    return 0
