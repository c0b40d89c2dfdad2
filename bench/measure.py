"""Measurements for metrics: accuracy of predictions, and of a model itself its parameter counts,
latency and throughput. A public module: metric plugins use it.

Latency is measured the way a reviewer would trust: fixed inputs, a fixed CPU thread count,
warm-up runs first, at least 20 timed repeats, and the median with its interquartile range
(CUDA timed with events). The teacher is timed in the same process as the student, so a
speed-up is a ratio of two measurements taken under the same conditions; `measure_latencies`
times several models in turns, so that a slow spell of the machine does not fall on one alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bench.api import Batch


def accuracy(preds: list[int], golds: list[int]) -> float:
    return sum(int(p == g) for p, g in zip(preds, golds)) / max(len(golds), 1)


@dataclass(frozen=True)
class LatencyConfig:
    batch_sizes: tuple[int, ...] = (1, 32)
    seq_len: int = 128
    warmup: int = 5
    repeats: int = 20
    cpu_threads: int = 1  # fixed, so timings compare across machines and runs; recorded with them

    def __post_init__(self):
        if self.repeats < 20:
            raise ValueError("latency needs at least 20 timed repeats for a median and IQR")


def count_params(model: nn.Module | None) -> int:
    return 0 if model is None else sum(p.numel() for p in model.parameters())


def param_counts(classifier: nn.Module) -> dict[str, int]:
    """Total parameters of a classifier, and those outside its embedding layer (word, position
    and token-type embeddings and their LayerNorm), the figure compression papers compare."""
    total = count_params(classifier)
    embeddings = count_params(getattr(classifier.encoder, "embeddings", None))
    return {"total": total, "non_embedding": total - embeddings}


def latency_inputs(batch_size: int, seq_len: int, vocab_size: int, device) -> Batch:
    """Fixed random word pieces (ids above the special tokens), full attention, one segment."""
    g = torch.Generator().manual_seed(batch_size * 1000 + seq_len)
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=g)
    zeros = torch.zeros_like(ids)
    return Batch(ids, torch.ones_like(ids), zeros, zeros[:, 0], zeros[:, 0]).to(device)


def _quantiles_ms(seconds: list[float]) -> dict[str, float]:
    q1, q2, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return {"median_ms": round(q2 * 1e3, 4), "iqr_ms": round((q3 - q1) * 1e3, 4)}


def time_forward(model: nn.Module, batch: Batch, warmup: int, repeats: int) -> list[float]:
    """Seconds per forward pass, `repeats` times after `warmup` untimed passes."""
    cuda = batch.input_ids.is_cuda
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(batch)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - t0)
    return times


ROUNDS = 5  # the turns each model's timed repeats are split into when several are timed together


def measure_latency(model: nn.Module, config: LatencyConfig, device=None) -> dict[str, Any]:
    """`{device, threads, seq_len, warmup, repeats, batch_<B>: {median_ms, iqr_ms}, ...}`."""
    return measure_latencies([model], config, device)[0]


def measure_latencies(models: Sequence[nn.Module], config: LatencyConfig, device=None) -> list[dict[str, Any]]:
    """Each model's `measure_latency`, the models timed in turns: each of ROUNDS rounds times every
    model's share of the repeats, so a slow spell of the machine (another process, a clock drop)
    falls on all of them alike, not on whichever was being timed then, and their ratios hold."""
    device = torch.device(device or next(models[0].parameters()).device)
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads)
    shares = [config.repeats // ROUNDS + (i < config.repeats % ROUNDS) for i in range(ROUNDS)]
    try:
        out: list[dict[str, Any]] = [{"device": device.type, "threads": torch.get_num_threads(), **{
            k: v for k, v in asdict(config).items() if k in ("seq_len", "warmup", "repeats")}} for _ in models]
        for b in config.batch_sizes:
            batches = [latency_inputs(b, config.seq_len, model.config.vocab_size, device) for model in models]
            times: list[list[float]] = [[] for _ in models]
            for model, batch in zip(models, batches):
                time_forward(model, batch, config.warmup, 0)
            for share in shares:
                for model, batch, timed in zip(models, batches, times):
                    timed += time_forward(model, batch, 0, share)
            for measured, timed in zip(out, times):
                measured[f"batch_{b}"] = _quantiles_ms(timed)
    finally:
        torch.set_num_threads(threads)
        for model, training in zip(models, was_training):
            model.train(training)
    return out
