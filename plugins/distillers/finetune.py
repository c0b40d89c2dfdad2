"""Fine-tuning only: cross-entropy on the labels, no teacher (the paper's "BERT-s" rows).

This is the `single` regime: one model per domain, trained on that domain alone.
"""

from __future__ import annotations

import torch.nn.functional as F

from bench.api import Distiller
from bench.hookspecs import hookimpl


class FineTune(Distiller):
    name = "finetune"
    description = "fine-tune the student on labels alone, one model per domain (no teacher)"
    needs = frozenset({"logits"})
    teacher_kind = None

    def loss(self, batch, student_out, teacher_out, stage):
        return {"ce": F.cross_entropy(student_out.logits, batch.labels)}


@hookimpl
def bench_register_distillers(register):
    register(FineTune)
