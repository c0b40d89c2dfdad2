"""Time the students and teachers of stored results again, all in one sitting.

Each run times its student and the preset's teacher in its own process, under whatever load the
machine had then, so the runs of a grid spread over days carry different timings of one and the
same architecture. A timing depends on the architecture only (metrics marked `timed`), so one
measurement per architecture, taken in one quiet process, serves every result that has it:
`retime_results` takes it and writes it into each result, with a note of when and where. The
architectures are timed in turns, so a slow spell of the machine does not fall on one alone.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from bench.api import EvalContext
from bench.data import files_suite as files
from bench.errors import BenchError
from bench.machine import machine_info
from bench.measure import LatencyConfig, measure_latencies
from bench.models.classifier import ModelSpec, build_classifier
from bench.results.records import git_state, now_utc, read_result, result_paths, write_result

log = logging.getLogger(__name__)


def recorded_latency_config(latency: dict[str, Any]) -> LatencyConfig:
    """The LatencyConfig a result's `metrics.latency` was measured with, so the new timing is of
    the same thing (and not of the preset as it reads today)."""
    sizes = sorted(int(k.removeprefix("batch_")) for k in latency if k.startswith("batch_"))
    return LatencyConfig(batch_sizes=tuple(sizes), seq_len=latency["seq_len"], warmup=latency["warmup"],
                         repeats=latency["repeats"], cpu_threads=latency["threads"])


def _student(record: dict[str, Any]) -> tuple[ModelSpec, int]:
    """The student's spec and head count (a multi student has one head per domain trained on)."""
    s = record["student"]
    heads = len(record["suite"]["trained_on"]) if record["method"].get("student_kind") == "multi" else 1
    layers = s.get("layers")
    return ModelSpec(s["ref"], s.get("init", "pretrained"), tuple(layers) if layers else None), heads


def _teacher(record: dict[str, Any]) -> ModelSpec:
    """The teacher the run timed: its own where it had one, else its preset's (timed for speed-ups)."""
    if record.get("teacher"):
        return ModelSpec(record["teacher"]["ref"])
    if setting := record.get("setting"):  # the preset as it ran (a changed one has no preset of its name)
        t = setting["teacher"]
        return ModelSpec(t["ref"], t["init"], tuple(t["layers"]) if t["layers"] else None)
    from bench.presets import get_preset

    return get_preset(record["preset"]).teacher


def _suite(registry, record: dict[str, Any]):
    """The suite a result ran on; a `files:DIR` suite's name keeps only DIR's name, its result the folder."""
    source = record["suite"].get("source")
    return registry.suite(files.PREFIX + source if source else record["suite"]["name"])


def retime_results(root: str | Path, registry, suite: str | None = None,
                   only: Collection[Path] | None = None) -> list[Path]:
    """Re-time every result under `root` (of `suite`, and among `only`, if given) that has a latency, and rewrite it;
    the paths rewritten. Its timed metrics (latency, throughput, speed-up) are computed again from
    one measurement per (model, heads, labels, latency config, device). Every result is read and
    checked before the first is rewritten, so a bad one stops the sitting with nothing changed."""
    timed = {name: spec for name, spec in registry.metrics.items() if spec.timed}
    if suite and suite.startswith(files.PREFIX):  # files:DIR as given to `run`: its results' suite name
        suite = files.suite_name(suite)
    todo = []
    only = None if only is None else {Path(p).resolve() for p in only}
    for path in result_paths(root):
        if only is not None and path.resolve() not in only:
            continue
        record = read_result(path)
        latency = record.get("metrics", {}).get("latency")
        if (suite and record["suite"]["name"] != suite) or not latency:
            continue
        if latency["device"] != "cpu" and not torch.cuda.is_available():
            raise BenchError(f"{path} was timed on {latency['device']}, which this machine lacks",
                             "retime it on a machine like the one that ran it (or leave it as it was timed)")
        labels = len(_suite(registry, record).labels)
        todo.append((path, record, recorded_latency_config(latency), labels))

    stamp = {"created": now_utc(), "git": git_state(), "machine": machine_info(registry.pm)}
    keys = {}  # (spec, heads, labels, latency config, device) of each result's student and teacher
    for path, record, config, labels in todo:
        device = record["metrics"]["latency"]["device"]
        keys[path] = ((_teacher(record), 1, labels, config, device), (*_student(record), labels, config, device))
    models, measured = _timings(list(dict.fromkeys(key for pair in keys.values() for key in pair)))

    for path, record, config, labels in todo:
        teacher_key, student_key = keys[path]
        teacher_latency, student_latency = measured[teacher_key], measured[student_key]
        ctx = EvalContext(_suite(registry, record), record["suite"]["domain"], [], [], models[student_key],
                          latency=config, teacher_latency=teacher_latency, cache={"latency": student_latency})
        for name, spec in timed.items():
            if name in record["metrics"]:
                record["metrics"][name] = spec.compute(ctx)
        if record.get("teacher"):
            record["teacher"]["latency"] = teacher_latency
        record["retimed"] = stamp
        write_result(path, record)
    return [path for path, *_ in todo]


def _timings(keys: list[tuple]) -> tuple[dict[tuple, torch.nn.Module], dict[tuple, dict[str, Any]]]:
    """A model per (spec, heads, labels, latency config, device), and its latency: the models of one
    config and device timed together, in turns (`measure_latencies`). A timing does not depend on
    the weights: the architecture's are built."""
    models = {key: build_classifier(key[0], key[2], key[1]).to(key[4]) for key in keys}
    measured = {}
    for config, device in dict.fromkeys((key[3], key[4]) for key in keys):
        group = [key for key in keys if key[3:] == (config, device)]
        for key, latency in zip(group, measure_latencies([models[key] for key in group], config, device)):
            measured[key] = latency
            log.info("%s, %d head(s): batch-%d latency %.2f ms", key[0].describe(), key[1], config.batch_sizes[0],
                     latency[f"batch_{config.batch_sizes[0]}"]["median_ms"])
    return models, measured
