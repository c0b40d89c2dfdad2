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
  runs 10 intermediate and 3 prediction epochs). The intermediate stage never trains the
  classifier, so it keeps its last weights, as the reference does; the prediction stage keeps
  its best dev checkpoint.
- `shared_projection`: the TinyBERT reference's single `fit_dense` for every layer.
- `layer_map`: explicit teacher layers for student layers 1..M; by default `bench.losses.default_layer_map`
  (the layers a student cut from its teacher starts as copies of, else m * N / M).
- `loss_padding`: see below.
The references pad every row to 128 and their MSE means include the padded positions. Batches here
are padded to their longest row, so such a mean would weigh padding by whatever the longest row was
(and by the length bucketing); the embedding, attention and hidden MSEs are means over real tokens
instead (attention: over real query-key pairs). `loss_padding` restores the mean over every element
of the padded batch. Real-token means also let the teacher's outputs come from the harness's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import (
    attention_score_mse,
    check_same_heads,
    layer_per_student_layer,
    make_projections,
    parse_layer_map,
    projected_hidden_mse,
    soft_cross_entropy,
)

ONE_STAGE = ("main",)
TWO_STAGES = ("intermediate", "prediction")


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
        layer_map: tuple[int, ...] | None = None  # teacher layer per student layer 1..M; None: default_layer_map
        loss_padding: bool = False  # True: the MSE means include padded positions, as the references'

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"tinybert temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (1 by default)")
            self.layer_map = parse_layer_map(self.layer_map, "tinybert")

    def __init__(self, options=None):
        super().__init__(options)
        self.stages = TWO_STAGES if self.options.two_stage else ONE_STAGE
        self.reads_teacher_padding = self.options.loss_padding
        self.teacher_layers: tuple[int, ...] | None = None  # fitted to the two models in extra_modules
        self.projections: nn.ModuleList | None = None

    def extra_modules(self, teacher_config, student_config):
        check_same_heads(teacher_config, student_config, "tinybert")
        self.teacher_layers = layer_per_student_layer(self.options.layer_map, teacher_config.num_hidden_layers,
                                                      student_config.num_hidden_layers, "tinybert", self.student_copies)
        count = 1 if self.options.shared_projection else student_config.num_hidden_layers + 1
        self.projections = make_projections(student_config.hidden_size, teacher_config.hidden_size, count,
                                            getattr(student_config, "initializer_range", 0.02))
        return self.projections

    def projection(self, layer: int) -> nn.Module:
        return self.projections[0 if self.options.shared_projection else layer]

    def intermediate_losses(self, batch, student_out, teacher_out):
        """Embedding, attention and hidden MSE over the mapped layers."""
        hs, ht = student_out.hidden_states, teacher_out.hidden_states
        mask = None if self.options.loss_padding else batch.attention_mask
        attention = hidden = 0.0
        for m, g in enumerate(self.teacher_layers, start=1):
            attention = attention + attention_score_mse(student_out.attention_scores[m - 1],
                                                        teacher_out.attention_scores[g - 1], mask)
            hidden = hidden + projected_hidden_mse(hs[m], ht[g], self.projection(m), mask)
        return {"embedding": projected_hidden_mse(hs[0], ht[0], self.projection(0), mask),
                "attention": attention, "hidden": hidden}

    def selects_on_dev(self, stage):
        return stage != "intermediate"

    def loss(self, batch, student_out, teacher_out, stage):
        if self.projections is None:
            raise RuntimeError("tinybert: extra_modules() builds the projections; call it before loss()")
        parts = {}
        if stage in ("main", "intermediate"):
            parts.update(self.intermediate_losses(batch, student_out, teacher_out))
        if stage in ("main", "prediction"):
            parts["prediction"] = soft_cross_entropy(student_out.logits, teacher_out.logits, self.options.temperature)
        return parts


@hookimpl
def bench_register_distillers(register):
    register(TinyBERT)
