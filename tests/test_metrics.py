"""Metrics: macro-F1 against a hand count, latency against an independent timing loop."""

import statistics
import time

import pytest
import torch
from bench_plugins.metrics.f1 import macro_f1
from bench_plugins.metrics.latency import compression, speedup, student_latency, throughput

from bench.api import EvalContext
from bench.measure import LatencyConfig, latency_inputs, measure_latency, param_counts
from bench.models import ModelSpec, build_classifier
from bench.plugins import get_registry


def test_macro_f1_by_hand():
    preds = [0, 0, 1, 2, 2, 2, 1, 0]
    golds = [0, 1, 1, 2, 2, 0, 1, 2]
    # label 0: tp 1, fp 2, fn 1 -> 2/5; label 1: tp 2, fp 0, fn 1 -> 4/5; label 2: tp 2, fp 1, fn 1 -> 4/6
    assert macro_f1(preds, golds, 3) == pytest.approx((2 / 5 + 4 / 5 + 4 / 6) / 3)
    assert macro_f1([1, 1, 1], [1, 1, 1], 2) == pytest.approx(0.5)  # an absent label scores 0


def test_metrics_are_registered():
    assert {"accuracy", "macro_f1", "params", "latency", "throughput", "speedup", "compression"} <= set(
        get_registry().metrics)


def test_latency_agrees_with_an_independent_timing_loop():
    """Same model, same input shape: the metric and a bare loop agree in order of magnitude.
    Timings are reported, never asserted against a fixed wall time."""
    torch.manual_seed(0)
    model = build_classifier(ModelSpec("random:tiny"), 2).eval()
    cfg = LatencyConfig(batch_sizes=(1, 8), seq_len=32, warmup=3, repeats=25, cpu_threads=1)
    measured = measure_latency(model, cfg)
    assert measured["threads"] == 1 and measured["repeats"] == 25 and measured["device"] == "cpu"

    torch.set_num_threads(1)
    try:
        ids = torch.randint(1000, 30522, (8, 32))
        bare = []
        with torch.inference_mode():
            for i in range(28):
                t0 = time.perf_counter()
                model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
                if i >= 3:
                    bare.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(torch.get_num_threads())
    bare_ms = statistics.median(bare) * 1e3
    ours = measured["batch_8"]
    print(f"batch 8: metric {ours['median_ms']:.3f} ms (IQR {ours['iqr_ms']:.3f}), bare loop {bare_ms:.3f} ms")
    assert 0.1 < ours["median_ms"] / bare_ms < 10
    assert ours["iqr_ms"] >= 0
    assert measured["batch_1"]["median_ms"] > 0


def test_speedup_throughput_and_compression_from_the_context():
    torch.manual_seed(0)
    student = build_classifier(ModelSpec("random:tiny", init="random", layers=(0,)), 2)
    cfg = LatencyConfig(batch_sizes=(1, 4), seq_len=16, warmup=1, repeats=20)
    teacher_latency = {"batch_1": {"median_ms": 10.0}, "batch_4": {"median_ms": 40.0}}
    ctx = EvalContext(get_registry().suite("amazon"), "books", [], [], student, latency=cfg,
                      teacher_latency=teacher_latency, teacher_params={"total": 4 * param_counts(student)["total"]})
    lat = student_latency(ctx)
    assert student_latency(ctx) is lat  # measured once per run, shared by the metrics
    assert speedup(ctx) == {"batch_1": pytest.approx(10.0 / lat["batch_1"]["median_ms"], rel=1e-3),
                            "batch_4": pytest.approx(40.0 / lat["batch_4"]["median_ms"], rel=1e-3)}
    assert throughput(ctx)["examples_per_second"] == pytest.approx(4 / (lat["batch_4"]["median_ms"] / 1e3), rel=1e-3)
    assert compression(ctx) == 4.0


def test_latency_inputs_are_fixed():
    a = latency_inputs(2, 8, 30522, "cpu")
    b = latency_inputs(2, 8, 30522, "cpu")
    assert torch.equal(a.input_ids, b.input_ids) and a.attention_mask.all()
