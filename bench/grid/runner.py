"""Running a grid: its jobs scheduled, each trained, tested and recorded.

The grid's story reads top to bottom here: the jobs of this shard that have no result yet
(`pending`), each taken under its lock (`run`), trained with its teachers (`run_one`: a
per-domain student, one result; `run_joint`: a mix or multi student trained once on all the
grid's domains, one result per domain, multi with each domain's own best-on-dev checkpoint) and
recorded. The parts it calls own the rest: grid/spec.py (what to run), training/context.py
(what the parts share), teachers/supply.py (teachers from the store, trained there once; their
output caches), training/trainer.py (fit, select on dev, test), training/stages.py (a student's
stages with checkpoints and resume), grid/recording.py (a run's result record).

With several processes, a run ends on every process at once, also when one raised in work that
only it does (the main process's metrics and writes): each run (`Runner.attempt`), stage and
teacher ends with one all-reduce of whether any process raised (`agree_on_failure`), so the run
is recorded as failed and the grid goes on, with no process left waiting at a collective.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.api import Distiller, TeacherExtras, TeacherObjective
from bench.errors import BenchError
from bench.grid.failures import Failure, record_failure
from bench.grid.jobs import Job, grid_jobs, shard_jobs
from bench.grid.recording import Recorder
from bench.grid.spec import Grid
from bench.locks import FileLock
from bench.machine import machine_info
from bench.models.classifier import build_classifier, load_config, misaligned_layers
from bench.models.precision import check_native, with_precision
from bench.plugins import Registry
from bench.results.records import RunKey, recorded_rates
from bench.teachers.store import StoredTeacher
from bench.teachers.supply import TeacherSupply
from bench.training.agreement import agree_on_failure
from bench.training.checkpoint import Checkpoint, remove_folder
from bench.training.context import GridContext
from bench.training.loop import make_accelerator, untimed
from bench.training.memory import release_free_heap, reset_peak_rss
from bench.training.stages import Stages
from bench.training.step import StudentStep
from bench.training.trainer import Trained, Trainer

log = logging.getLogger(__name__)


class Runner:
    """A grid's run on this process (one of several under `accelerate launch`)."""

    def __init__(self, grid: Grid, registry: Registry):
        self.grid = grid
        self.registry = registry
        self.accelerator = make_accelerator()
        check_native(grid.teacher_precision, self.accelerator.device)
        check_native(grid.student_precision, self.accelerator.device, option="--student-precision")
        processes = self.accelerator.num_processes
        for what, config in (("teacher", grid.preset.teacher_train), ("student", grid.preset.student_train)):
            if config.batch_size % processes:
                raise BenchError(f"the {grid.preset.name} preset's {what} batch of {config.batch_size} does not "
                                 f"split over {processes} processes",
                                 "launch a number of processes that divides it (each takes an equal part)")
        self.ctx = GridContext(grid, self.accelerator)
        self.trainer = Trainer(self.ctx)
        self.teachers = TeacherSupply(self.ctx, self.trainer)
        self.stages = Stages(self.ctx)
        self.machine = machine_info(registry.pm, world_size=self.accelerator.num_processes)
        self.recorder = Recorder(self.ctx, registry, self.teachers, self.machine)
        self.failures: list[Failure] = []  # runs that failed, recorded under <results>/.failed/

    @property
    def main(self) -> bool:
        return self.ctx.main

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
        results dir), or whose teacher another process is training, is looked at again at the end,
        after the jobs this process can do now; a job that fails is recorded under `.failed/`
        (`self.failures`) and the others go on."""
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
            return self.ctx.agree(all(n is not None and n != before for n, before in zip(now, stamps[job])))

        written, deferred = [], []
        for job in todo:
            lock = FileLock(job.lock_path(self.grid.results_dir))
            if not self.ctx.agree(lock.acquire(blocking=False) if self.main else None):
                log.info("%s is running in another process: coming back to it at the end", job.describe())
                deferred.append(job)
                continue
            try:
                if done_elsewhere(job):
                    log.info("%s was finished by another process", job.describe())
                    continue
                if self.ctx.agree(self.teacher_elsewhere(job) if self.main else None):
                    log.info("%s: another process is training its teacher: coming back to it at the end",
                             job.describe())
                    deferred.append(job)
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
        self.teachers.keep_only(self.grid.distiller(job.method), [k.domain for k in job.keys])
        records = self.run_joint(job.method, job.seed) if job.joint else {
            job.key.domain: self.run_one(job.key, self.grid.distiller(job.method), self.teacher_for(job))}
        written = [self.recorder.write(key, records.get(key.domain)) for key in job.keys]
        if self.main:
            remove_folder(self.stages.checkpoint_folder(job.key))
        return written

    def teacher_elsewhere(self, job: Job) -> bool:
        """Whether another process is training a teacher `job` needs (with several workers, each
        waiting for the other's teacher would leave a core idle for the length of a training)."""
        distiller = self.grid.distiller(job.method)
        if not distiller.teacher_kind:
            return False
        domains = list(self.grid.domains) if job.joint else [job.key.domain]
        return self.teachers.training_elsewhere(distiller.teacher_kind, domains, distiller.teacher_objective())

    def teacher_for(self, job: Job) -> StoredTeacher | None:
        distiller = self.grid.distiller(job.method)
        if not distiller.teacher_kind:
            return None
        domain = job.key.domain
        return self.teachers.get(distiller.teacher_kind, [domain], distiller.teacher_objective())[domain]

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
        work: list[tuple[str, int]] = []  # (method label, examples) of each student training

        def plan_teacher(kind: str, domains: list[str], objective: TeacherObjective | None) -> None:
            nonlocal total
            key, stored = self.teachers.stored_key(self.teachers.identity(kind, domains[0], objective))
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
            work.append((g.label(job.method), examples))
            where = job.key.domain if not job.joint else f"{','.join(g.domains)} ({kind} student)"
            lines.append(f"{where}: {job.method.name} seed {job.seed}: {examples} examples"
                         + (" (+ teacher forwards)" if distiller.teacher_kind else ""))
        lines.append(f"examples to process in all: {total}")
        return lines + self._estimate(work)

    def _estimate(self, work: list[tuple[str, int]]) -> list[str]:
        """The students' training time at the rates this results dir's runs of the suite and preset
        recorded (each method's median; on the machines and loads those ran on): nothing without them."""
        g = self.grid
        rates = recorded_rates(g.results_dir, g.suite.name, g.preset.name, g.train_ratio)
        seconds = [examples / rates[label] for label, examples in work if label in rates]
        if not seconds:
            return []
        hours = sum(seconds) / 3600
        unknown = len(work) - len(seconds)
        return [f"students: about {hours:.1f} worker-hours at the rates of the runs in {g.results_dir} "
                f"(each method's median examples/s)"
                + (f"; {unknown} training(s) of methods without a run there not counted" if unknown else "")
                + "; teachers not counted"]

    def epoch_examples(self, kind: str, domains: Sequence[str]) -> int:
        """Rows one epoch trains on: a domain's; the union's (mix); the largest domain's times
        the number of domains (multi: every step takes a sub-batch of each)."""
        sizes = [self.ctx.data(d).sizes["train"] for d in domains]
        return max(sizes) * len(sizes) if kind == "multi" else sum(sizes)

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
        views = ({d: with_precision(self.ctx.teacher_view(t.model), self.grid.teacher_precision)
                  for d, t in teachers.items()} if teachers else None)
        needs = distiller.needs
        if views and self.grid.teacher_cache != "off" and (needs <= {"logits"} or not distiller.reads_teacher_padding):
            views = {d: self.teachers.cached_view(view, teachers, d if distiller.student_kind != "mix" else None)
                     for d, view in views.items()}
        return StudentStep(distiller, student, views, timer, self.grid.student_precision)

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
            with self.stages.curve_log(key, distiller, stage) as curves:
                return self.trainer.train_and_test(
                    student, lambda b: compute_loss(b, stage), self.ctx.data(key.domain), self.ctx.student_tokenizer,
                    p.student_train, key.seed,
                    f"{key.method} {key.domain} s{key.seed}" + (f" {stage}" if len(distiller.stages) > 1 else ""),
                    extra_modules=extra, trace=distiller.trace, select_best=distiller.selects_on_dev(stage),
                    checkpoint=checkpoint, curves=curves)

        stages = [self.stages.resumable(stage, checkpoint, student, extra, train_stage)
                  for stage, checkpoint in self.stages.checkpoints(key, distiller)]
        compute_loss.flush_outputs()
        train_seconds = time.perf_counter() - start + sum(t.fit.resumed_seconds for t in stages)
        if not self.main:  # the main process writes the result (and times the student alone)
            return {}
        return self.recorder.record(key, distiller, stages, student, extra, teacher, train_seconds, [key.domain])

    def run_joint(self, method: type[Distiller], seed: int) -> dict[str, dict[str, Any]]:
        """Train one mix or multi student on all the grid's domains; one result per domain."""
        from accelerate.utils import set_seed

        g, p = self.grid, self.grid.preset
        distiller = g.distiller(method)
        kind = distiller.student_kind
        teachers = None
        if distiller.teacher_kind:
            teachers = self.teachers.get(distiller.teacher_kind, g.domains, distiller.teacher_objective())
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
            with self.stages.curve_log(self.joint_job(method, seed).key, distiller, stage) as curves:
                return self.trainer.train_and_test_joint(
                    student, lambda b: compute_loss(b, stage), kind, p.student_train, seed,
                    f"{label} {kind} s{seed}" + (f" {stage}" if len(distiller.stages) > 1 else ""),
                    extra_modules=extra, trace=distiller.trace, select_best=distiller.selects_on_dev(stage),
                    checkpoint=checkpoint, curves=curves)

        stages = [self.stages.resumable(stage, checkpoint, student, extra, train_stage)
                  for stage, checkpoint in self.stages.checkpoints(self.joint_job(method, seed).key, distiller)]
        compute_loss.flush_outputs()
        train_seconds = (time.perf_counter() - start
                         + sum(next(iter(s.values())).fit.resumed_seconds for s in stages))  # one fit a stage
        records = {}
        for domain in g.domains if self.main else ():
            trained = [s[domain] for s in stages]
            if trained[-1].selection.state is not None:
                student.load_state_dict(trained[-1].selection.state)
            key = RunKey(g.suite.name, p.name, label, domain, seed, g.train_ratio)
            records[domain] = self.recorder.record(key, distiller, trained, student, extra,
                                          teachers[domain] if teachers else None, train_seconds, list(g.domains))
        return records

    def joint_job(self, method: type[Distiller], seed: int) -> Job:
        return next(j for j in grid_jobs(self.grid) if j.method is method and j.seed == seed)

