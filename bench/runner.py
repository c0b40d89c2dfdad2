"""A grid of runs: every (method, domain, seed) of one suite under one preset.

For each domain the data is loaded and tokenised once; the teacher comes from the store
(trained there on first use); each run trains a student, tests the best-on-dev checkpoint,
computes the metrics and writes one result file. Runs whose result file exists are skipped
unless `overwrite`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import __version__
from bench.api import DataConfig, Distiller, EvalContext, SuiteSpec
from bench.data import make_loader, tokenize
from bench.errors import BenchError
from bench.measure import measure_latency, param_counts
from bench.models import build_classifier, load_config, load_tokenizer
from bench.plugins import Registry, plugin_version
from bench.presets import Preset
from bench.results import SCHEMA_VERSION, RunKey, git_state, machine_info, now_utc, write_result
from bench.teachers import StoredTeacher, TeacherStore, get_or_train_teacher, teacher_key
from bench.train import FitResult, TrainConfig, accuracy, fit, make_accelerator, predict
from bench.vocab import MappedTeacher, VocabMap, align

log = logging.getLogger(__name__)


@dataclass
class Grid:
    suite: SuiteSpec
    preset: Preset
    methods: list[type[Distiller]]
    domains: Sequence[str]
    seeds: Sequence[int]
    data: DataConfig
    results_dir: str
    train_ratio: float = 1.0  # keep the first R of each domain's training rows (few-shot)
    overwrite: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.train_ratio <= 1.0:
            raise BenchError(f"train ratio {self.train_ratio} is not in (0, 1]",
                             "give the fraction of each domain's training rows to keep, e.g. 0.1")
        for m in self.methods:
            if m.teacher_kind not in (None, "single") or m.student_kind != "single":
                raise BenchError(
                    f"method {m.name!r} needs a {m.teacher_kind} teacher and a {m.student_kind} student; "
                    "this harness version trains single-domain ones only",
                    "run it with a kd-bench that supports multi-domain teachers and students")

    def label(self, method: type[Distiller]) -> str:
        """How results name a method: `kd`, or with the options the user gave, `kd[temperature=4]`,
        so runs with other options are other runs, stored and reported apart."""
        options = self.method_options.get(method.name)
        if not options:
            return method.name
        return f"{method.name}[{','.join(f'{k}={_jsonable(v)}' for k, v in sorted(options.items()))}]".replace(" ", "")

    def keys(self) -> list[tuple[RunKey, type[Distiller]]]:
        return [(RunKey(self.suite.name, self.preset.name, self.label(m), d, s, self.train_ratio), m)
                for d in self.domains for m in self.methods for s in self.seeds]


@dataclass
class Trained:
    """A training's figures and the selected checkpoint's test predictions."""

    fit: FitResult
    test_preds: list[int]
    test_golds: list[int]

    @property
    def test_accuracy(self) -> float:
        return accuracy(self.test_preds, self.test_golds)


@dataclass
class DomainData:
    """One domain's selected rows, tokenised once per tokenizer and shared by the teacher and
    every student."""

    rows: dict[str, Any]  # split -> datasets.Dataset
    fingerprint: str
    left_out: dict[str, int]
    max_len: int
    domains: Sequence[str]
    _tokenized: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.rows.items()}

    def tokenized(self, split: str, tokenizer) -> Any:
        key = (tokenizer.name_or_path, split)
        if key not in self._tokenized:
            self._tokenized[key] = tokenize(self.rows[split], tokenizer, self.max_len, self.domains)
        return self._tokenized[key]


def load_domain(suite: SuiteSpec, domain: str, preset: Preset, data: DataConfig, train_ratio: float) -> DomainData:
    """The splits of one domain: the first `train_ratio` of train (the few-shot protocol takes
    the first rows), then the preset's row caps."""
    limits = {"train": preset.max_train_rows, "dev": preset.max_dev_rows, "test": preset.max_test_rows}
    rows = {}
    for split, limit in limits.items():
        ds = suite.load(domain, split, data)
        keep = len(ds)
        if split == "train" and train_ratio < 1.0:
            keep = max(1, int(train_ratio * keep))
        if limit is not None:
            keep = min(keep, limit)
        if keep < len(ds):
            ds = ds.select(range(keep))
        if len(ds) == 0:
            raise BenchError(f"{suite.name}/{domain} has no {split} rows in {data.data_dir}",
                             "check the data dir, or use another preset")
        rows[split] = ds
    return DomainData(rows, suite.fingerprint(domain, data), suite.audit(domain, data), preset.max_len,
                      suite.domains)


