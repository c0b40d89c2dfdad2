"""Accuracy on the domain's test split (the report averages it over domains)."""

from __future__ import annotations

from bench.api import MetricSpec
from bench.hookspecs import hookimpl
from bench.measure import accuracy


def compute(ctx) -> float:
    return accuracy(ctx.predictions, ctx.labels)


@hookimpl
def bench_register_metrics(register):
    register(MetricSpec("accuracy", "test accuracy per domain", compute))
