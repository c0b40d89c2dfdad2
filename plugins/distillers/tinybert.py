"""TinyBERT task distillation (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
Understanding", Findings of EMNLP; code: huawei-noah/Pretrained-Language-Model, TinyBERT/).

Student layer m = 1..M learns from teacher layer g(m) = m * N / M; layer 0 (the embeddings) from 0:
- embedding: MSE(W_0 E_s, E_t)
- attention, per mapped layer: MSE(A_s,m, A_t,g(m)) on the raw pre-softmax scores, entries <= -100
  (the additive mask) set to 0 on both sides first (`torch.where(x <= -1e2, 0, x)` in the code)
- hidden, per mapped layer: MSE(W_m H_s,m, H_t,g(m)), W_m trained projections (student width ->
  teacher width), one per layer including the embeddings; training-only, never in the student
- prediction: SCE(zs, zt; t) = mean over elements of -softmax(zt/t) * log_softmax(zs/t), t = 1
Every MSE is a mean over all elements; the parts are summed over layers with weight 1.

Default, as the HRKD code (cheneydon/hrkd, finetune_domain.py) runs the paper's "TinyBERT-KD" row:
one stage summing all four parts, one projection per layer (`fit_denses`). Options:
- `two_stage`: the TinyBERT reference's schedule, stage "intermediate" (embedding, attention,
  hidden) then stage "prediction" (SCE only), each trained for the preset's epochs (the reference
  runs 10 intermediate and 3 prediction epochs; its intermediate stage keeps the last weights,
  whereas the harness keeps each stage's best-on-dev checkpoint).
- `shared_projection`: the TinyBERT reference's single `fit_dense` for every layer.
- `layer_map`: explicit teacher layers for student layers 1..M.
Batches are padded to their longest row, not to 128 as in the references, so the MSE means run
over fewer padded positions: the same losses, on a somewhat larger scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import (
    attention_score_mse,
    fit_layer_map,
    parse_layer_map,
    projected_hidden_mse,
    soft_cross_entropy,
    uniform_layer_map,
)

ONE_STAGE = ("main",)
TWO_STAGES = ("intermediate", "prediction")


def make_projections(student_hidden: int, teacher_hidden: int, count: int, init_std: float) -> nn.ModuleList:
    """`count` linear maps from the student's width to the teacher's, initialised as BERT's linears
    (normal(0, init_std) weights, zero biases), as both reference codes do."""
    projections = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(count))
    for p in projections:
        nn.init.normal_(p.weight, std=init_std)
        nn.init.zeros_(p.bias)
    return projections


class TinyBERT(Distiller):
    name = "tinybert"
    description = "TinyBERT: embedding, attention-score and projected hidden MSE + soft CE on logits"
    needs = frozenset({"logits", "hidden", "attentions"})
    teacher_kind = "single"

    @dataclass
    class Options:
        temperature: float = 1.0
        two_stage: bool = False  # True: "intermediate" then "prediction", as the TinyBERT code
        shared_projection: bool = False  # True: one projection for every layer, as the TinyBERT code
        layer_map: tuple[int, ...] | None = None  # teacher layer per student layer 1..M; None: m * N / M

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"tinybert temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (1 by default)")
            self.layer_map = parse_layer_map(self.layer_map, "tinybert")

    def __init__(self, options=None):
        super().__init__(options)
        self.stages = TWO_STAGES if self.options.two_stage else ONE_STAGE
        self.teacher_layers: tuple[int, ...] | None = None  # fitted to the two models in extra_modules
        self.projections: nn.ModuleList | None = None

    def extra_modules(self, teacher_config, student_config):
        n_teacher, n_student = teacher_config.num_hidden_layers, student_config.num_hidden_layers
        if teacher_config.num_attention_heads != student_config.num_attention_heads:
            raise BenchError(
                f"tinybert matches attention maps head by head, but the teacher has "
                f"{teacher_config.num_attention_heads} heads and the student {student_config.num_attention_heads}",
                "pick a teacher and a student with the same number of attention heads")
        if self.options.layer_map is None:
            self.teacher_layers = uniform_layer_map(n_teacher, n_student, "tinybert")
        else:
            self.teacher_layers = fit_layer_map(self.options.layer_map, n_teacher, n_student, "tinybert")
            if len(self.teacher_layers) != n_student:
                raise BenchError(
                    f"tinybert layer_map {list(self.teacher_layers)} names {len(self.teacher_layers)} teacher "
                    f"layers for a {n_student}-layer student",
                    f"give one teacher layer per student layer: {n_student} increasing layers in 1..{n_teacher}")
        count = 1 if self.options.shared_projection else n_student + 1
        self.projections = make_projections(student_config.hidden_size, teacher_config.hidden_size, count,
                                            getattr(student_config, "initializer_range", 0.02))
        return self.projections

    def projection(self, layer: int) -> nn.Module:
        return self.projections[0 if self.options.shared_projection else layer]

    def intermediate_losses(self, student_out, teacher_out):
        """Embedding, attention and hidden MSE over the mapped layers."""
        hs, ht = student_out.hidden_states, teacher_out.hidden_states
        attention = hidden = 0.0
        for m, g in enumerate(self.teacher_layers, start=1):
            attention = attention + attention_score_mse(student_out.attention_scores[m - 1],
                                                        teacher_out.attention_scores[g - 1])
            hidden = hidden + projected_hidden_mse(hs[m], ht[g], self.projection(m))
        return {"embedding": projected_hidden_mse(hs[0], ht[0], self.projection(0)),
                "attention": attention, "hidden": hidden}

    def loss(self, batch, student_out, teacher_out, stage):
        if self.projections is None:
            raise RuntimeError("tinybert: extra_modules() builds the projections; call it before loss()")
        parts = {}
        if stage in ("main", "intermediate"):
            parts.update(self.intermediate_losses(student_out, teacher_out))
        if stage in ("main", "prediction"):
            parts["prediction"] = soft_cross_entropy(student_out.logits, teacher_out.logits, self.options.temperature)
        return parts


@hookimpl
def bench_register_distillers(register):
    register(TinyBERT)
