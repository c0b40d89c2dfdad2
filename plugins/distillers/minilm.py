"""MiniLM deep self-attention distillation (Wang, Wei, Dong, Bao, Yang and Zhou 2020, "MiniLM: Deep
Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS).

The student's last layer learns from the teacher's last layer (for a student cut from its teacher,
from the teacher layer it starts as a copy of, `Distiller.student_copies`, so that it starts at its
target as the papers' general-distilled students do):
- attention transfer L_AT: KL(A_t || A_s) of each head's attention distribution, per row (query),
- value relation L_VR: VR = softmax(V V^T / sqrt(d_head)) per head, KL(VR_t || VR_s) per row,
each averaged over heads and rows; L = L_AT + L_VR. Padded keys get no probability and padded
query rows do not count (the averages run over the rows of real tokens). The attention
probabilities are taken in log space from the captured scores, which is what they are the
softmax of.

The authors released checkpoints and fine-tuning scripts (microsoft/unilm, minilm/), not their
distillation code, so this follows the paper. There MiniLM is task-agnostic: distil, then
fine-tune on labels. Here the default is one stage, L_AT + L_VR + SCE(zs, zt; t) with t = 1 (the
prediction loss of the TinyBERT-KD row): a stage without it leaves the classifier untrained, so
the harness's best-on-dev checkpoint of that stage would be picked on chance-level accuracy, and
with it every intermediate-layer baseline gets the same single-stage budget and prediction
signal. `prediction="finetune"` runs the paper's order instead: stage "distill" (L_AT + L_VR,
which keeps its last weights, there being no trained classifier to select on), then stage
"finetune" (cross-entropy on labels).

Different head counts: MiniLMv2's relation heads (Wang et al. 2021, "MiniLMv2: Multi-Head
Self-Attention Relation Distillation") concatenate the heads and re-split them into R relation
heads. `relation_heads=R` does this for the value relation. Attention transfer needs per-head
attention maps and so equal head counts; MiniLMv2 replaces it with query-query and key-key
relations, which need queries and keys that the harness does not capture. With different head
counts the distiller therefore refuses to build unless `relation_heads` is set and
`attention_transfer` is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import relation_kl, soft_cross_entropy, value_relation

PREDICTION_STAGES = {"kd": ("main",), "finetune": ("distill", "finetune")}


class MiniLM(Distiller):
    name = "minilm"
    description = "MiniLM: last-layer attention and value-relation KL + soft CE on logits"
    needs = frozenset({"logits", "attentions", "values"})
    reads_teacher_padding = False  # relation_kl drops padded keys and query rows
    teacher_kind = "single"

    @dataclass
    class Options:
        prediction: str = "kd"  # "kd": + SCE in one stage; "finetune": distil, then CE on labels
        temperature: float = 1.0
        attention_transfer: bool = True
        relation_heads: int = 0  # 0: the models' own heads (MiniLM); R > 0: R relation heads (MiniLMv2)

        def __post_init__(self):
            if self.prediction not in PREDICTION_STAGES:
                raise BenchError(f"minilm prediction {self.prediction!r} is not known",
                                 "use 'kd' (soft CE on the teacher's logits, one stage) or 'finetune' "
                                 "(distil, then fine-tune on labels)")
            if self.temperature <= 0:
                raise BenchError(f"minilm temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (1 by default)")
            if self.relation_heads < 0:
                raise BenchError(f"minilm relation_heads must not be negative, got {self.relation_heads}",
                                 "use 0 (one relation per attention head) or a number of relation heads")

    def __init__(self, options=None):
        super().__init__(options)
        self.teacher_layer: int | None = None  # set with the student layer in extra_modules
        self.student_layer: int | None = None
        self.stages = PREDICTION_STAGES[self.options.prediction]

    def extra_modules(self, teacher_config, student_config):
        o = self.options
        heads_t, heads_s = teacher_config.num_attention_heads, student_config.num_attention_heads
        if heads_t != heads_s and (o.attention_transfer or not o.relation_heads):
            raise BenchError(
                f"minilm compares attention heads one to one, but the teacher has {heads_t} and the student {heads_s}",
                "set the minilm options relation_heads (MiniLMv2 relation heads, e.g. "
                f"{_common_divisor(teacher_config.hidden_size, student_config.hidden_size)}) and "
                "attention_transfer false, or pick models with equal head counts")
        for side, config in (("teacher", teacher_config), ("student", student_config)):
            if o.relation_heads and config.hidden_size % o.relation_heads:
                raise BenchError(
                    f"minilm relation_heads {o.relation_heads} does not divide the {side}'s width {config.hidden_size}",
                    "pick a number of relation heads that divides both widths, e.g. "
                    f"{_common_divisor(teacher_config.hidden_size, student_config.hidden_size)}")
        copies = self.student_copies
        last = copies[-1] if copies and len(copies) == student_config.num_hidden_layers else None
        self.teacher_layer = last if last and last <= teacher_config.num_hidden_layers \
            else teacher_config.num_hidden_layers
        self.student_layer = student_config.num_hidden_layers
        return None

    def mapped_layers(self):
        """The student's last layer and the teacher layer it learns from."""
        return None if self.teacher_layer is None else {self.student_layer: self.teacher_layer}

    def distill_losses(self, batch, student_out, teacher_out):
        """L_AT and L_VR on the student's last layer and its teacher layer."""
        mask, heads, g = batch.attention_mask, self.options.relation_heads, self.teacher_layer - 1
        parts = {}
        if self.options.attention_transfer:
            parts["attention"] = relation_kl(teacher_out.attention_scores[g], student_out.attention_scores[-1], mask)
        parts["value_relation"] = relation_kl(value_relation(teacher_out.values[g], heads),
                                              value_relation(student_out.values[-1], heads), mask)
        return parts

    def selects_on_dev(self, stage):
        return stage != "distill"

    def loss(self, batch, student_out, teacher_out, stage):
        if stage == "finetune":
            return {"ce": F.cross_entropy(student_out.logits, batch.labels)}
        parts = self.distill_losses(batch, student_out, teacher_out)
        if stage == "main":
            parts["prediction"] = soft_cross_entropy(student_out.logits, teacher_out.logits, self.options.temperature)
        return parts


def _common_divisor(a: int, b: int) -> int:
    """A relation-head count to suggest: the largest of 12, 8, 6, 4, 2 that divides both widths."""
    return next((r for r in (12, 8, 6, 4, 2) if a % r == 0 and b % r == 0), 1)


@hookimpl
def bench_register_distillers(register):
    register(MiniLM)
