"""Vanilla knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge
in a Neural Network").

L = alpha * T^2 * KL(softmax(zt/T) || softmax(zs/T)) + (1 - alpha) * CE(zs, y),
with the KL summed over classes and averaged over examples; T = 2 and alpha = 0.5 by default.
The teacher is fine-tuned on the same domain by the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import kd_kl


class KD(Distiller):
    name = "kd"
    description = "Hinton KD: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE"
    needs = frozenset({"logits"})
    teacher_kind = "single"

    @dataclass
    class Options:
        temperature: float = 2.0
        alpha: float = 0.5

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"kd temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (2.0 by default)")
            if not 0.0 <= self.alpha <= 1.0:
                raise BenchError(f"kd alpha must lie in [0, 1], got {self.alpha}",
                                 "set alpha between 0 (labels only) and 1 (teacher only)")

    def loss(self, batch, student_out, teacher_out, stage):
        a, t = self.options.alpha, self.options.temperature
        return {
            "kd": a * kd_kl(student_out.logits, teacher_out.logits, t),
            "ce": (1 - a) * F.cross_entropy(student_out.logits, batch.labels),
        }


@hookimpl
def bench_register_distillers(register):
    register(KD)
