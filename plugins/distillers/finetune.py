"""Fine-tuning only: cross-entropy on the labels, no teacher (the "BERT-s" rows of the HRKD and
Meta-KD papers), in their three data regimes:

- `finetune` (single): one model per domain, trained on that domain alone;
- `finetune-mix`: one model on the union of the domains (batches of batch size x domains rows
  drawn from the shuffled union), one checkpoint chosen on the mean dev accuracy over domains;
- `finetune-mtl`: multi-task, a shared encoder with one head per domain, each step a sub-batch of
  every domain, the loss the plain sum of the domains' CE (as HRKD's multi-domain teacher is
  trained); each domain keeps its best dev checkpoint.
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


class FineTuneMix(FineTune):
    name = "finetune-mix"
    description = "fine-tune one student on the union of the domains (no teacher)"
    student_kind = "mix"


class FineTuneMTL(FineTune):
    name = "finetune-mtl"
    description = "fine-tune a shared encoder with a head per domain on every domain at once (no teacher)"
    student_kind = "multi"


@hookimpl
def bench_register_distillers(register):
    register(FineTune)
    register(FineTuneMix)
    register(FineTuneMTL)
