"""A grid of runs: every (method, domain, seed) of one suite under one preset, and the options
that name its runs (`label`, `keys`). What the parts that run it share is a GridContext
(bench/training/context.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.api import STUDENT_KINDS, TEACHER_KINDS, DataConfig, Distiller, SuiteSpec
from bench.errors import BenchError, unknown_name
from bench.models.precision import check_precision
from bench.presets import Preset
from bench.results.records import RunKey
from bench.teachers.outputs import MODES as CACHE_MODES
from bench.training.tracking import check_trackers


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
    teacher_precision: str = "fp32"  # of the teacher's forwards while distilling (bench.models.precision)
    student_precision: str = "fp32"  # of the student's training forwards (bench.models.precision)
    teacher_cache: str = "use"  # off, use or refresh the teacher-output cache (bench.teachers.outputs)
    log_with: tuple[str, ...] = ()  # experiment trackers of the students' curves (bench.training.tracking)

    def __post_init__(self):
        self.preset = self.preset.for_suite(self.suite.name)
        check_precision(self.teacher_precision)
        check_precision(self.student_precision, "student")
        check_trackers(self.log_with)
        if self.teacher_cache not in CACHE_MODES:
            raise unknown_name("teacher cache mode", self.teacher_cache, CACHE_MODES,
                               hint=f"set teacher_cache (--teacher-cache) to one of {', '.join(CACHE_MODES)}")
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
        A method distilled from a bf16 teacher is `kd@bf16`, a student trained under bf16 autocast
        `kd@student-bf16` (both: `kd@bf16@student-bf16`)."""
        label = method.name
        given = self.method_options.get(method.name)
        if given:
            options, defaults = vars(method.make_options(given)), vars(method.Options())
            changed = {k: options[k] for k in sorted(given) if options[k] != defaults[k]}
            if changed:
                label += f"[{','.join(f'{k}={json.dumps(jsonable(v))}' for k, v in changed.items())}]"
        if self.teacher_precision != "fp32" and self.distiller(method).teacher_kind:
            label += f"@{self.teacher_precision}"
        if self.student_precision != "fp32":
            label += f"@student-{self.student_precision}"
        return label

    def keys(self) -> list[tuple[RunKey, type[Distiller]]]:
        return [(RunKey(self.suite.name, self.preset.name, self.label(m), d, s, self.train_ratio), m)
                for d in self.domains for m in self.methods for s in self.seeds]


def jsonable(value: Any) -> Any:
    """Method options as JSON: containers kept, anything else not JSON by its str."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
