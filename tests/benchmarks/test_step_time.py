"""Benchmarks (pytest-benchmark; skipped by the test run, `make benchmark` runs them):

- the harness's KD step against a bare PyTorch loop doing the same computation, so that the
  harness's overhead is a number (target: within 5%);
- a distillation step of each method at fixed shapes, on the suite's real data (`bench profile`);
- the cpu preset student's latency.

Shapes are the cpu preset's: a 6 x 384 teacher, its 3-layer student, batch 16, 128 tokens, random
weights (speed does not depend on them). Compare figures taken in one sitting, as ratios.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from bench.api import Batch
from bench.measure import LatencyConfig, measure_latency
from bench.models.classifier import ModelSpec, build_classifier
from bench.training.loop import TrainConfig, fit, param_groups

TEACHER = ModelSpec("pkg:all-MiniLM-L6-v2", init="random")
STUDENT = ModelSpec("pkg:all-MiniLM-L6-v2", init="random", layers=(0, 2, 4))
BATCH, LENGTH, STEPS = 16, 128, 8
TEMPERATURE, ALPHA = 2.0, 0.5


def batches(n: int, vocab: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, vocab, (BATCH, LENGTH), generator=g)
        labels = torch.randint(0, 2, (BATCH,), generator=g)
        out.append(Batch(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                         labels=labels, domain_ids=torch.zeros_like(labels), row_ids=torch.arange(BATCH)))
    return out


def models():
    torch.manual_seed(0)
    teacher = build_classifier(TEACHER, 2).eval()
    student = build_classifier(STUDENT, 2)
    return teacher, student


def harness_kd(teacher, student):
    """`fit` over the harness's KD step (the kd plugin's loss, the runner's forwards, the training
    loop), built once: the returned function is what is timed."""
    from bench.api import DataConfig
    from bench.grid.runner import Runner
    from bench.grid.spec import Grid
    from bench.plugins import get_registry
    from bench.presets import get_preset
    from bench.teachers.store import StoredTeacher

    registry = get_registry()
    kd = registry.distiller("kd")
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("cpu"), methods=[kd], domains=["books"], seeds=[1],
                data=DataConfig("unused"), results_dir="unused",  # nothing is loaded: only the forwards are used
                teacher_cache="off")  # the teacher runs every step, as in the bare loop
    runner = Runner(grid, registry)
    compute_loss = runner.student_forward(grid.distiller(kd), student,
                                          {"books": StoredTeacher("key", teacher, {}, False, None)})
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-4, eval_every=10**9)

    def steps(data):
        fit(student, data, lambda b: compute_loss(b, "main"), lambda: 0.0, config, runner.accelerator,
            select_best=False)

    return steps


def bare_kd(teacher, student):
    """The same computation written as a plain loop: what a researcher would write by hand."""
    return lambda data: bare_steps(teacher, student, data)


def bare_steps(teacher, student, data) -> None:
    optimizer = torch.optim.AdamW(param_groups([student], 0.01), lr=1e-4, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * len(data)), len(data))
    student.train()
    for batch in data:
        with torch.no_grad():
            teacher_logits = teacher(batch).logits
        logits = student(batch).logits
        kl = F.kl_div(F.log_softmax(logits / TEMPERATURE, -1), F.log_softmax(teacher_logits / TEMPERATURE, -1),
                      reduction="batchmean", log_target=True)
        loss = ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * F.cross_entropy(logits, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("loop", [harness_kd, bare_kd], ids=["harness", "bare"])
def test_kd_step(benchmark, loop):
    teacher, student = models()
    data = batches(STEPS, teacher.config.vocab_size)
    steps = loop(teacher, student)
    steps(data[:2])  # warm-up: first calls allocate
    benchmark.group = f"kd: {STEPS} steps, batch {BATCH} x {LENGTH}"
    benchmark.extra_info.update(steps=STEPS, batch=BATCH, length=LENGTH, threads=torch.get_num_threads())
    benchmark.pedantic(steps, args=(data,), rounds=5, iterations=1)


def test_kd_step_overhead(benchmark):
    """The harness's KD steps over the bare loop's, timed alternately in one sitting (a noisy
    machine slows both alike): the ratio of their medians is the harness's overhead."""
    import statistics
    import time

    teacher, student = models()
    data = batches(STEPS, teacher.config.vocab_size)
    loops = {"harness": harness_kd(teacher, student), "bare": bare_kd(teacher, student)}
    seconds = {"harness": [], "bare": []}

    def alternate():
        for name, steps in loops.items():
            start = time.perf_counter()
            steps(data)
            seconds[name].append(time.perf_counter() - start)

    alternate()  # warm-up
    seconds = {"harness": [], "bare": []}
    benchmark.group = f"kd overhead: harness and bare loop alternately, {STEPS} steps each"
    benchmark.pedantic(alternate, rounds=5, iterations=1)
    ratio = statistics.median(seconds["harness"]) / statistics.median(seconds["bare"])
    benchmark.extra_info.update(harness_over_bare=round(ratio, 4), seconds=seconds)


@pytest.mark.parametrize("method", ["finetune", "kd", "pkd", "tinybert", "minilm", "hrkd"])
def test_method_step(benchmark, method, data_dir):
    """A step of each method on MNLI's real pairs (5 genres x 4 for the joint ones)."""
    from bench.api import DataConfig
    from bench.grid.profile import profile
    from bench.plugins import Registry, make_plugin_manager
    from bench.presets import get_preset

    # With the entry points the test run leaves out: hrkd is a package of its own (`make` installs it).
    registry = Registry.build(make_plugin_manager(load_entry_points=True))
    if method not in registry.distillers:
        pytest.skip(f"{method} is not installed")
    suite = registry.suite("mnli")
    result = {}

    def run():
        result["profile"] = profile(registry, registry.distiller(method), suite, get_preset("cpu"),
                                    DataConfig(str(data_dir)), list(suite.domains), 4, 128, steps=5)

    benchmark.group = "method step (cpu preset models, MNLI, batch 4 per domain)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    p = result["profile"]
    benchmark.extra_info.update(examples_per_second=p.examples_per_second, batch=p.batch,
                                ms_per_step={k: round(v * 1000 / p.steps, 1) for k, v in p.phases.items()})


@pytest.mark.parametrize("batch_size", [1, 32])
def test_student_latency(benchmark, batch_size):
    _, student = models()
    config = LatencyConfig(batch_sizes=(batch_size,), seq_len=LENGTH, warmup=3, repeats=20)
    result = benchmark.pedantic(measure_latency, args=(student.eval(), config), rounds=1, iterations=1)
    benchmark.extra_info.update(result[f"batch_{batch_size}"])
