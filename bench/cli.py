"""`python -m bench`: run, ls, data, teacher, cache, profile, retime, report (bench/commands/)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bench.commands import data, profile, report, run, stores
from bench.errors import BenchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "kd-bench: benchmark knowledge-distillation methods on multi-domain suites."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (run.add_run_parser, stores.add_teacher_parser, stores.add_cache_parser, data.add_ls_parser,
                data.add_data_parser, profile.add_profile_parser, report.add_retime_parser, report.add_report_parser):
        add(sub)
    return parser


COMMANDS = {"run": run.cmd_run, "ls": data.cmd_ls, "data": data.cmd_data, "teacher": stores.cmd_teacher,
            "report": report.cmd_report, "profile": profile.cmd_profile, "cache": stores.cmd_cache,
            "retime": report.cmd_retime}


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
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
