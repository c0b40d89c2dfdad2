"""Student parameters: total, non-embedding, and the training-only extras reported apart."""

from __future__ import annotations

from bench.api import MetricSpec
from bench.hookspecs import hookimpl
from bench.measure import count_params, param_counts


def compute(ctx) -> dict[str, int]:
    return {**param_counts(ctx.student), "extra_training_only": count_params(ctx.extra_modules)}


@hookimpl
def bench_register_metrics(register):
    register(MetricSpec("params", "student parameters: total, non-embedding, training-only extras",
                        compute))
