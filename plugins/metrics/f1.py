"""Macro-F1 on the domain's test split: the mean over labels of each label's F1, so a
student that ignores a rare class is seen even when accuracy looks fine."""

from __future__ import annotations

from bench.api import MetricSpec
from bench.hookspecs import hookimpl


def macro_f1(predictions, labels, num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_labels


def compute(ctx) -> float:
    return macro_f1(ctx.predictions, ctx.labels, len(ctx.suite.labels))


@hookimpl
def bench_register_metrics(register):
    register(MetricSpec("macro_f1", "macro-averaged F1 over the labels, test split", compute))
