"""Regression on logits (Ba and Caruana 2014, "Do Deep Nets Really Need to be Deep?", NeurIPS).

The student learns to reproduce the teacher's logits z_t (the inputs of the softmax, which keep
what the probabilities squash) with a squared error, mixed with the usual hard-label term:

    L = alpha * MSE(z_s, z_t) + (1 - alpha) * CE(z_s, y)

MSE is the mean over examples and classes (`F.mse_loss`); the paper's 1/2 * sum over classes is
C/2 times that for C classes (the same for two). alpha = 1 by default, the paper's pure logit
regression; alpha = 0 is fine-tuning on the labels with a teacher that goes unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl


class LogitMSE(Distiller):
    name = "logit-mse"
    description = "Ba & Caruana: alpha * MSE(student logits, teacher logits) + (1 - alpha) * CE"
    needs = frozenset({"logits"})
    teacher_kind = "single"

    @dataclass
    class Options:
        alpha: float = 1.0  # weight of the logit MSE; 1 - alpha goes to the label CE

        def __post_init__(self):
            if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
                raise BenchError(f"logit-mse alpha must lie in [0, 1], got {self.alpha}",
                                 "set alpha between 0 (labels only) and 1 (teacher logits only, the default)")

    def loss(self, batch, student_out, teacher_out, stage):
        a = self.options.alpha
        return {
            "mse": a * F.mse_loss(student_out.logits, teacher_out.logits),
            "ce": (1 - a) * F.cross_entropy(student_out.logits, batch.labels),
        }


@hookimpl
def bench_register_distillers(register):
    register(LogitMSE)
