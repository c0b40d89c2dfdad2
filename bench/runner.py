"""A grid of runs: every (method, domain, seed) of one suite under one preset.

Each domain's data is loaded and tokenised once; teachers come from the store (trained there
on first use). A per-domain ("single") student is trained, tested on its best-on-dev checkpoint
and written as one result; a student of kind "mix" or "multi" is trained once on all the grid's
domains and gives one result per domain (multi: each domain's own best-on-dev checkpoint).
Runs whose result file exists are skipped unless `overwrite`.

With several processes, a run ends on every process at once, also when one raised in work that
only it does (the main process's metrics and writes): each run (`Runner.attempt`), stage and
teacher ends with one all-reduce of whether any process raised (`agree_on_failure`), so the run
is recorded as failed and the grid goes on, with no process left waiting at a collective.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import __version__
from bench.api import (
    STUDENT_KINDS,
    TEACHER_KINDS,
    DataConfig,
    Distiller,
    EvalContext,
    SuiteSpec,
    TeacherExtras,
    TeacherObjective,
)
from bench.checkpoint import Checkpoint, remove_folder
from bench.convergence import convergence
from bench.data import MultiDomainLoader, make_loader, tokenize
from bench.errors import BenchError, unknown_name
from bench.failures import Failure, clear_failure, record_failure
from bench.jobs import Job, grid_jobs, shard_jobs
from bench.locks import FileLock
from bench.machine import machine_info
from bench.measure import measure_latency, param_counts
from bench.memory import peak_rss_mib, release_free_heap, reset_peak_rss
from bench.models import build_classifier, load_config, load_tokenizer, misaligned_layers
from bench.plugins import Registry, plugin_version
from bench.precision import check_native, check_precision, with_precision
from bench.presets import Preset
from bench.results import SCHEMA_VERSION, RunKey, git_state, now_utc, write_result
from bench.significance import encode_labels
from bench.step import StudentStep
from bench.teacher_outputs import MODES as CACHE_MODES
from bench.teacher_outputs import CachedTeacher, TeacherOutputCache, cache_identity, rows_digest
from bench.teachers import StoredTeacher, TeacherStore, get_or_train_teacher, teacher_key
from bench.tracking import CurveLog, check_trackers
from bench.train import (
    FitResult,
    Selection,
    TrainConfig,
    accuracy,
    agree_on_failure,
    fit,
    make_accelerator,
    own_work,
    predict,
    untimed,
)
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
    checkpoint_every: int = 100  # steps between training checkpoints; 0: none
    resume: bool = False  # continue killed runs from their checkpoints (else those are discarded)
    shard: tuple[int, int] = (1, 1)  # (K, N): this job runs the K-th of N parts of the grid
    teacher_precision: str = "fp32"  # of the teacher's forwards while distilling (bench.precision)
    teacher_cache: str = "use"  # off, use or refresh the teacher-output cache (bench.teacher_outputs)
    log_with: tuple[str, ...] = ()  # experiment trackers of the students' curves (bench.tracking)

    def __post_init__(self):
        self.preset = self.preset.for_suite(self.suite.name)
        check_precision(self.teacher_precision)
        check_trackers(self.log_with)
        if self.teacher_cache not in CACHE_MODES:
            raise unknown_name("teacher cache mode", self.teacher_cache, CACHE_MODES)
        if not 0.0 < self.train_ratio <= 1.0:
            raise BenchError(f"train ratio {self.train_ratio} is not in (0, 1]",
                             "give the fraction of each domain's training rows to keep, e.g. 0.1")
        if self.checkpoint_every < 0:
            raise BenchError(f"--checkpoint-every {self.checkpoint_every} is negative",
                             "give the steps between checkpoints, or 0 for none")
        for m in self.methods:
            d = self.distiller(m)
            if d.teacher_kind not in TEACHER_KINDS or d.student_kind not in STUDENT_KINDS:
                raise BenchError(f"method {m.name!r} asks for a {d.teacher_kind!r} teacher and a "
                                 f"{d.student_kind!r} student",
                                 f"teacher kinds: {TEACHER_KINDS}; student kinds: {STUDENT_KINDS}")
            if d.student_kind == "mix" and d.teacher_kind in ("single", "multi"):
                raise BenchError(f"method {m.name!r}: a mix student sees every domain in one batch, so it "
                                 f"cannot have one {d.teacher_kind} teacher per domain",
                                 "give it a mix teacher (or none), or make the student multi")

    def distiller(self, method: type[Distiller]) -> Distiller:
        """A fresh instance with the user's options and the grid's domains."""
        distiller = method(self.method_options.get(method.name))
        distiller.domains = tuple(self.domains)
        distiller.student_copies = self.preset.student.copied_teacher_layers(self.preset.teacher)
        return distiller

    def label(self, method: type[Distiller]) -> str:
        """How results name a method: `kd`, or with the options that differ from its defaults,
        `kd[temperature=4.0]`, so runs with other options are other runs, stored and reported
        apart. Values are the checked ones (4 and 4.0 are one run; a default given is no option).
        A method distilled from a bf16 teacher is `kd@bf16`."""
        label = method.name
        given = self.method_options.get(method.name)
        if given:
            options, defaults = vars(method.make_options(given)), vars(method.Options())
            changed = {k: options[k] for k in sorted(given) if options[k] != defaults[k]}
            if changed:
                label += f"[{','.join(f'{k}={json.dumps(_jsonable(v))}' for k, v in changed.items())}]"
        if self.teacher_precision != "fp32" and self.distiller(method).teacher_kind:
            label += f"@{self.teacher_precision}"
        return label

    def keys(self) -> list[tuple[RunKey, type[Distiller]]]:
        return [(RunKey(self.suite.name, self.preset.name, self.label(m), d, s, self.train_ratio), m)
                for d in self.domains for m in self.methods for s in self.seeds]


@dataclass
class Trained:
    """A training's figures, and one domain's selected checkpoint with its test predictions."""

    fit: FitResult
    selection: Selection
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


def _objective_identity(objective: TeacherObjective | None) -> dict[str, Any]:
    """A method's own teacher objective joins the key; plain teachers' keys stay as they were."""
    return {} if objective is None else {"objective": {"name": objective.name, "config": objective.config()}}


def teacher_identity(grid: Grid, domain: str, data: DomainData,
                     objective: TeacherObjective | None = None) -> dict[str, Any]:
    """Everything a single-domain teacher depends on; its hash is the teacher's key in the store."""
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
        **_objective_identity(objective),
    }


