"""Metrics: macro-F1 against a hand count, latency against an independent timing loop and its
median and IQR against known timings."""

import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bench_plugins.metrics.f1 import macro_f1
from bench_plugins.metrics.latency import compression, speedup, student_latency, throughput

from bench.api import EvalContext
from bench.measure import LatencyConfig, latency_inputs, measure_latencies, measure_latency, param_counts
from bench.models.classifier import ModelSpec, build_classifier
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

    threads = torch.get_num_threads()
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
        torch.set_num_threads(threads)
    bare_ms = statistics.median(bare) * 1e3
    ours = measured["batch_8"]
    print(f"batch 8: metric {ours['median_ms']:.3f} ms (IQR {ours['iqr_ms']:.3f}), bare loop {bare_ms:.3f} ms")
    assert 0.1 < ours["median_ms"] / bare_ms < 10
    assert ours["iqr_ms"] >= 0
    assert measured["batch_1"]["median_ms"] > 0


class Stopwatch:
    """A fake clock that each forward pass moves on by the next of the durations given."""

    def __init__(self, durations: list[float]):
        self.now, self.durations = 0.0, list(durations)

    def perf_counter(self) -> float:
        return self.now

    def forward(self, batch) -> None:
        self.now += self.durations.pop(0)


class TimedModel(torch.nn.Module):
    """A stand-in model whose forward passes take the stopwatch's durations."""

    def __init__(self, stopwatch: Stopwatch):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=30522)
        self.stopwatch = stopwatch

    def forward(self, batch):
        self.stopwatch.forward(batch)


def test_latency_median_and_iqr_on_known_timings(monkeypatch):
    """Known forward times, the median and IQR by hand. The quartiles are the inclusive ones
    (statistics.quantiles(method="inclusive"), numpy's default linear percentile): of 1..20 ms,
    Q1 = 5.75 and Q3 = 15.25, IQR 9.5 (the exclusive method gives 5.25 and 15.75, IQR 10.5)."""
    warmup = [1.0, 1.0]  # a second each, untimed: must not count
    timed = {1: [7, 3, 12, 1, 20, 5, 16, 9, 2, 18, 11, 6, 14, 4, 19, 8, 15, 10, 17, 13],  # 1..20 ms, shuffled
             8: [*range(40, 59), 200]}  # 40..58 ms and an outlier: median 49.5, Q1 44.75, Q3 54.25
    stopwatch = Stopwatch([s for b in (1, 8) for s in warmup + [ms / 1e3 for ms in timed[b]]])
    monkeypatch.setattr("bench.measure.time", SimpleNamespace(perf_counter=stopwatch.perf_counter))
    cfg = LatencyConfig(batch_sizes=(1, 8), seq_len=4, warmup=2, repeats=20)
    measured = measure_latency(TimedModel(stopwatch), cfg)
    assert stopwatch.durations == []  # every pass ran: 2 untimed and 20 timed per batch size
    assert measured["batch_1"] == {"median_ms": 10.5, "iqr_ms": 9.5}
    assert measured["batch_8"] == {"median_ms": 49.5, "iqr_ms": 9.5}
    for b, ms in timed.items():
        q1, q2, q3 = np.percentile(ms, [25, 50, 75])
        assert measured[f"batch_{b}"] == {"median_ms": pytest.approx(q2), "iqr_ms": pytest.approx(q3 - q1)}


class NamedModel(TimedModel):
    """A TimedModel that writes its name into `passes` at each forward."""

    def __init__(self, stopwatch: Stopwatch, name: str, passes: list[str]):
        super().__init__(stopwatch)
        self.name, self.passes = name, passes

    def forward(self, batch):
        self.passes.append(self.name)
        super().forward(batch)


def test_several_models_are_timed_in_turns_so_a_slow_spell_falls_on_each_alike(monkeypatch):
    """Two models of equal speed (10 ms a pass) and a slow spell of the machine (40 ms) over 16
    passes in a row. Timed one after the other, the spell would fall on 16 of the second model's
    20 passes (median 40 ms, a speed-up of 4 that is not there); in turns of 4 passes each, it
    falls on 8 of each model's 20, and both medians stay 10 ms."""
    warmup = [1.0] * 4  # two untimed passes a model: must not count
    timed = [0.010] * 8 + [0.040] * 16 + [0.010] * 16
    stopwatch = Stopwatch(warmup + timed)
    monkeypatch.setattr("bench.measure.time", SimpleNamespace(perf_counter=stopwatch.perf_counter))
    passes: list[str] = []
    models = [NamedModel(stopwatch, "a", passes), NamedModel(stopwatch, "b", passes)]
    cfg = LatencyConfig(batch_sizes=(1,), seq_len=4, warmup=2, repeats=20)
    a, b = measure_latencies(models, cfg)
    assert passes == ["a"] * 2 + ["b"] * 2 + (["a"] * 4 + ["b"] * 4) * 5 and stopwatch.durations == []
    assert a["batch_1"]["median_ms"] == b["batch_1"]["median_ms"] == pytest.approx(10.0)
    assert a["repeats"] == b["repeats"] == 20 and a["threads"] == 1


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
