"""Student latency and throughput, and its speed-up and compression against the teacher.

Latency: the preset's LatencyConfig (batch 1 and 32, sequence length 128 by default, a fixed
CPU thread count, warm-up, at least 20 repeats; median and IQR). The teacher's figures come
from the same process (see bench/grid/recording.py), so speed-up is a ratio of like measurements.
"""

from __future__ import annotations

from bench.api import MetricSpec
from bench.hookspecs import hookimpl
from bench.measure import measure_latency, param_counts


def student_latency(ctx) -> dict:
    if "latency" not in ctx.cache:
        ctx.cache["latency"] = measure_latency(ctx.student, ctx.latency)
    return ctx.cache["latency"]


def throughput(ctx) -> dict:
    """Examples per second at the largest timed batch."""
    lat = student_latency(ctx)
    b = max(ctx.latency.batch_sizes)
    return {"batch": b, "examples_per_second": round(b / (lat[f"batch_{b}"]["median_ms"] / 1e3), 2)}


def speedup(ctx) -> dict | None:
    if ctx.teacher_latency is None:
        return None
    lat = student_latency(ctx)
    return {f"batch_{b}": round(ctx.teacher_latency[f"batch_{b}"]["median_ms"] / lat[f"batch_{b}"]["median_ms"], 3)
            for b in ctx.latency.batch_sizes}


def compression(ctx) -> float | None:
    if ctx.teacher_params is None:
        return None
    return round(ctx.teacher_params["total"] / param_counts(ctx.student)["total"], 3)


@hookimpl
def bench_register_metrics(register):
    register(MetricSpec("latency", "student forward latency: median and IQR (ms), batch 1 and 32",
                        student_latency, timed=True))
    register(MetricSpec("throughput", "student examples per second at the largest timed batch", throughput,
                        timed=True))
    register(MetricSpec("speedup", "teacher latency / student latency, timed in the same process", speedup,
                        timed=True))
    register(MetricSpec("compression", "teacher parameters / student parameters", compression))