def joint_teacher_identity(grid: Grid, kind: str, data: dict[str, DomainData],
                           objective: TeacherObjective | None = None) -> dict[str, Any]:
    """Everything a teacher trained on all the grid's domains at once (mix, multi) depends on."""
    p = grid.preset
    return {
        "model": {"ref": p.teacher.ref, "init": p.teacher.init, "layers": p.teacher.layers},
        "suite": grid.suite.name,
        "suite_version": grid.suite.version,
        "domains": list(data),
        "data_fingerprints": {d: dd.fingerprint for d, dd in data.items()},
        "train_ratio": grid.train_ratio,
        "sizes": {d: dd.sizes for d, dd in data.items()},
        "max_len": p.max_len,
        "kind": kind,
        "heads": len(grid.suite.domains) if kind == "multi" else 1,
        "train": p.teacher_train.to_dict(),
        "seed": p.teacher_seed,
        **_objective_identity(objective),
    }


class Runner:
    def __init__(self, grid: Grid, registry: Registry):
        self.grid = grid
        self.registry = registry
        self.accelerator = make_accelerator()
        check_native(grid.teacher_precision, self.accelerator.device)
        processes = self.accelerator.num_processes
        for what, config in (("teacher", grid.preset.teacher_train), ("student", grid.preset.student_train)):
            if config.batch_size % processes:
                raise BenchError(f"the {grid.preset.name} preset's {what} batch of {config.batch_size} does not "
                                 f"split over {processes} processes",
                                 "launch a number of processes that divides it (each takes an equal part)")
        self.store = TeacherStore()
        self.machine = machine_info(registry.pm, world_size=self.accelerator.num_processes)
        self._teacher_timing: dict[str, Any] | None = None
        self._data: dict[str, DomainData] = {}
        self._teachers: dict[tuple[str, str, str], StoredTeacher] = {}  # (kind, objective, domain) -> teacher
        self._output_caches: dict[str, TeacherOutputCache] = {}  # identity -> its cache, opened once
        self.outputs_root: Path | None = None  # where those caches live; None: the user's cache dir
        self._rows_digests: dict[str, str] = {}  # domain -> digest of its tokenised training rows
        # What metrics measured of the preset's student (its latency), by its number of heads: the
        # timing depends on the architecture only, so each is measured once per process, not per run.
        self._measured: dict[int, dict[str, Any]] = {}
        self.failures: list[Failure] = []  # runs that failed, recorded under <results>/.failed/
        self._teacher_errors: dict[tuple[str, str, str], BaseException] = {}

    def data(self, domain: str) -> DomainData:
        if domain not in self._data:
            g = self.grid
            self._data[domain] = load_domain(g.suite, domain, g.preset, g.data, g.train_ratio)
        return self._data[domain]

    def jobs(self) -> list[Job]:
        """This shard's jobs (all of the grid's without --shard)."""
        jobs = grid_jobs(self.grid)
        return shard_jobs(jobs, self.grid.shard) if self.grid.shard != (1, 1) else jobs

    def is_pending(self, job: Job) -> bool:
        """Whether `job` has a result to write: one is missing, or `overwrite`."""
        return self.grid.overwrite or not all(key.path(self.grid.results_dir).exists() for key in job.keys)

    def result_stamps(self, job: Job) -> list[int | None]:
        """Each of `job`'s result files' modification time (ns), None where there is none."""
        paths = [key.path(self.grid.results_dir) for key in job.keys]
        return [p.stat().st_mtime_ns if p.exists() else None for p in paths]

    def pending(self) -> list[Job]:
        out = []
        for job in self.jobs():
            if not self.is_pending(job):
                log.info("skipping %s: result exists (--overwrite to redo)", job.describe())
                continue
            out.append(job)
        return out

    def check_methods(self, methods: Sequence[type[Distiller]]) -> None:
        """Build each method against the two models' configurations, so a layer map or width
        that does not fit fails now, not after a teacher has trained."""
        p = self.grid.preset
        teacher_config, student_config = load_config(p.teacher), load_config(p.student)
        for method in methods:
            distiller = self.grid.distiller(method)
            distiller.extra_modules(teacher_config if distiller.teacher_kind else None, student_config)

    def run(self) -> list[Path]:
        """Every pending job of this shard. A job another process holds (a second grid on the same
        results dir) is left to it and looked at again at the end; a job that fails is recorded
        under `.failed/` (`self.failures`) and the others go on."""
        todo = self.pending()
        if not todo:
            return []
        self.check_methods(list(dict.fromkeys(job.method for job in todo)))
        # A job is done by another process (a second grid on the same results dir) when all its
        # result files were written after this grid looked: compared by the files' own stamps,
        # so clocks of other machines on a shared disk do not matter.
        stamps = {job: self.result_stamps(job) for job in todo}

        def done_elsewhere(job: Job) -> bool:
            now = self.result_stamps(job)
            return self.agree(all(n is not None and n != before for n, before in zip(now, stamps[job])))

        written, deferred = [], []
        for job in todo:
            lock = FileLock(job.lock_path(self.grid.results_dir))
            if not self.agree(lock.acquire(blocking=False) if self.main else None):
                log.info("%s is running in another process: coming back to it at the end", job.describe())
                deferred.append(job)
                continue
            try:
                if done_elsewhere(job):
                    log.info("%s was finished by another process", job.describe())
                    continue
                written += self.attempt(job)
            finally:
                lock.release()
        for job in deferred:  # the lock comes when the other process finishes, fails or dies
            with FileLock(job.lock_path(self.grid.results_dir)) if self.main else contextlib.nullcontext():
                if done_elsewhere(job):
                    log.info("%s was finished by another process", job.describe())
                    continue
                log.info("%s: the other process stopped without its result; running it here", job.describe())
                written += self.attempt(job)
        return written

    def attempt(self, job: Job) -> list[Path]:
        """Run `job` and write its results; on an error, on any process, record it as failed and go
        on. Every process ends the job at one all-reduce, on success as on failure: one that raised
        in work the others do not do (the main process's metrics and writes) must not leave them
        waiting for it at the grid's next collective."""
        written, raised = [], None
        try:
            written = self.run_and_write(job)
        except Exception as exc:  # noqa: BLE001 - told to the others below
            raised = exc
        try:
            agree_on_failure(raised, job.describe(), "", self.accelerator)
        except Exception as exc:  # noqa: BLE001 - one failed run must not stop the grid
            log.error("%s failed: %s", job.describe(), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            log.debug("traceback", exc_info=True)
            if self.main:
                self.failures += [record_failure(self.grid.results_dir, key, exc) for key in job.keys]
            return []
        return written

    def run_and_write(self, job: Job) -> list[Path]:
        """Train and test `job`'s student(s), write its results, drop its checkpoints."""
        self.release_teachers(keep=job)
        records = self.run_joint(job.method, job.seed) if job.joint else {
            job.key.domain: self.run_one(job.key, self.grid.distiller(job.method), self.teacher_for(job))}
        written = [self.write(key, records.get(key.domain)) for key in job.keys]
        if self.main:
            remove_folder(self.checkpoint_folder(job.key))
        return written

    def release_teachers(self, keep: Job) -> None:
        """Drop the loaded teachers `keep` does not use. Otherwise a grid holds every teacher it met
        (each domain's, the joint ones, the meta-teacher) to its end; the store reloads one in seconds."""
        distiller = self.grid.distiller(keep.method)
        needed = set()
        if distiller.teacher_kind:
            tag = json.dumps(_objective_identity(distiller.teacher_objective()), sort_keys=True)
            needed = {(distiller.teacher_kind, tag, k.domain) for k in keep.keys}
        if set(self._teachers) - needed:
            self._teachers = {k: t for k, t in self._teachers.items() if k in needed}
            gc.collect()

    def teacher_for(self, job: Job) -> StoredTeacher | None:
        distiller = self.grid.distiller(job.method)
        if not distiller.teacher_kind:
            return None
        return self.teachers(distiller.teacher_kind, [job.key.domain], distiller.teacher_objective())[job.key.domain]

    @property
    def main(self) -> bool:
        """Whether this is the process that writes (results, checkpoints, the store, logs)."""
        return self.accelerator.is_main_process

    def agree(self, value: Any) -> Any:
        """The main process's `value`, on every process (they must take the same decisions)."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def write(self, key: RunKey, record: dict[str, Any]) -> Path:
        path = key.path(self.grid.results_dir)
        if not self.main:
            return path
        write_result(path, record)
        clear_failure(self.grid.results_dir, key)
        self.registry.pm.hook.bench_run_finished(result=record)
        log.info("%s on %s/%s seed %d: accuracy %.4f -> %s", key.method, key.suite, key.domain,
                 key.seed, record["metrics"].get("accuracy", float("nan")), path)
        return path

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
        runs = sum(len(job.keys) for job in todo)
        lines = [f"preset {p.name}: teacher {p.teacher.describe()}, student {p.student.describe()}",
                 f"{runs} run(s) to do, {sum(len(j.keys) for j in self.jobs()) - runs} already in {g.results_dir}"
                 + (f" (shard {g.shard[0]}/{g.shard[1]} of {len(g.keys())} runs)" if g.shard != (1, 1) else "")]
        total = 0
        planned_teachers: set[str] = set()

        def plan_teacher(kind: str, domains: list[str], objective: TeacherObjective | None) -> None:
            nonlocal total
            if kind == "single":
                identity = teacher_identity(g, domains[0], self.data(domains[0]), objective)
            else:
                identity = joint_teacher_identity(g, kind, {d: self.data(d) for d in g.domains}, objective)
            key, stored = self.stored_key(identity)
            if key in planned_teachers:
                return
            planned_teachers.add(key)
            examples = 0 if stored else p.teacher_train.epochs * self.epoch_examples(kind, domains)
            total += examples
            where = domains[0] if kind == "single" else ",".join(g.domains)
            what = " ".join(filter(None, [None if kind == "single" else kind, objective and objective.name]))
            lines.append(f"{where}: {what + ' ' if what else ''}teacher {key} "
                         + ("reused from the store" if stored else f"to train ({examples} examples)"))

        for job in todo:
            distiller = g.distiller(job.method)
            kind = distiller.student_kind
            domains = list(g.domains) if job.joint else [job.key.domain]
            if distiller.teacher_kind:  # a mix or multi teacher trains on every domain, whatever its student's kind
                teacher_domains = domains[:1] if distiller.teacher_kind == "single" else list(g.domains)
                plan_teacher(distiller.teacher_kind, teacher_domains, distiller.teacher_objective())
            examples = len(distiller.stages) * p.student_train.epochs * self.epoch_examples(kind, domains)
            total += examples
            where = job.key.domain if not job.joint else f"{','.join(g.domains)} ({kind} student)"
            lines.append(f"{where}: {job.method.name} seed {job.seed}: {examples} examples"
                         + (" (+ teacher forwards)" if distiller.teacher_kind else ""))
        lines.append(f"examples to process in all: {total}")
        return lines

    def epoch_examples(self, kind: str, domains: Sequence[str]) -> int:
        """Rows one epoch trains on: a domain's; the union's (mix); the largest domain's times
        the number of domains (multi: every step takes a sub-batch of each)."""
        sizes = [self.data(d).sizes["train"] for d in domains]
        return max(sizes) * len(sizes) if kind == "multi" else sum(sizes)

    # -- teachers -----------------------------------------------------------------------
    def train_teachers(self, kind: str = "single") -> list[StoredTeacher]:
        """The grid's teachers of one kind, trained where the store lacks them; one per domain."""
        return list(self.teachers(kind, self.grid.domains).values())

    def teachers(self, kind: str, domains: Sequence[str],
                 objective: TeacherObjective | None = None) -> dict[str, StoredTeacher]:
        """Each domain's teacher of `kind`: a single-domain teacher is trained per domain, a mix
        or multi one on all the grid's domains at once; with a method's `objective`, by it."""
        tag = json.dumps(_objective_identity(objective), sort_keys=True)
        for d in domains:  # a teacher that failed fails every run that needs it, without a retry
            if (failed := self._teacher_errors.get((kind, tag, d))) is not None:
                raise BenchError(f"its {kind} teacher on {d} failed earlier in this grid: "
                                 f"{type(failed).__name__}: {str(failed).splitlines()[0] if str(failed) else ''}",
                                 "see the first failure's traceback under the results' .failed/ folder")
        missing = [d for d in domains if (kind, tag, d) not in self._teachers]
        try:
            if kind == "single":
                for d in missing:
                    self._teachers[(kind, tag, d)] = self.single_teacher(d, objective)
            elif missing:
                for d, t in self.joint_teacher(kind, objective).items():
                    self._teachers[(kind, tag, d)] = t
        except Exception as exc:
            for d in (missing if kind == "single" else self.grid.domains):
                if (kind, tag, d) not in self._teachers:
                    self._teacher_errors[(kind, tag, d)] = exc
            raise
        return {d: self._teachers[(kind, tag, d)] for d in domains}

    def stored_key(self, identity: dict[str, Any]) -> tuple[str, bool]:
        """The key of the teacher `identity` names and whether the store holds it, found without
        loading a tokenizer: a teacher of another vocabulary is stored under its identity plus the
        student's tokenisation (`with_input_vocab`), so it is found by the rest of its identity."""
        key = teacher_key(identity)
        if (self.store.path(key) / "teacher.json").is_file():
            return key, True
        plain = json.loads(json.dumps(identity))  # as stored: tuples read back as lists
        for stored_key, info in self.store.entries():
            stored = dict(info.get("identity") or {})
            vocab = stored.pop("input_vocab", None)
            if vocab and vocab.get("student") == self.grid.preset.student.ref and stored == plain:
                return stored_key, True
        return key, False

    def with_input_vocab(self, identity: dict[str, Any]) -> dict[str, Any]:
        """A teacher of another vocabulary is trained on the student's tokenisation, mapped: its key says so."""
        if not self.vocab_map:
            return identity
        vocab = {"student": self.grid.preset.student.ref, "specials": self.vocab_map.specials}
        return identity | {"input_vocab": vocab}

    def _stored(self, identity: dict[str, Any], train) -> dict[str, StoredTeacher]:
        """The teacher `identity` names, from the store or trained by `train(model, checkpoint)`;
        a killed teacher training resumes with --resume from `<store>/.partial/<key>/`."""
        identity = self.with_input_vocab(identity)
        folder = self.store.root / ".partial" / teacher_key(identity)
        # One process trains a given teacher at a time: another grid that needs it waits, then reuses it.
        lock = FileLock(self.store.root / ".locks" / f"{teacher_key(identity)}.lock")
        if self.main and not lock.acquire(blocking=False):
            log.info("teacher %s is being trained by another process: waiting for it", teacher_key(identity))
            lock.acquire()
        try:
            if folder.exists() and not self.grid.resume and self.main:  # under the lock: no one trains it now
                log.info("discarding the checkpoint of an earlier teacher training in %s (--resume continues it)",
                         folder)
                remove_folder(folder)
            self.accelerator.wait_for_everyone()  # the others look into the store once the main holds the lock
            stored, raised = None, None
            try:
                stored = get_or_train_teacher(identity, len(self.grid.suite.labels),
                                              lambda model: train(model, Checkpoint(folder)), self.store,
                                              save=self.main)
            except Exception as exc:  # noqa: BLE001 - the main process alone stores it: the others hear of it
                raised = exc
            agree_on_failure(raised, f"teacher {teacher_key(identity)}", "", self.accelerator)
        finally:
            lock.release()
        if self.main:
            remove_folder(folder)
        for t in stored.values():
            t.model.to(self.accelerator.device).eval()
        return stored

    def teacher_loss(self, view, objective: TeacherObjective | None, domains: Sequence[str]):
        """(compute_loss, modules, tensors) of a teacher's training: CE on labels, or the method's
        objective, whose tensors are prepared first from the teacher as it starts."""
        if objective is None:
            def ce(batch):
                if isinstance(batch, dict):  # multi: the plain sum of per-domain CE
                    return {"ce": sum(torch.nn.functional.cross_entropy(view(b).logits, b.labels)
                                      for b in batch.values())}
                return {"ce": torch.nn.functional.cross_entropy(view(batch).logits, batch.labels)}
            return ce, None, {}

        objective.domains = tuple(self.grid.suite.domains)
        tokenizer, device = self.student_tokenizer, self.accelerator.device
        train = {d: make_loader(self.data(d).tokenized("train", tokenizer), 64, tokenizer.pad_token_id, shuffle=False)
                 for d in domains}
        view.eval()
        with torch.no_grad():
            tensors = objective.prepare(lambda b, needs: view(b.to(device), needs), train)
        modules = objective.modules(view.config)
        if modules is not None:
            modules.to(device)

        def compute_loss(batch):
            if isinstance(batch, dict):
                raise BenchError(f"teacher objective {objective.name!r} trains single or mix teachers",
                                 "give the method teacher_kind 'single' or 'mix'")
            return objective.loss(batch, view(batch, objective.needs), modules, tensors)

        return compute_loss, modules, tensors

    def single_teacher(self, domain: str, objective: TeacherObjective | None = None) -> StoredTeacher:
        p = self.grid.preset
        data = self.data(domain)

        def train(model, checkpoint):
            view = self.teacher_view(model)
            loss, modules, tensors = self.teacher_loss(view, objective, [domain])
            trained = self.train_and_test(view, loss, data, self.student_tokenizer, p.teacher_train, p.teacher_seed,
                                          f"teacher {domain}", extra_modules=modules, checkpoint=checkpoint)
            return {"dev_accuracy": trained.selection.dev_accuracy, "test_accuracy": trained.test_accuracy,
                    "steps": trained.fit.steps, "selected_step": trained.selection.step,
                    "history": trained.fit.history}, None, _extras(modules, tensors)

        return self._stored(teacher_identity(self.grid, domain, data, objective), train)[domain]

    def joint_teacher(self, kind: str, objective: TeacherObjective | None = None) -> dict[str, StoredTeacher]:
        """A mix teacher (one model on the union) or a multi teacher (shared encoder, a head per
        domain, trained on the plain sum of per-domain CE; each domain's best dev checkpoint)."""
        g, p = self.grid, self.grid.preset
        data = {d: self.data(d) for d in g.domains}

        def train(model, checkpoint):
            view = self.teacher_view(model)
            loss, modules, tensors = self.teacher_loss(view, objective, g.domains)
            trained = self.train_and_test_joint(view, loss, kind, p.teacher_train, p.teacher_seed,
                                                f"{kind} teacher", extra_modules=modules, checkpoint=checkpoint)
            per_domain = {d: {"dev_accuracy": t.selection.dev_accuracy, "test_accuracy": t.test_accuracy,
                              "selected_step": t.selection.step} for d, t in trained.items()}
            fit = next(iter(trained.values())).fit
            info = {"dev_accuracy": _mean(v["dev_accuracy"] for v in per_domain.values()),
                    "test_accuracy": _mean(v["test_accuracy"] for v in per_domain.values()),
                    "steps": fit.steps, "history": fit.history, "domains": per_domain}
            states = None
            if kind == "multi":
                states = {d: _inner_state(view, t.selection.state) for d, t in trained.items()}
            if kind == "multi" and modules is not None:
                raise BenchError("a multi teacher keeps one checkpoint per domain, but its objective's modules "
                                 "have one state", "give the method teacher_kind 'single' or 'mix'")
            return info, states, _extras(modules, tensors)

        return self._stored(joint_teacher_identity(g, kind, data, objective), train)

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

    # -- training -----------------------------------------------------------------------
    def train_and_test(self, model, compute_loss, data: DomainData, tokenizer, config: TrainConfig, seed: int,
                       desc: str, extra_modules=None, trace=None, select_best: bool = True,
                       checkpoint: Checkpoint | None = None, curves: CurveLog | None = None) -> Trained:
        from accelerate.utils import set_seed

        set_seed(seed)
        pad = tokenizer.pad_token_id
        train_loader = make_loader(data.tokenized("train", tokenizer), config.batch_size, pad, shuffle=True, seed=seed,
                                   length_buckets=config.length_buckets)
        dev_loader, test_loader = (
            self.accelerator.prepare(make_loader(data.tokenized(s, tokenizer), 64, pad, shuffle=False, by_length=True))
            for s in ("dev", "test"))
        model.to(self.accelerator.device)

        def dev_accuracy() -> float:
            return accuracy(*predict(model, dev_loader, self.accelerator, desc, "while predicting dev"))

        result = fit(model, train_loader, compute_loss, dev_accuracy, config, self.accelerator,
                     extra_modules=extra_modules, desc=desc, trace=trace, select_best=select_best,
                     checkpoint=checkpoint, checkpoint_every=self.grid.checkpoint_every,
                     curves=curves and curves.log)
        return Trained(result, result.selection, *predict(model, test_loader, self.accelerator, desc,
                                                          "while predicting test"))

    def joint_train_loader(self, kind: str, batch_size: int, seed: int, length_buckets: int = 0):
        """multi: a MultiDomainLoader of `batch_size` rows per domain; mix: batches of `batch_size`
        x domains rows of the shuffled union (bucketed by length with `length_buckets`)."""
        from datasets import concatenate_datasets

        tokenizer, domains = self.student_tokenizer, list(self.grid.domains)
        train = [self.data(d).tokenized("train", tokenizer) for d in domains]
        if kind == "multi":
            return MultiDomainLoader({
                d: self.accelerator.prepare(make_loader(rows, batch_size, tokenizer.pad_token_id, shuffle=True,
                                                        seed=seed + 1009 * i, length_buckets=length_buckets))
                for i, (d, rows) in enumerate(zip(domains, train))})
        return make_loader(concatenate_datasets(train), batch_size * len(domains), tokenizer.pad_token_id,
                           shuffle=True, seed=seed, length_buckets=length_buckets)

    def train_and_test_joint(self, model, compute_loss, kind: str, config: TrainConfig, seed: int, desc: str,
                             extra_modules=None, trace=None, select_best: bool = True,
                             checkpoint: Checkpoint | None = None, curves: CurveLog | None = None
                             ) -> dict[str, Trained]:
        """Train on all the grid's domains at once. multi: MultiDomainBatches of `batch_size`
        rows per domain, each domain's best dev checkpoint kept and tested on that domain; mix:
        batches of `batch_size` x domains rows from the shuffled union, one checkpoint selected
        on the mean dev accuracy over domains."""
        from accelerate.utils import set_seed

        set_seed(seed)
        tokenizer, domains = self.student_tokenizer, list(self.grid.domains)
        pad = tokenizer.pad_token_id
        data = {d: self.data(d) for d in domains}
        train_loader = self.joint_train_loader(kind, config.batch_size, seed, config.length_buckets)
        dev, test = ({d: self.accelerator.prepare(make_loader(data[d].tokenized(split, tokenizer), 64, pad,
                                                              shuffle=False, by_length=True)) for d in domains}
                     for split in ("dev", "test"))
        model.to(self.accelerator.device)

        def dev_accuracy() -> dict[str, float]:
            return {d: accuracy(*predict(model, loader, self.accelerator, desc, f"while predicting {d} dev"))
                    for d, loader in dev.items()}

        result = fit(model, train_loader, compute_loss, dev_accuracy, config, self.accelerator,
                     extra_modules=extra_modules, desc=desc, trace=trace, select_on_mean=kind != "multi",
                     select_best=select_best, checkpoint=checkpoint, checkpoint_every=self.grid.checkpoint_every,
                     curves=curves and curves.log)
        out = {}
        for d in domains:
            selection = result.selections[d] if kind == "multi" else result.selection
            if kind == "multi":
                model.load_state_dict(selection.state)
            out[d] = Trained(result, selection, *predict(model, test[d], self.accelerator, desc,
                                                         f"while predicting {d} test"))
        return out

    @contextlib.contextmanager
    def curve_log(self, key: RunKey, distiller: Distiller, stage: str):
        """The trackers of one stage's training (--log-with), on the main process; None without."""
        if not self.grid.log_with or not self.main:
            yield None
            return
        run = key.path(".").with_suffix("").as_posix().removeprefix("./")
        run += f"/{stage}" if len(distiller.stages) > 1 else ""
        config = {"method": key.method, "domain": key.domain, "seed": key.seed, "preset": key.preset,
                  "stage": stage, **self.grid.preset.student_train.to_dict()}
        curves = CurveLog(self.grid.log_with, Path(self.grid.results_dir) / "trackers", run,
                          {k: v for k, v in config.items() if v is not None})
        try:
            yield curves
        finally:
            curves.close()

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_folder(self, key: RunKey) -> Path:
        """`<results>/.checkpoints/<suite>/<preset>/<method>/<domain>/seed<N>/`: beside the results,
        so a run resumes wherever the results dir is (another node of a cluster)."""
        return key.path(Path(self.grid.results_dir) / ".checkpoints").with_suffix("")

    def stage_checkpoints(self, key: RunKey, distiller: Distiller) -> list[tuple[str, Checkpoint]]:
        """Each stage of a run with its checkpoint. Without --resume a killed run's checkpoints are
        discarded: they may come from other code or settings."""
        folder = self.checkpoint_folder(key)
        if folder.exists() and not self.grid.resume and self.main:
            log.info("discarding the checkpoints of an earlier %s/%s seed %d (--resume continues from them)",
                     key.method, key.domain, key.seed)
            remove_folder(folder)
        self.accelerator.wait_for_everyone()
        return [(stage, Checkpoint(folder, f"{i}-{stage}")) for i, stage in enumerate(distiller.stages)]

    def resumable_stage(self, stage: str, checkpoint: Checkpoint, student, extra, train):
        """`train(stage, checkpoint)` (a Trained, or one per domain), unless the stage had finished
        before the run was killed: then its outcome and the student it left are loaded."""
        done = Checkpoint(checkpoint.folder, checkpoint.path.stem + ".done")
        if (saved := done.load()) is not None:
            student.load_state_dict(saved["student"])
            if extra is not None:
                extra.load_state_dict(saved["extra"])
            log.info("stage %s was done before the run stopped: loaded from %s", checkpoint.path.stem, done.path)
            return _trained_from_state(saved["trained"])
        trained = train(stage, checkpoint)
        if not self.grid.checkpoint_every:
            return trained

        def save_done() -> None:
            done.save({"student": student.state_dict(), "extra": extra.state_dict() if extra is not None else None,
                       "trained": _trained_state(trained)})
            checkpoint.remove()

        # the main process alone writes: the others hear of a failed write here, not at their next collective
        raised = own_work(save_done, self.accelerator) if self.main else None
        agree_on_failure(raised, f"stage {checkpoint.path.stem}", "while saving its outcome", self.accelerator)
        return trained

    # -- runs ---------------------------------------------------------------------------
    def bind_teacher(self, distiller: Distiller, teacher: StoredTeacher) -> None:
        """Hand the distiller what its teacher objective stored with the teacher (frozen), after a
        warning if the student's mapped layers start as copies of other teacher layers than their
        targets."""
        p = self.grid.preset
        if off := misaligned_layers(p.student, p.teacher, distiller.mapped_layers()):
            copies = ", ".join(str(c) for _, c, _ in off)
            targets = ", ".join(str(g) for _, _, g in off)
            log.warning("%s maps student layers %s to teacher layers %s, but the student (%s) starts them as copies "
                        "of teacher layers %s: its layer losses start large.\n  Cut the student from the layers the "
                        "map targets (0-based: %s), or give %s the option layer_map [%s].", distiller.name,
                        ", ".join(str(m) for m, _, _ in off), targets, p.student.describe(), copies,
                        ", ".join(str(g - 1) for _, _, g in off), distiller.name, copies)
        objective = distiller.teacher_objective()
        if objective is None:
            return
        stored = teacher.extras or {}
        objective.domains = tuple(self.grid.suite.domains)
        modules = objective.modules(teacher.model.config)
        if modules is not None:
            modules.load_state_dict({k.removeprefix("modules."): v for k, v in stored.items()
                                     if k.startswith("modules.")})
            modules.to(self.accelerator.device).eval().requires_grad_(False)
        tensors = {k.removeprefix("tensors."): v.to(self.accelerator.device) for k, v in stored.items()
                   if k.startswith("tensors.")}
        distiller.bind_teacher(TeacherExtras(modules, tensors, tuple(self.grid.suite.domains)))

    def student_forward(self, distiller: Distiller, student, teachers: dict[str, StoredTeacher] | None,
                        timer=untimed) -> StudentStep:
        """The method's loss for the student's kind, `step(batch, stage)`: each (sub-)batch through
        the student and, without gradients, through its domain's teacher (read through the
        teacher-output cache where the method allows). `timer(phase)` times the teacher forward,
        the student forward and the method's loss (`bench profile`)."""
        views = ({d: with_precision(self.teacher_view(t.model), self.grid.teacher_precision)
                  for d, t in teachers.items()} if teachers else None)
        needs = distiller.needs
        if views and self.grid.teacher_cache != "off" and (needs <= {"logits"} or not distiller.reads_teacher_padding):
            views = {d: self.cached_teacher(view, teachers, d if distiller.student_kind != "mix" else None)
                     for d, view in views.items()}
        return StudentStep(distiller, student, views, timer)

    def cached_teacher(self, view, teachers: dict[str, StoredTeacher], domain: str | None) -> CachedTeacher:
        """`view` reading through the teacher-output caches of `domain`'s rows (None: every domain's,
        for a mix student), one cache per (teacher, domain, rows), opened once per process."""
        suite_domains = list(self.grid.suite.domains)
        caches = {}
        for d in [domain] if domain else list(self.grid.domains):
            if d not in self._rows_digests:
                self._rows_digests[d] = rows_digest(self.data(d).tokenized("train", self.student_tokenizer))
            identity = cache_identity(teachers[d].key, teachers[d].weights_digest(), d, self._rows_digests[d],
                                      self.grid.teacher_precision, self.grid.preset.student.ref)
            key = json.dumps(identity, sort_keys=True)
            if key not in self._output_caches:  # refresh: the main process empties it, once per grid
                refresh = self.grid.teacher_cache == "refresh" and self.main
                rows_total = len(self.data(d).tokenized("train", self.student_tokenizer))
                cache, raised = None, None
                try:
                    cache = TeacherOutputCache(identity, self.outputs_root, refresh, rows_total)
                except Exception as exc:  # noqa: BLE001 - the main process alone empties it: the others hear of it
                    raised = exc
                agree_on_failure(raised, f"the teacher-output cache of {d}", "", self.accelerator)
                self._output_caches[key] = cache
            caches[suite_domains.index(d)] = self._output_caches[key]
        return CachedTeacher(view, caches, teachers[domain or self.grid.domains[0]].model.config.num_hidden_layers)

    def run_one(self, key: RunKey, distiller: Distiller, teacher: StoredTeacher | None) -> dict[str, Any]:
        from accelerate.utils import set_seed

        g, p = self.grid, self.grid.preset
        set_seed(key.seed)
        student = build_classifier(p.student, len(g.suite.labels))
        extra = distiller.extra_modules(teacher.model.config if teacher else None, student.config)
        if teacher is not None:
            self.bind_teacher(distiller, teacher)
        compute_loss = self.student_forward(distiller, student, {key.domain: teacher} if teacher else None)

        release_free_heap()
        reset_peak_rss()
        start = time.perf_counter()
        def train_stage(stage: str, checkpoint: Checkpoint) -> Trained:
            with self.curve_log(key, distiller, stage) as curves:
                return self.train_and_test(
                    student, lambda b: compute_loss(b, stage), self.data(key.domain), self.student_tokenizer,
                    p.student_train, key.seed,
                    f"{key.method} {key.domain} s{key.seed}" + (f" {stage}" if len(distiller.stages) > 1 else ""),
                    extra_modules=extra, trace=distiller.trace, select_best=distiller.selects_on_dev(stage),
                    checkpoint=checkpoint, curves=curves)

        stages = [self.resumable_stage(stage, checkpoint, student, extra, train_stage)
                  for stage, checkpoint in self.stage_checkpoints(key, distiller)]
        compute_loss.flush_outputs()
        train_seconds = time.perf_counter() - start + sum(t.fit.resumed_seconds for t in stages)
        if not self.main:  # the main process writes the result (and times the student alone)
            return {}
        return self.record(key, distiller, stages, student, extra, teacher, train_seconds, [key.domain])

    def run_joint(self, method: type[Distiller], seed: int) -> dict[str, dict[str, Any]]:
        """Train one mix or multi student on all the grid's domains; one result per domain."""
        from accelerate.utils import set_seed

        g, p = self.grid, self.grid.preset
        distiller = g.distiller(method)
        kind = distiller.student_kind
        teachers = None
        if distiller.teacher_kind:
            teachers = self.teachers(distiller.teacher_kind, g.domains, distiller.teacher_objective())
        set_seed(seed)
        student = build_classifier(p.student, len(g.suite.labels), len(g.suite.domains) if kind == "multi" else 1)
        teacher_config = next(iter(teachers.values())).model.config if teachers else None
        extra = distiller.extra_modules(teacher_config, student.config)
        if teachers:
            self.bind_teacher(distiller, next(iter(teachers.values())))
        compute_loss = self.student_forward(distiller, student, teachers)
        label = g.label(method)

        release_free_heap()
        reset_peak_rss()
        start = time.perf_counter()
        def train_stage(stage: str, checkpoint: Checkpoint) -> dict[str, Trained]:
            with self.curve_log(self.joint_job(method, seed).key, distiller, stage) as curves:
                return self.train_and_test_joint(
                    student, lambda b: compute_loss(b, stage), kind, p.student_train, seed,
                    f"{label} {kind} s{seed}" + (f" {stage}" if len(distiller.stages) > 1 else ""),
                    extra_modules=extra, trace=distiller.trace, select_best=distiller.selects_on_dev(stage),
                    checkpoint=checkpoint, curves=curves)

        stages = [self.resumable_stage(stage, checkpoint, student, extra, train_stage)
                  for stage, checkpoint in self.stage_checkpoints(self.joint_job(method, seed).key, distiller)]
        compute_loss.flush_outputs()
        train_seconds = (time.perf_counter() - start
                         + sum(next(iter(s.values())).fit.resumed_seconds for s in stages))  # one fit a stage
        records = {}
        for domain in g.domains if self.main else ():
            trained = [s[domain] for s in stages]
            if trained[-1].selection.state is not None:
                student.load_state_dict(trained[-1].selection.state)
            key = RunKey(g.suite.name, p.name, label, domain, seed, g.train_ratio)
            records[domain] = self.record(key, distiller, trained, student, extra,
                                          teachers[domain] if teachers else None, train_seconds, list(g.domains))
        return records

    def joint_job(self, method: type[Distiller], seed: int) -> Job:
        return next(j for j in grid_jobs(self.grid) if j.method is method and j.seed == seed)

    def record(self, key: RunKey, distiller: Distiller, stages: list[Trained], student, extra,
               teacher: StoredTeacher | None, train_seconds: float, trained_on: list[str]) -> dict[str, Any]:
        """Test metrics of the student as it stands (the domain's selected checkpoint) and the
        result record of one (method, domain, seed)."""
        g, p = self.grid, self.grid.preset
        data = self.data(key.domain)
        method = type(distiller)
        fits = [t.fit for t in stages]
        preds, golds = stages[-1].test_preds, stages[-1].test_golds

        eval_start = time.perf_counter()
        timing = self.teacher_timing(teacher)
        ctx = EvalContext(g.suite, key.domain, preds, golds, student, extra, latency=p.latency,
                          teacher_latency=timing["latency"], teacher_params=timing["params"],
                          cache=self._measured.setdefault(len(student.heads), {}))
        metrics = {name: spec.compute(ctx) for name, spec in self.registry.metrics.items() if spec.default}
        eval_seconds = time.perf_counter() - eval_start

        selection = stages[-1].selection
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
            # the preset as it ran (a setting changed by --set or a file is named after, not by, its base)
            "setting": {k: v for k, v in p.to_dict().items() if k not in ("name", "suite_overrides")},
            "machine": self.machine,
            "suite": {"name": g.suite.name, "version": g.suite.version, "domain": key.domain,
                      "train_ratio": g.train_ratio, "sizes": data.sizes, "fingerprint": data.fingerprint,
                      "left_out": data.left_out, "trained_on": trained_on,
                      # a files:DIR suite: the folder its name leaves out, and its labels (not fixed by a plugin)
                      **({"labels": list(g.suite.labels), "source": g.suite.source} if g.suite.source else {})},
            "method": {"name": method.name, "label": g.label(method), "plugin": plugin,
                       "config": _jsonable(vars(distiller.options)), "student_kind": distiller.student_kind,
                       "layer_map": None if (mapped := distiller.mapped_layers()) is None
                       else [[m, t] for m, t in sorted(mapped.items())]},
            "teacher": None if teacher is None else {
                "ref": p.teacher.ref, "key": teacher.key, "kind": distiller.teacher_kind, "params": timing["params"],
                "precision": g.teacher_precision, "cache": g.teacher_cache,
                "objective": objective.name if (objective := distiller.teacher_objective()) else None,
                "latency": timing["latency"],
                "dev_accuracy": teacher.info.get("dev_accuracy"),
                "test_accuracy": teacher.info.get("test_accuracy"),
                "reused": not teacher.trained_now},
            "student": {"ref": p.student.ref, "init": p.student.init,
                        "layers": list(p.student.layers) if p.student.layers else None},
            "train": {**p.student_train.to_dict(), "max_len": p.max_len, "steps": sum(f.steps for f in fits),
                      "examples": examples, "wall_seconds": round(wall, 3),
                      "examples_per_second": round(examples / wall, 2) if wall else None,
                      "selected_step": selection.step, "best_dev_accuracy": selection.dev_accuracy,
                      **convergence(fits[-1].history, fits[-1].steps, key.domain if len(trained_on) > 1 else None),
                      "history": [h for f in fits for h in f.history]},
            # per-example test predictions in the test set's row order, for paired significance tests
            "test": {"predictions": encode_labels(preds), "labels": encode_labels(golds)},
            "metrics": metrics,
            # teacher time spent by this run: its training when it was trained for it, else 0
            "timings": {"teacher_seconds": teacher.info.get("wall_seconds") if teacher and teacher.trained_now
                        else 0.0,
                        "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
                        # the process's peak RSS over this run's training and testing (per run on Linux)
                        "peak_rss_mib": round(peak_rss_mib())},
        }


