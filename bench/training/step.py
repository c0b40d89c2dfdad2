"""A student's training step as the runner builds it: the teacher's outputs (read through the
teacher-output cache where the method allows), the student's (under bf16 autocast when asked),
then the method's loss."""

from __future__ import annotations

from typing import Any

import torch

from bench.api import Distiller
from bench.models.precision import as_fp32, autocast
from bench.training.loop import untimed


class StudentStep:
    """One step's loss, `step(batch, stage)`: the teacher's outputs (`views`, one per domain, or
    None without a teacher), the student's, then the method's loss. `flush_outputs()` writes the
    teacher outputs the last batch read for the first time (call it after training).
    `precision` "bf16": the student's forward under bf16 autocast, its outputs handed to the loss
    in fp32 (bench.models.precision)."""

    def __init__(self, distiller: Distiller, student, views: dict[str, Any] | None, timer=untimed,
                 precision: str = "fp32"):
        self.distiller, self.student, self.views, self.timer = distiller, student, views, timer
        self.precision = precision
        # views that read through the teacher-output cache (bench.teachers.outputs) hold new outputs to write
        self.cached = [v for v in views.values() if callable(getattr(v, "flush", None))] if views else []

    def flush_outputs(self) -> None:
        for view in self.cached:
            view.flush()

    def __call__(self, batch, stage: str) -> dict[str, torch.Tensor]:
        # New teacher outputs are written before the student's forward: their copies (one per
        # chunk, one for the file) would otherwise add to the memory peak the student's graph makes
        # before the backward. A cached teacher fetches what earlier losses read when it is called;
        # only what a loss reads for the first time is kept until the next batch comes.
        self.flush_outputs()
        distiller, needs, timer = self.distiller, self.distiller.needs, self.timer
        joint = isinstance(batch, dict)
        teacher_out = None
        if self.views:
            with timer("teacher"), torch.no_grad():
                teacher_out = ({d: self.views[d](b, needs) for d, b in batch.items()} if joint
                               else next(iter(self.views.values()))(batch, needs))  # its domain's, or mix
                self.flush_outputs()
        with timer("student"):
            student_out = ({d: self.forward(b) for d, b in batch.items()} if joint else self.forward(batch))
        with timer("loss"):
            return (distiller.multi_domain_loss(batch, student_out, teacher_out, stage) if joint
                    else distiller.loss(batch, student_out, teacher_out, stage))

    def forward(self, batch):
        if self.precision == "fp32":
            return self.student(batch, self.distiller.needs)
        with autocast(self.precision, batch.input_ids.device.type):
            out = self.student(batch, self.distiller.needs)
        return as_fp32(out)
