"""`python -m bench profile`: where the time of a distillation step goes.

It runs the harness's own code, the step `run` takes (the runner's teacher and student forwards,
the method's loss, the training loop's backward and optimizer step), for a few steps on the
suite's real data, with the models of the preset or any others (`random:` shapes need no
training), and times each phase. Warm-up steps are run first and not counted. The teacher is not
trained: its speed does not depend on its weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.api import DataConfig, Distiller, SuiteSpec
from bench.data.batching import batch_examples
from bench.errors import BenchError
from bench.machine import CPU_FLAGS, kernels
from bench.models.classifier import build_classifier
from bench.models.precision import with_precision
from bench.presets import Preset
from bench.teachers.store import StoredTeacher
from bench.training.loop import fit
from bench.training.memory import peak_rss_mib

PHASES = ("data", "teacher", "student", "loss", "backward", "optimizer")


class PhaseTimer:
    """Seconds spent in each phase, from the step `start()` is called on (CUDA work is waited for
    at each phase's ends, so it lands in its own phase)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.counting = False
        self.started = self.ended = 0.0

    def start(self) -> None:
        self.sync()
        self.seconds.clear()
        self.counting, self.started = True, time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if not self.counting:
            yield
            return
        self.sync()
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.ended = time.perf_counter()
            self.seconds[phase] += self.ended - begin


class OpTimes:
    """torch's profiler over the counted steps: the operators that took the most of their time
    (`--ops N`), by self time (time in the operator, not in those it calls)."""

    def __init__(self, device: torch.device):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.running = False

    def start(self) -> None:
        if not self.running:
            self.profiler.start()
            self.running = True

    def stop(self) -> None:
        if self.running:
            self.profiler.stop()
            self.running = False

    def top(self, count: int, steps: int) -> list[dict[str, Any]]:
        """The `count` operators with the most self time: milliseconds a step, share of all (CPU)."""
        events = [e for e in self.profiler.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        return [{"op": e.key, "calls_per_step": e.count / steps, "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                 "share": e.self_cpu_time_total / total} for e in events[:count]]


class TimedLoader:
    """A training loader whose fetches are the `data` phase; the timer (and `ops`, if given)
    starts counting once `warmup` batches have been taken, and the examples of the counted
    batches are summed."""

    def __init__(self, loader, timer: PhaseTimer, warmup: int, ops: OpTimes | None = None):
        self.loader, self.timer, self.warmup, self.ops = loader, timer, warmup, ops
        self.taken = self.examples = self.tokens = 0  # tokens: padded positions fed to the models

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            if self.taken == self.warmup:
                self.timer.start()
                if self.ops is not None:
                    self.ops.start()
            with self.timer("data"):
                batch = next(batches, None)
            if batch is None:
                return
            self.taken += 1
            if self.taken > self.warmup:
                self.examples += batch_examples(batch)
                self.tokens += sum(b.input_ids.numel() for b in (batch.values() if isinstance(batch, dict)
                                                                 else [batch]) if hasattr(b, "input_ids"))
            yield batch


@dataclass
class Profile:
    method: str
    suite: str
    teacher: str
    student: str
    batch: str  # e.g. "5 domains x 4"
    max_len: int
    steps: int
    examples: int
    wall_seconds: float
    phases: dict[str, float]  # seconds per phase over the counted steps
    peak_memory_mb: float
    device: str
    threads: int
    teacher_precision: str = "fp32"
    student_precision: str = "fp32"
    agreement: dict[str, Any] | None = None  # a reduced-precision teacher against the fp32 one
    length_buckets: int = 0
    padded_tokens_per_example: float = 0.0
    # With the teacher-output cache: the same steps again, the teacher's outputs now read from the
    # cache the first pass filled (its seconds and phases); the headline rate is then over `epochs`
    # passes, the filling one included.
    cached_wall_seconds: float | None = None
    cached_phases: dict[str, float] | None = None
    epochs: int = 1
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)  # CPU model and flags, torch's kernels
    # With --ops N: the operators that took most of the counted steps' time in a pass of their own
    # under torch's profiler (teacher outputs from the cache, with it), by self time: op,
    # calls_per_step, ms_per_step, share
    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        if self.cached_wall_seconds is not None:
            seconds = self.wall_seconds + (self.epochs - 1) * self.cached_wall_seconds
            return self.epochs * self.examples / seconds if seconds else 0.0
        return self.examples / self.wall_seconds if self.wall_seconds else 0.0

    def lines(self) -> list[str]:
        ms = 1000 / max(self.steps, 1)
        other = max(self.wall_seconds - sum(self.phases.values()), 0.0)
        teacher = self.teacher + (f" ({self.teacher_precision})" if self.teacher_precision != "fp32" else "")
        student = self.student + (f" ({self.student_precision})" if self.student_precision != "fp32" else "")
        out = [f"{self.method} on {self.suite}: teacher {teacher}, student {student}, "
               f"batch {self.batch}, max length {self.max_len}, {self.device} ({self.threads} threads)",
               f"{self.steps} steps timed, {self.examples} examples, {self.wall_seconds:.2f} s; "
               f"{self.padded_tokens_per_example:.1f} padded tokens per example "
               + (f"(length buckets of {self.length_buckets} batches)" if self.length_buckets
                  else "(no length buckets)"),
               self._machine_line(),
               f"{'phase':<10} {'ms/step':>9} {'share':>6}"]
        for phase in (*PHASES, "other"):
            seconds = other if phase == "other" else self.phases.get(phase, 0.0)
            out.append(f"{phase:<10} {seconds * ms:>9.1f} {seconds / self.wall_seconds:>6.1%}")
        if self.cached_wall_seconds is not None:
            out.append(f"the same steps with the teacher's outputs from the cache the steps above filled: "
                       f"{self.cached_wall_seconds:.2f} s")
            for phase in PHASES:
                seconds = self.cached_phases.get(phase, 0.0)
                out.append(f"{phase:<10} {seconds * ms:>9.1f} {seconds / self.cached_wall_seconds:>6.1%}")
            out.append(f"filling pass {self.examples / self.wall_seconds:.2f} examples/s, cached passes "
                       f"{self.examples / self.cached_wall_seconds:.2f}; below: over {self.epochs} epochs, "
                       "the filling one included")
        if self.ops:
            out.append("operators by self time, the same steps again under torch's profiler"
                       + (" (teacher outputs from the cache):" if self.cached_wall_seconds is not None else ":"))
            out.append(f"{'operator':<40} {'calls/step':>10} {'ms/step':>9} {'share':>6}")
            out += [f"{o['op'][:40]:<40} {o['calls_per_step']:>10.1f} {o['ms_per_step']:>9.1f} {o['share']:>6.1%}"
                    for o in self.ops]
        if self.agreement:
            a = self.agreement
            p = a["precision"]
            out.append(f"{p} teacher against fp32 on {a['rows']} rows: argmax agreement {a['argmax_agreement']:.2%}, "
                       f"distillation loss {a[f'loss_{p}']:.6g} vs {a['loss_fp32']:.6g} "
                       f"(relative difference {a['loss_relative_difference']:.2e})")
        out += [f"peak memory: {self.peak_memory_mb:.0f} MiB "
                + ("(GPU, allocated)" if self.device == "cuda" else "(process resident set)"),
                f"examples/s: {self.examples_per_second:.2f}"]
        return out

    def _machine_line(self) -> str:
        m = self.machine
        flags = ("unknown" if "cpu_flags" not in m
                 else ", ".join(m["cpu_flags"]) or "none of " + ", ".join(CPU_FLAGS))
        return (f"machine: {m.get('gpu') or m.get('cpu_model') or m.get('cpu') or 'unknown CPU'} (flags: {flags}); "
                f"torch CPU kernels {m.get('cpu_capability')}, MKL {'yes' if m.get('mkl') else 'no'}, "
                f"oneDNN {'yes' if m.get('onednn') else 'no'}")


def profile(registry, method: type[Distiller], suite: SuiteSpec, preset: Preset, data: DataConfig,
            domains: list[str], batch_per_domain: int,
            max_len: int, steps: int, warmup: int = 2, seed: int = 1, teacher_precision: str = "fp32",
            student_precision: str = "fp32", agreement_batches: int = 8, length_buckets: int | None = None,
            teacher_cache: bool = False, epochs: int | None = None, ops: int = 0) -> Profile:
    """Time `steps` steps after `warmup`. `teacher_cache`: time them a second time, the teacher's
    outputs then read from the cache the first pass filled (a throwaway one), and rate them over
    `epochs` passes (default: the preset's), the filling pass included. `ops`: then run the same
    steps once more under torch's profiler (which slows what it watches, so in a pass of its own)
    and list that many operators by self time."""
    import tempfile

    from bench.grid.runner import Runner
    from bench.grid.spec import Grid

    preset = preset.for_suite(suite.name)
    epochs = preset.student_train.epochs if epochs is None else epochs
    _check_counts(steps, warmup, batch_per_domain, length_buckets, epochs, ops)
    train = dataclasses.replace(preset.student_train, batch_size=batch_per_domain, max_steps=warmup + steps,
                                eval_every=10**9, epochs=10**6)
    if length_buckets is None:
        length_buckets = train.length_buckets
    preset = dataclasses.replace(preset, max_len=max_len, student_train=train)
    grid = Grid(suite=suite, preset=preset, methods=[method], domains=domains, seeds=[seed], data=data,
                results_dir="unused", checkpoint_every=0, teacher_precision=teacher_precision,
                student_precision=student_precision,
                teacher_cache="use" if teacher_cache else "off")
    runner = Runner(grid, registry)
    # its teacher may be random: never reuse its outputs, never leave them behind
    scratch = tempfile.TemporaryDirectory(prefix="bench-profile-") if teacher_cache else None
    if scratch is not None:
        runner.teachers.outputs_root = Path(scratch.name)
    distiller = grid.distiller(method)
    if distiller.teacher_objective() is not None:
        raise BenchError(f"{method.name} trains its teacher with its own objective, which profile does not run",
                         "profile a method whose teacher is trained on labels (e.g. kd, tinybert, hrkd)")
    kind = distiller.student_kind
    device = runner.accelerator.device
    student_model, teachers, extra = _models(distiller, preset, suite, domains, seed, device)

    timer = PhaseTimer(device)
    compute_loss = runner.student_forward(distiller, student_model, teachers, timer=timer)
    loader = _train_loader(runner, kind, domains[0], batch_per_domain, seed, length_buckets)
    if teacher_cache or ops:  # every pass takes the same batches
        loader = list(itertools.islice(iter(loader), warmup + steps))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    student_model.to(device)
    stage = distiller.stages[0]

    def timed_pass(label: str, op_times: OpTimes | None = None) -> tuple[TimedLoader, float, dict[str, float]]:
        timed = TimedLoader(loader, timer, warmup, op_times)
        fit(student_model, timed, lambda b: compute_loss(b, stage), lambda: 0.0, train, runner.accelerator,
            extra_modules=extra, desc=f"profile {method.name}{label}", select_best=False, timer=timer)
        return timed, timer.ended - timer.started, dict(timer.seconds)

    timed, first_wall, first_phases = timed_pass("")
    cached_wall = cached_phases = None
    if teacher_cache:
        _, cached_wall, cached_phases = timed_pass(" (cached)")
    op_times = OpTimes(device) if ops else None
    if op_times is not None:
        timed_pass(" (operators)", op_times)
        op_times.stop()
    compute_loss.flush_outputs()
    if scratch is not None:
        scratch.cleanup()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else peak_rss_mib())
    agreement = None
    if teachers and teacher_precision != "fp32":
        sample = list(itertools.islice(iter(loader), agreement_batches))
        agreement = precision_agreement(runner, distiller, student_model, teachers, sample, stage, teacher_precision)
    return Profile(method=method.name, suite=suite.name, teacher=preset.teacher.describe() if teachers else "none",
                   student=preset.student.describe(), batch=_batch(kind, len(domains), batch_per_domain),
                   max_len=max_len, steps=steps, examples=timed.examples, wall_seconds=first_wall,
                   phases=first_phases, peak_memory_mb=peak, device=device.type,
                   threads=torch.get_num_threads(), teacher_precision=teacher_precision,
                   student_precision=student_precision, agreement=agreement,
                   length_buckets=length_buckets, padded_tokens_per_example=timed.tokens / max(timed.examples, 1),
                   cached_wall_seconds=cached_wall, cached_phases=cached_phases, epochs=epochs if teacher_cache else 1,
                   machine={**runner.machine, **kernels()}, ops=op_times.top(ops, steps) if op_times else [])


def _check_counts(steps: int, warmup: int, batch_per_domain: int, length_buckets: int | None, epochs: int,
                  ops: int) -> None:
    if steps < 1 or warmup < 0 or batch_per_domain < 1 or (length_buckets or 0) < 0 or epochs < 1 or ops < 0:
        raise BenchError(f"cannot profile {steps} steps after {warmup} warm-up steps of batch {batch_per_domain}"
                         + (f" with {length_buckets} length buckets" if length_buckets is not None else "")
                         + f" over {epochs} epochs" + (f", listing {ops} operators" if ops < 0 else ""),
                         "give --steps >= 1, --warmup >= 0, --batch-per-domain >= 1, --length-buckets >= 0, "
                         "--epochs >= 1 and --ops >= 0")


def _models(distiller: Distiller, preset: Preset, suite: SuiteSpec, domains: list[str], seed: int, device):
    """The student (seeded), the teachers (one model for every domain: its weights do not change the
    time) and the method's extra modules."""
    torch.manual_seed(seed)
    heads = len(domains) if distiller.student_kind == "multi" else 1
    student_model = build_classifier(preset.student, len(suite.labels), heads)
    teachers = None
    if distiller.teacher_kind:
        heads = len(domains) if distiller.teacher_kind == "multi" else 1
        model = build_classifier(preset.teacher, len(suite.labels), heads).to(device).eval()
        teachers = {d: StoredTeacher("profile", model, {}, False, None) for d in domains}
    extra = distiller.extra_modules(model.config if teachers else None, student_model.config)
    return student_model, teachers, extra


def _train_loader(runner, kind: str, domain: str, batch_per_domain: int, seed: int, length_buckets: int):
    """The training batches a run of the student's kind takes: one domain's, or all the grid's."""
    if kind != "single":
        return runner.trainer.joint_train_loader(kind, batch_per_domain, seed, length_buckets)
    loader = runner.trainer.train_loader(runner.ctx.data(domain), runner.ctx.student_tokenizer, batch_per_domain,
                                         seed, length_buckets)
    return runner.accelerator.prepare(loader)


@torch.no_grad()
def precision_agreement(runner, distiller: Distiller, student, teachers: dict[str, StoredTeacher], batches: list,
                        stage: str, precision: str) -> dict[str, Any]:
    """How a teacher at `precision` differs from the fp32 one on `batches`: the share of rows whose
    argmax agrees, and the method's distillation loss (student in eval mode, same for both)."""
    needs = distiller.needs
    full = {d: runner.ctx.teacher_view(t.model) for d, t in teachers.items()}
    reduced = {d: with_precision(view, precision) for d, view in full.items()}
    student.eval()
    agree = rows = 0
    losses = {"fp32": 0.0, precision: 0.0}
    for batch in batches:
        joint = isinstance(batch, dict)
        subs = batch if joint else {next(iter(full)): batch}
        student_out = {d: student(b, needs) for d, b in subs.items()}
        for name, views in (("fp32", full), (precision, reduced)):
            teacher_out = {d: views[d](b, needs) for d, b in subs.items()}
            if name == "fp32":
                reference = teacher_out
            else:
                for d in subs:
                    agree += int((teacher_out[d].logits.argmax(-1) == reference[d].logits.argmax(-1)).sum())
                    rows += len(subs[d])
            parts = (distiller.multi_domain_loss(batch, student_out, teacher_out, stage) if joint else
                     distiller.loss(batch, *student_out.values(), *teacher_out.values(), stage))
            losses[name] += float(sum(parts.values()))
    return {"precision": precision, "rows": rows, "argmax_agreement": agree / max(rows, 1),
            "loss_fp32": losses["fp32"] / len(batches), f"loss_{precision}": losses[precision] / len(batches),
            "loss_relative_difference": abs(losses[precision] - losses["fp32"]) / max(abs(losses["fp32"]), 1e-12)}


def _batch(kind: str, domains: int, per_domain: int) -> str:
    return f"{per_domain}" if kind == "single" else f"{domains} domains x {per_domain}"


def as_dict(result: Profile) -> dict[str, Any]:
    return {**dataclasses.asdict(result), "examples_per_second": result.examples_per_second}
