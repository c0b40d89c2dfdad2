"""Argument types and options shared by the commands: each bad value gets argparse's two-line
usage error naming the option."""

from __future__ import annotations

import argparse

from bench.errors import BenchError


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def train_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"train ratio must be a number in (0, 1], got {text!r}")
    return value


def shard(text: str) -> tuple[int, int]:
    from bench.grid.jobs import parse_shard

    try:
        return parse_shard(text)
    except BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}")


def worker_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of worker processes (1 or more)")
    return int(text)


def layer_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of layer numbers such as 0,2,4") from None


def setting_args(parser: argparse.ArgumentParser) -> None:
    """Changes to the preset (bench.settings): a changed preset is a setting of its own, stored and
    reported apart, e.g. cpu[student_train.epochs=10]-1a2b3c4d."""
    parser.add_argument("--teacher", default=None, metavar="REF",
                        help="the teacher model: pkg:NAME, hf:ID, path:DIR or random:SHAPE (e.g. random:bert-base)")
    parser.add_argument("--student", default=None, metavar="REF", help="the student model, as --teacher")
    parser.add_argument("--student-layers", type=layer_list, default=None, metavar="I,J,...",
                        help="cut the student from these layers of its model (0-based)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a preset field, e.g. student_train.epochs=10 or max_train_rows=2000 "
                             "(repeatable; fields as `ls presets` shows them)")
