"""Benchmark (pytest-benchmark; `make benchmark`): evaluating a test set shortest rows first
(`make_loader(..., by_length=True)`, what the runner's dev and test loaders do) against file order.

The cpu preset's 3-layer student (random weights: speed does not depend on them) predicts MNLI
fiction's test pairs and Amazon books' test reviews at batch 64, the two orders timed alternately
in one sitting; `extra_info` holds the ratio of their medians and the padded positions a row.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.api import DataConfig
from bench.data.batching import make_loader, tokenize
from bench.models.classifier import ModelSpec, build_classifier, load_tokenizer
from bench.training.predict import predict

STUDENT = ModelSpec("pkg:all-MiniLM-L6-v2", init="random", layers=(0, 2, 4))


@pytest.mark.parametrize("suite, domain", [("mnli", "fiction"), ("amazon", "books")])
def test_evaluation_by_length(benchmark, suite, domain, data_dir):
    from accelerate import Accelerator

    from bench.plugins import get_registry

    spec = get_registry().suite(suite)
    rows = spec.load(domain, "test", DataConfig(str(data_dir)))
    tok = load_tokenizer(STUDENT.ref)
    enc = tokenize(rows, tok, 128, spec.domains)
    loaders = {order: make_loader(enc, 64, tok.pad_token_id, shuffle=False, by_length=order == "by length")
               for order in ("file order", "by length")}
    torch.manual_seed(0)
    model = build_classifier(STUDENT, len(spec.labels))
    accelerator = Accelerator(cpu=True)
    seconds = {order: [] for order in loaders}

    def alternate():
        for order, loader in loaders.items():
            start = time.perf_counter()
            predict(model, loader, accelerator)
            seconds[order].append(time.perf_counter() - start)

    alternate()  # warm-up
    seconds = {order: [] for order in loaders}
    benchmark.group = f"evaluation: {suite}/{domain} test set, file order and by length alternately"
    benchmark.pedantic(alternate, rounds=3, iterations=1)
    benchmark.extra_info.update(
        rows=len(enc), threads=torch.get_num_threads(), seconds=seconds,
        file_order_over_by_length=round(statistics.median(seconds["file order"])
                                        / statistics.median(seconds["by length"]), 3),
        positions_a_row={order: round(sum(b.input_ids.numel() for b in loader) / len(enc), 1)
                         for order, loader in loaders.items()})
