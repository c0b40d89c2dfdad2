"""HRKD: Hierarchical Relational Knowledge Distillation (Dong et al., EMNLP 2021, "HRKD: Hierarchical
Relational Knowledge Distillation for Cross-domain Language Model Compression"; code: cheneydon/hrkd,
finetune_multi_domain.py), and its two ablations.

Teacher and student are both "multi": a shared encoder with one head per domain. Every step takes a
sub-batch of each domain; each domain's rows go through that domain's teacher (the multi teacher's
best-dev checkpoint for the domain) and through the student. Per domain d, with the student's
layers m = 0..M (0: embeddings) mapped to teacher layers g(m) (default_layer_map: m * N / M, or the
layers a student cut from its teacher copies) and W_m the trained projections of TinyBERT:

    loss_d = r_d^0 MSE(W_0 E_s, E_t)
             + sum_m r_d^m [MSE(A_s,m, A_t,g(m)) + MSE(W_m H_s,m, H_t,g(m))]
             + (1/D) SCE(z_s, z_t; t)

and the step's loss is the sum over domains. The ratios r^m (a softmax over domains, per layer) come
from the domain-relational graph (graph.py) over the domains' prototypes, the mean projected student
hidden state of each domain and layer, after the hierarchical compare-aggregate (hierarchy.py).

- `hrkd`: graph and hierarchy. `hrkd-nohier`: the graph on each layer's own prototypes.
  `hrkd-nograph`: no ratios (all 1) and no 1/D: TinyBERT-KD summed over domains, as the reference
  runs without `--use_graph`.
- As in the reference, by default the graph, W1 and W2 are never trained (its optimizer holds the
  student's parameters only: `train_graph` trains them), the graph runs in train mode (dropout makes
  the ratios vary from step to step), and the ratios are not detached, so gradients reach the student
  through the prototypes too (`detach_ratios` stops them).
- Padding: the reference pads every row to 128, and its prototypes and MSE means run over all
  positions, padding included. Batches here are padded to their longest row, so such means would
  weigh padding by whatever the longest row was; they are over real tokens instead (attention: real
  query-key pairs). `prototype_padding` and `loss_padding` restore the plain means over the padded
  sub-batch. Real-token losses also let the teacher's outputs come from the harness's cache.
The ratios and compare-aggregate weights, averaged between dev evaluations, are kept in each result's
training history (`trace`), for `python -m bench report --ratios`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
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

from .graph import DomainRelationalGraph, domain_prototypes


class HRKD(Distiller):
    name = "hrkd"
    description = "HRKD: TinyBERT-KD over domains, re-weighted per layer by a domain graph with compare-aggregate"
    needs = frozenset({"logits", "hidden", "attentions"})
    teacher_kind = "multi"
    student_kind = "multi"
    use_graph: ClassVar[bool] = True
    hierarchical: ClassVar[bool] = True

    @dataclass
    class Options:
        temperature: float = 1.0
        train_graph: bool = False  # the reference never updates the graph, W1 or W2
        detach_ratios: bool = False  # the reference lets gradients reach the student through the ratios
        prototype_padding: bool = False  # True: the plain mean over the padded sub-batch
        loss_padding: bool = False  # True: the MSE means include padded positions, as the reference's
        graph_dropout: float = 0.1
        leaky_relu_slope: float = 0.2
        graph_heads: int = 8
        layer_map: tuple[int, ...] | None = None  # teacher layer per student layer 1..M; None: default_layer_map

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"hrkd temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (1 by default)")
            if not 0.0 <= self.graph_dropout < 1.0 or self.graph_heads < 1:
                raise BenchError(f"hrkd graph_dropout {self.graph_dropout} or graph_heads {self.graph_heads} "
                                 "is out of range",
                                 "give a dropout in [0, 1) and at least one head (0.1 and 8 by default)")
            if self.leaky_relu_slope < 0:
                raise BenchError(f"hrkd leaky_relu_slope must be >= 0, got {self.leaky_relu_slope}",
                                 "give the GAT's LeakyReLU slope (0.2 by default)")
            if self.train_graph and self.detach_ratios:  # detached ratios leave the graph no gradient
                raise BenchError("hrkd train_graph=true with detach_ratios=true would never train the graph",
                                 "drop one of the two options")
            self.layer_map = parse_layer_map(self.layer_map, "hrkd")

    def __init__(self, options=None):
        super().__init__(options)
        self.reads_teacher_padding = self.options.loss_padding
        self.teacher_layers: tuple[int, ...] | None = None
        self.projections: nn.ModuleList | None = None
        self.graph: DomainRelationalGraph | None = None
        self._ratio_sums: list[torch.Tensor] | None = None
        self._hier_sums: list[torch.Tensor] | None = None
        self._traced_steps = 0

    def extra_modules(self, teacher_config, student_config):
        check_same_heads(teacher_config, student_config, self.name)
        if not self.domains:
            raise BenchError(f"{self.name} needs the run's domains before its modules are built",
                             "run it through the harness (which sets distiller.domains), or set them first")
        n_student = student_config.num_hidden_layers
        self.teacher_layers = layer_per_student_layer(self.options.layer_map, teacher_config.num_hidden_layers,
                                                      n_student, self.name, self.student_copies)
        modules = nn.Module()  # the reference's fit_denses, one per layer, embeddings included
        modules.projections = make_projections(student_config.hidden_size, teacher_config.hidden_size, n_student + 1,
                                               getattr(student_config, "initializer_range", 0.02))
        self.projections = modules.projections
        if self.use_graph:
            o = self.options
            self.graph = DomainRelationalGraph(teacher_config.hidden_size, n_student + 1, len(self.domains),
                                               hierarchical=self.hierarchical, dropout=o.graph_dropout,
                                               alpha=o.leaky_relu_slope, heads=o.graph_heads)
            self.graph.requires_grad_(o.train_graph)  # frozen still passes gradients to the prototypes
            modules.graph = self.graph
        return modules

    def domain_losses(self, batch, student_out, teacher_out) -> tuple[torch.Tensor, list[torch.Tensor],
                                                                      list[torch.Tensor]]:
        """Embedding MSE, and per mapped layer the attention and the projected hidden MSE."""
        hs, ht = student_out.hidden_states, teacher_out.hidden_states
        mask = None if self.options.loss_padding else batch.attention_mask
        embedding = projected_hidden_mse(hs[0], ht[0], self.projections[0], mask)
        attention, hidden = [], []
        for m, g in enumerate(self.teacher_layers, start=1):
            attention.append(attention_score_mse(student_out.attention_scores[m - 1],
                                                 teacher_out.attention_scores[g - 1], mask))
            hidden.append(projected_hidden_mse(hs[m], ht[g], self.projections[m], mask))
        return embedding, attention, hidden

    def ratios(self, batch, student_out) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer (embeddings first) the domains' ratios, and the compare-aggregate weights."""
        states = [[p(h) for p, h in zip(self.projections, student_out[d].hidden_states)] for d in self.domains]
        masks = None if self.options.prototype_padding else [batch[d].attention_mask for d in self.domains]
        ratios, hierarchical = self.graph(domain_prototypes(states, masks))
        if self.options.detach_ratios:
            ratios = [r.detach() for r in ratios]
        self._accumulate(ratios, hierarchical)
        return ratios, hierarchical

    def multi_domain_loss(self, batch, student_out, teacher_out, stage):
        if self.projections is None:
            raise RuntimeError(f"{self.name}: extra_modules() builds the projections; call it before the loss")
        if list(batch) != list(self.domains):
            raise BenchError(f"{self.name} got sub-batches of {list(batch)}; its graph is over {list(self.domains)}",
                             "give every domain of the run a sub-batch, in the run's domain order")
        ratios = self.ratios(batch, student_out)[0] if self.graph is not None else None
        parts = {"embedding": 0.0, "attention": 0.0, "hidden": 0.0, "prediction": 0.0}
        pred_weight = 1.0 / len(self.domains) if ratios is not None else 1.0
        for i, d in enumerate(self.domains):
            embedding, attention, hidden = self.domain_losses(batch[d], student_out[d], teacher_out[d])
            weight = [r[i] for r in ratios] if ratios is not None else [1.0] * (len(attention) + 1)
            parts["embedding"] = parts["embedding"] + weight[0] * embedding
            parts["attention"] = parts["attention"] + sum(w * a for w, a in zip(weight[1:], attention))
            parts["hidden"] = parts["hidden"] + sum(w * h for w, h in zip(weight[1:], hidden))
            parts["prediction"] = parts["prediction"] + pred_weight * soft_cross_entropy(
                student_out[d].logits, teacher_out[d].logits, self.options.temperature)
        return parts

    def loss(self, batch, student_out, teacher_out, stage):
        raise BenchError(f"{self.name} learns from every domain at once, not from one domain's batch",
                         "run it as a multi student (the harness does), through multi_domain_loss")

    # -- what the paper plots -------------------------------------------------------------
    def _accumulate(self, ratios, hierarchical) -> None:
        ratios = [r.detach().float().cpu() for r in ratios]
        hierarchical = [h.detach().float().cpu() for h in hierarchical]
        if self._ratio_sums is None:
            self._ratio_sums, self._hier_sums = ratios, hierarchical
        else:
            self._ratio_sums = [s + r for s, r in zip(self._ratio_sums, ratios)]
            self._hier_sums = [s + h for s, h in zip(self._hier_sums, hierarchical)]
        self._traced_steps += 1

    def trace(self):
        """The mean ratios (layers x domains) and compare-aggregate weights (per layer m >= 1:
        domains x (m + 1)) over the steps since the last dev evaluation."""
        if not self._traced_steps:
            return None
        n = self._traced_steps
        out = {"domains": list(self.domains), "steps_averaged": n,
               "ratios": [[round(v, 6) for v in (s / n).tolist()] for s in self._ratio_sums],
               "hierarchical_ratios": [[[round(v, 6) for v in row] for row in (s / n).tolist()]
                                       for s in self._hier_sums]}
        self._ratio_sums = self._hier_sums = None
        self._traced_steps = 0
        return out


class HRKDNoHierarchy(HRKD):
    name = "hrkd-nohier"
    description = "HRKD ablation: the domain graph on each layer's prototypes, no compare-aggregate"
    hierarchical = False


class HRKDNoGraph(HRKD):
    name = "hrkd-nograph"
    description = "HRKD ablation: TinyBERT-KD summed over the domains of a multi-domain batch (no graph)"
    use_graph = False


@hookimpl
def bench_register_distillers(register):
    register(HRKD)
    register(HRKDNoHierarchy)
    register(HRKDNoGraph)