def teacher_identity(grid: Grid, domain: str, data: DomainData) -> dict[str, Any]:
    """Everything a teacher depends on; its hash is the teacher's key in the store."""
    p = grid.preset
    return {
        "model": {"ref": p.teacher.ref, "init": p.teacher.init, "layers": p.teacher.layers},
        "suite": grid.suite.name,
        "suite_version": grid.suite.version,
        "domain": domain,
        "data_fingerprint": data.fingerprint,
        "train_ratio": grid.train_ratio,  # few-shot teachers see only the few-shot rows
        "sizes": data.sizes,
        "max_len": p.max_len,
        "kind": "single",
        "train": p.teacher_train.to_dict(),
        "seed": p.teacher_seed,
    }


class Runner:
    def __init__(self, grid: Grid, registry: Registry):
        self.grid = grid
        self.registry = registry
        self.accelerator = make_accelerator()
        self.store = TeacherStore()
        self.machine = machine_info(registry.pm, world_size=self.accelerator.num_processes)
        self._teacher_timing: dict[str, Any] | None = None

    def pending(self) -> list[tuple[RunKey, type[Distiller]]]:
        out = []
        for key, method in self.grid.keys():
            if key.path(self.grid.results_dir).exists() and not self.grid.overwrite:
                log.info("skipping %s/%s/%s seed %d: result exists (--overwrite to redo)",
                         key.method, key.suite, key.domain, key.seed)
                continue
            out.append((key, method))
        return out

    def check_methods(self, methods: Sequence[type[Distiller]]) -> None:
        """Build each method against the two models' configurations, so a layer map or width
        that does not fit fails now, not after a teacher has trained."""
        p = self.grid.preset
        teacher_config, student_config = load_config(p.teacher), load_config(p.student)
        for method in methods:
            distiller = method(self.grid.method_options.get(method.name))
            distiller.extra_modules(teacher_config if method.teacher_kind else None, student_config)

    def run(self) -> list[Path]:
        g = self.grid
        todo = self.pending()
        if not todo:
            return []
        self.check_methods(list(dict.fromkeys(m for _, m in todo)))
        written = []
        for domain in g.domains:
            runs = [(k, m) for k, m in todo if k.domain == domain]
            if not runs:
                continue
            data = load_domain(g.suite, domain, g.preset, g.data, g.train_ratio)
            teacher = None
            for key, method in runs:
                if method.teacher_kind and teacher is None:
                    teacher = self.teacher(domain, data)
                record = self.run_one(key, method, data, teacher if method.teacher_kind else None)
                path = key.path(g.results_dir)
                write_result(path, record)
                self.registry.pm.hook.bench_run_finished(result=record)
                log.info("%s on %s/%s seed %d: accuracy %.4f -> %s", key.method, key.suite, key.domain,
                         key.seed, record["metrics"].get("accuracy", float("nan")), path)
                written.append(path)
        return written

    @functools.cached_property
    def student_tokenizer(self):
        return load_tokenizer(self.grid.preset.student.ref)

    @functools.cached_property
    def vocab_map(self) -> VocabMap | None:
        """Student ids -> teacher ids when their vocabularies differ (data is tokenised once, by
        the student's tokenizer); refuses teachers whose tokens cannot line up."""
        vocab_map = align(load_tokenizer(self.grid.preset.teacher.ref), self.student_tokenizer)
        return vocab_map.to(self.accelerator.device) if vocab_map else None

    def teacher_view(self, model):
        """The teacher as the harness calls it: on student batches."""
        return MappedTeacher(model, self.vocab_map) if self.vocab_map else model

    def plan(self) -> list[str]:
        """What `run` would do, without training or loading a model: the teachers to train or
        reuse, the runs to do or skip, and the examples each would process."""
        g, p = self.grid, self.grid.preset
        todo = self.pending()
        lines = [f"preset {p.name}: teacher {p.teacher.describe()}, student {p.student.describe()}",
                 f"{len(todo)} run(s) to do, {len(g.keys()) - len(todo)} already in {g.results_dir}"]
        total = 0
        for domain in g.domains:
            runs = [(k, m) for k, m in todo if k.domain == domain]
            if not runs:
                continue
            data = load_domain(g.suite, domain, g.preset, g.data, g.train_ratio)
            n_train = data.sizes["train"]
            if any(m.teacher_kind for _, m in runs):
                key = teacher_key(teacher_identity(g, domain, data))
                stored = (self.store.path(key) / "teacher.json").is_file()
                examples = 0 if stored else p.teacher_train.epochs * n_train
                total += examples
                lines.append(f"{domain}: teacher {key} " + ("reused from the store" if stored else
                             f"to train ({examples} examples)"))
            for key, method in runs:
                stages = method(g.method_options.get(method.name)).stages  # options may add stages
                examples = len(stages) * p.student_train.epochs * n_train
                total += examples
                lines.append(f"{domain}: {method.name} seed {key.seed}: {examples} examples"
                             + (" (+ teacher forwards)" if method.teacher_kind else ""))
        lines.append(f"examples to process in all: {total}")
        return lines

    # -- teachers -----------------------------------------------------------------------
    def train_teachers(self) -> list[StoredTeacher]:
        """The teachers of the grid's domains, trained where the store lacks them."""
        g = self.grid
        return [self.teacher(d, load_domain(g.suite, d, g.preset, g.data, g.train_ratio)) for d in g.domains]

    def teacher(self, domain: str, data: DomainData) -> StoredTeacher:
        g, p = self.grid, self.grid.preset
        identity = teacher_identity(g, domain, data)
        if self.vocab_map:  # trained on the student's tokenisation, mapped
            identity["input_vocab"] = {"student": p.student.ref, "specials": self.vocab_map.specials}

        def train(model) -> dict[str, Any]:
            view = self.teacher_view(model)
            trained = self.train_and_test(
                view, lambda b: {"ce": torch.nn.functional.cross_entropy(view(b).logits, b.labels)},
                data, self.student_tokenizer, p.teacher_train, p.teacher_seed, f"teacher {domain}")
            return {"dev_accuracy": trained.fit.best_dev_accuracy, "test_accuracy": trained.test_accuracy,
                    "steps": trained.fit.steps, "selected_step": trained.fit.selected_step,
                    "history": trained.fit.history}

        stored = get_or_train_teacher(identity, len(g.suite.labels), train, self.store)
        stored.model.to(self.accelerator.device).eval()
        return stored

    def teacher_timing(self, teacher: StoredTeacher | None) -> dict[str, Any]:
        """The preset teacher's latency and parameters, measured once in this process (timing
        depends on the architecture only, so runs without a teacher get it too)."""
        if self._teacher_timing is None:
            p = self.grid.preset
            model = teacher.model if teacher is not None else build_classifier(
                p.teacher, len(self.grid.suite.labels)).to(self.accelerator.device)
            self._teacher_timing = {"latency": measure_latency(model, p.latency), "params": param_counts(model)}
            log.info("teacher %s: batch-1 latency %.2f ms", p.teacher.ref,
                     self._teacher_timing["latency"][f"batch_{p.latency.batch_sizes[0]}"]["median_ms"])
        return self._teacher_timing

    # -- one run ------------------------------------------------------------------------
    def train_and_test(self, model, compute_loss, data: DomainData, tokenizer, config: TrainConfig, seed: int,
                       desc: str, extra_modules=None) -> Trained:
        from accelerate.utils import set_seed

        set_seed(seed)
        pad = tokenizer.pad_token_id
        train_loader = make_loader(data.tokenized("train", tokenizer), config.batch_size, pad, shuffle=True, seed=seed)
        dev_loader, test_loader = (
            self.accelerator.prepare(make_loader(data.tokenized(s, tokenizer), 64, pad, shuffle=False))
            for s in ("dev", "test"))
        model.to(self.accelerator.device)

        def dev_accuracy() -> float:
            return accuracy(*predict(model, dev_loader, self.accelerator))

        result = fit(model, train_loader, compute_loss, dev_accuracy, config, self.accelerator,
                     extra_modules=extra_modules, desc=desc)
        return Trained(result, *predict(model, test_loader, self.accelerator))

    def run_one(self, key: RunKey, method: type[Distiller], data: DomainData,
                teacher: StoredTeacher | None) -> dict[str, Any]:
        from accelerate.utils import set_seed

        g, p = self.grid, self.grid.preset
        distiller = method(g.method_options.get(method.name))
        set_seed(key.seed)
        student = build_classifier(p.student, len(g.suite.labels))
        extra = distiller.extra_modules(teacher.model.config if teacher else None, student.config)
        needs = distiller.needs
        teacher_model = self.teacher_view(teacher.model) if teacher else None

        def compute_loss(batch, stage):
            student_out = student(batch, needs)
            teacher_out = None
            if teacher_model is not None:
                with torch.no_grad():
                    teacher_out = teacher_model(batch, needs)
            return distiller.loss(batch, student_out, teacher_out, stage)

        start = time.perf_counter()
        stages = []
        for stage in distiller.stages:
            stages.append(self.train_and_test(
                student, lambda b, stage=stage: compute_loss(b, stage), data, self.student_tokenizer,
                p.student_train, key.seed,
                f"{key.method} {key.domain} s{key.seed}" + (f" {stage}" if len(distiller.stages) > 1 else ""),
                extra_modules=extra))
        train_seconds = time.perf_counter() - start
        fits = [t.fit for t in stages]
        preds, golds = stages[-1].test_preds, stages[-1].test_golds

        eval_start = time.perf_counter()
        timing = self.teacher_timing(teacher)
        ctx = EvalContext(g.suite, key.domain, preds, golds, student, extra, latency=p.latency,
                          teacher_latency=timing["latency"], teacher_params=timing["params"])
        metrics = {name: spec.compute(ctx) for name, spec in self.registry.metrics.items() if spec.default}
        eval_seconds = time.perf_counter() - eval_start

        last = fits[-1]
        examples = sum(f.examples for f in fits)
        wall = sum(f.wall_seconds for f in fits)
        plugin = self.registry.owner("distiller", method.name)
        return {
            "schema_version": SCHEMA_VERSION,
            "bench_version": __version__,
            "plugin_versions": {plugin: plugin_version(plugin)},
            "git": git_state(),
            "created": now_utc(),
            "seed": key.seed,
            "preset": p.name,
            "machine": self.machine,
            "suite": {"name": g.suite.name, "version": g.suite.version, "domain": key.domain,
                      "train_ratio": g.train_ratio, "sizes": data.sizes, "fingerprint": data.fingerprint,
                      "left_out": data.left_out},
            "method": {"name": method.name, "label": g.label(method), "plugin": plugin,
                       "config": _jsonable(vars(distiller.options))},
            "teacher": None if teacher is None else {
                "ref": p.teacher.ref, "key": teacher.key, "params": timing["params"],
                "latency": timing["latency"],
                "dev_accuracy": teacher.info.get("dev_accuracy"),
                "test_accuracy": teacher.info.get("test_accuracy"),
                "reused": not teacher.trained_now},
            "student": {"ref": p.student.ref, "init": p.student.init,
                        "layers": list(p.student.layers) if p.student.layers else None},
            "train": {**p.student_train.to_dict(), "max_len": p.max_len, "steps": sum(f.steps for f in fits),
                      "examples": examples, "wall_seconds": round(wall, 3),
                      "examples_per_second": round(examples / wall, 2) if wall else None,
                      "selected_step": last.selected_step, "best_dev_accuracy": last.best_dev_accuracy,
                      "history": [h for f in fits for h in f.history]},
            "metrics": metrics,
            # teacher time spent by this run: its training when it was trained for it, else 0
            "timings": {"teacher_seconds": teacher.info.get("wall_seconds") if teacher and teacher.trained_now
                        else 0.0,
                        "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3)},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