def _trained_state(trained: Trained | dict[str, Trained]) -> dict[str, Any]:
    """A stage's outcome as checkpoint data: the fit's figures and each selection with its state."""
    per = trained if isinstance(trained, dict) else {"": trained}
    fit = next(iter(per.values())).fit
    return {"fit": {"steps": fit.steps, "examples": fit.examples, "wall_seconds": fit.wall_seconds,
                    "history": fit.history, "selections": {k: vars(v) for k, v in fit.selections.items()}},
            "domains": {d: {"selection": vars(t.selection), "test_preds": t.test_preds, "test_golds": t.test_golds}
                        for d, t in per.items()}}


def _trained_from_state(state: dict[str, Any]) -> Trained | dict[str, Trained]:
    """A stage's outcome as a killed process left it: all its training time was spent there."""
    f = state["fit"]
    fit = FitResult(f["steps"], f["examples"], f["wall_seconds"],
                    {k: Selection(**v) for k, v in f["selections"].items()}, f["history"],
                    resumed_seconds=f["wall_seconds"])
    per = {d: Trained(fit, Selection(**t["selection"]), t["test_preds"], t["test_golds"])
           for d, t in state["domains"].items()}
    return per[""] if list(per) == [""] else per


def _extras(modules, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A teacher objective's trained modules and tensors as named tensors for the store."""
    extras = {f"tensors.{k}": v for k, v in tensors.items()}
    if modules is not None:
        extras.update({f"modules.{k}": v for k, v in modules.state_dict().items()})
    return extras or None


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _inner_state(view, state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint taken through a MappedTeacher, keyed as the bare model's."""
    if not isinstance(view, MappedTeacher):
        return state
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
