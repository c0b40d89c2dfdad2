"""Meta-KD (Pan et al. 2021, "Meta-KD: A Meta Knowledge Distillation Framework for Language Model
Compression across Domains", ACL; code: alibaba/EasyNLP, examples/knowledge_distillation/metakd and
easynlp/distillation/distill_metakd_application.py, first released in alibaba/EasyTransfer).

The authors' scripts run three steps; the harness runs the first two when it builds the teacher
(a `mix` teacher trained by this method's own objective, stored under its own key) and the third
for each domain's student:
1. Prototype scores (generate_meta_weights.py): a training row's embedding e is the mean of the
   pretrained teacher's last hidden states over its tokens after [CLS]; c_d is the mean embedding
   of domain d's rows; a row of domain d scores w = (cos(e, c_d) + cos(e, mean of the other
   domains' c)) / 2: how typical of all domains, not only its own, the row is.
2. Meta-teacher, one model on every domain with a domain head: r = D(E[d] + content), content the
   mean of the last hidden states after [CLS]; domain logits = C(dropout(tanh(r))). Loss = mean over
   rows of w * [CE(z, y) + 0.5 CE(domain logits, d')], d' the batch's domain ids randomly permuted
   (the domain-corruption loss: the teacher should not be able to tell domains apart).
3. Meta-distillation of one student per domain, two stages:
   - "intermediate": sum over m = 0..M of MSE(F H_s,m, H_t,g(m)) (F one shared projection, the
     code's `fit_dense`) + TinyBERT's attention-score MSE over m = 1..M + 0.5 MSE(F D_s(E_s +
     content_s), D_t(E_t[d] + content_t)) (D_t, E_t: the meta-teacher's, frozen; a student sees one
     domain, so its E_s is one learned vector), scaled by
     (1 + w) * g, g = 1 / (1 + exp((1 - p_t(y))^2)) the teacher's domain expertise on the row.
   - "prediction": SCE(zs / T, zt / T), summed over classes and averaged over rows, T = 2.

Where the harness differs from the code, and why:
- The code's MSEs are batch means, so (1 + w) g scales a batch's loss by the batch mean of
  (1 + w) g; the option `per_example_weights` weighs each row's own MSEs, as the paper writes it.
- Content means run over real tokens: the code averages over all 128 padded positions, which with
  batches padded to their longest row would depend on the batch.
- The teacher's domain representation is D_t(...) itself: the code loads the teacher into its
  student class, whose `fit_dense` the teacher checkpoint lacks, so a fresh random projection.
- The intermediate stage keeps its last weights (the code evaluates only the second stage); each
  stage trains for the preset's epochs (the code: 10 and 10, lr 3e-5, batch 16), and the teacher
  for the preset's teacher budget (the code: 1 epoch). The teacher's classifier is the harness's
  head (pooled [CLS] -> dropout -> linear), as for every method's teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Distiller, TeacherExtras, TeacherObjective
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import (
    MASKED_SCORE,
    attention_score_mse,
    check_same_heads,
    layer_per_student_layer,
    make_projections,
    parse_layer_map,
)


def content_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (batch, seq, hidden) states over each row's real tokens after [CLS]."""
    keep = attention_mask.clone()
    keep[:, 0] = 0
    keep = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def prototype_scores(embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each row's score w = (cos(e, own centroid) + cos(e, mean of the other centroids)) / 2, from
    the (rows, hidden) embeddings of each domain."""
    if len(embeddings) < 2:
        raise BenchError(f"metakd scores rows against the other domains, but the run has only "
                         f"{sorted(embeddings)}", "run metakd on two or more domains of the suite")
    centroids = {d: e.mean(0) for d, e in embeddings.items()}
    scores = {}
    for d, e in embeddings.items():
        others = torch.stack([c for o, c in centroids.items() if o != d]).mean(0)
        own = F.cosine_similarity(e, centroids[d].expand_as(e), dim=-1)
        rest = F.cosine_similarity(e, others.expand_as(e), dim=-1)
        scores[d] = (own + rest) / 2
    return scores


def expertise_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """g = 1 / (1 + exp((1 - p_t(y))^2)): how sure the teacher is of the gold label, per row."""
    p_gold = F.softmax(teacher_logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    return 1.0 / (1.0 + torch.exp((1.0 - p_gold) ** 2))


class DomainRepresentation(nn.Module):
    """r = D(E[d] + content): the domain embedding added to the row's content, through a linear
    (the code's `domain_embedding` and `corrupt_dense`)."""

    def __init__(self, hidden: int, num_domains: int, init_std: float):
        super().__init__()
        self.embedding = nn.Embedding(num_domains, hidden)
        self.dense = nn.Linear(hidden, hidden)
        for weight in (self.embedding.weight, self.dense.weight):
            nn.init.normal_(weight, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, content: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        return self.dense(self.embedding(domain_ids) + content)


class MetaTeacher(TeacherObjective):
    """The meta-teacher's training: prototype-weighted CE plus the domain-corruption loss."""

    name = "meta-teacher"
    needs = frozenset({"logits", "hidden"})

    def __init__(self, domain_loss_weight: float = 0.5):
        self.domain_loss_weight = domain_loss_weight

    def config(self):
        return {"domain_loss_weight": self.domain_loss_weight}

    def prepare(self, teacher, train):
        embeddings = {}
        for domain, batches in train.items():
            rows = {}
            for batch in batches:
                hidden = teacher(batch, frozenset({"hidden"})).hidden_states[-1]
                mean = content_mean(hidden, batch.attention_mask.to(hidden.device)).float().cpu()
                rows.update(zip(batch.row_ids.tolist(), mean))
            embeddings[domain] = torch.stack([rows[i] for i in range(len(rows))])
        return {f"prototype_scores.{d}": s for d, s in prototype_scores(embeddings).items()}

    def modules(self, teacher_config):
        std = getattr(teacher_config, "initializer_range", 0.02)
        classifier = nn.Linear(teacher_config.hidden_size, len(self.domains))
        nn.init.normal_(classifier.weight, std=std)
        nn.init.zeros_(classifier.bias)
        return nn.ModuleDict({
            "representation": DomainRepresentation(teacher_config.hidden_size, len(self.domains), std),
            "dropout": nn.Dropout(teacher_config.hidden_dropout_prob),
            "classifier": classifier,
        })

    def loss(self, batch, out, modules, tensors):
        w = row_scores(tensors, self.domains, batch)
        content = content_mean(out.hidden_states[-1], batch.attention_mask)
        domain_logits = modules["classifier"](modules["dropout"](torch.tanh(
            modules["representation"](content, batch.domain_ids))))
        corrupted = batch.domain_ids[torch.randperm(len(batch), device=batch.domain_ids.device)]
        ce = F.cross_entropy(out.logits, batch.labels, reduction="none")
        domain = F.cross_entropy(domain_logits, corrupted, reduction="none")
        return {"ce": (w * ce).mean(), "domain": (w * self.domain_loss_weight * domain).mean()}


def row_scores(tensors, domains, batch) -> torch.Tensor:
    """Each row's prototype score, looked up by its domain and its index in that domain's train split."""
    if batch.row_ids is None:
        raise BenchError("metakd weighs training rows by their prototype scores, but the batch has no row_ids",
                         "build batches with bench.data.batching.make_loader, which numbers each split's rows")
    scores = torch.empty(len(batch), device=batch.row_ids.device)
    for domain_id in batch.domain_ids.unique().tolist():
        rows = batch.domain_ids == domain_id
        table = tensors[f"prototype_scores.{domains[domain_id]}"].to(scores)
        scores[rows] = table[batch.row_ids[rows]]
    return scores


def _row_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error over every dimension but the first."""
    return (a - b).pow(2).flatten(1).mean(1)


class MetaKD(Distiller):
    name = "metakd"
    description = "Meta-KD: a prototype-weighted meta-teacher, then expertise-weighted TinyBERT-style distillation"
    needs = frozenset({"logits", "hidden", "attentions"})
    teacher_kind = "mix"
    student_kind = "single"
    stages = ("intermediate", "prediction")

    @dataclass
    class Options:
        temperature: float = 2.0
        domain_loss_weight: float = 0.5  # the teacher's domain-corruption and the student's domain MSE weight
        per_example_weights: bool = False  # True: (1 + w) g per row, as the paper; False: the code's batch mean
        layer_map: tuple[int, ...] | None = None  # teacher layer per student layer 1..M; None: default_layer_map

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"metakd temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (2 by default)")
            if self.domain_loss_weight < 0:
                raise BenchError(f"metakd domain_loss_weight must be >= 0, got {self.domain_loss_weight}",
                                 "set domain_loss_weight to a value >= 0 (0.5 by default)")
            self.layer_map = parse_layer_map(self.layer_map, "metakd")

    def __init__(self, options=None):
        super().__init__(options)
        self.teacher_layers: tuple[int, ...] | None = None
        self.modules: nn.ModuleDict | None = None
        self.teacher_extras: TeacherExtras | None = None

    def teacher_objective(self):
        return MetaTeacher(self.options.domain_loss_weight)

    def bind_teacher(self, extras):
        self.teacher_extras = extras

    def selects_on_dev(self, stage):
        return stage != "intermediate"

    def extra_modules(self, teacher_config, student_config):
        if len(self.domains) == 1:  # before the meta-teacher trains, not after
            raise BenchError(f"metakd learns across domains, but the run has only {self.domains[0]!r}",
                             "run metakd on two or more domains of the suite")
        check_same_heads(teacher_config, student_config, "metakd")
        self.teacher_layers = layer_per_student_layer(self.options.layer_map, teacher_config.num_hidden_layers,
                                                      student_config.num_hidden_layers, "metakd", self.student_copies)
        std = getattr(student_config, "initializer_range", 0.02)
        self.modules = nn.ModuleDict({
            "fit": make_projections(student_config.hidden_size, teacher_config.hidden_size, 1, std)[0],
            # a student sees one domain, so its E_s[d] is one learned vector
            "domain": DomainRepresentation(student_config.hidden_size, 1, std),
        })
        return self.modules

    def loss(self, batch, student_out, teacher_out, stage):
        if self.modules is None or self.teacher_extras is None:
            raise RuntimeError("metakd: call extra_modules() and bind_teacher() before loss()")
        if stage == "prediction":
            t = self.options.temperature
            soft = F.softmax(teacher_out.logits / t, dim=-1)
            return {"prediction": -(soft * F.log_softmax(student_out.logits / t, dim=-1)).sum(-1).mean()}
        return self.intermediate_losses(batch, student_out, teacher_out)

    def intermediate_losses(self, batch, student_out, teacher_out):
        fit = self.modules["fit"]
        hs, ht = student_out.hidden_states, teacher_out.hidden_states
        with torch.no_grad():
            teacher_domain = self.teacher_extras.modules["representation"](
                content_mean(ht[-1], batch.attention_mask), batch.domain_ids)
            weights = (1.0 + row_scores(self.teacher_extras.tensors, self.teacher_extras.domains, batch)) \
                * expertise_weights(teacher_out.logits, batch.labels)
        student_domain = fit(self.modules["domain"](content_mean(hs[-1], batch.attention_mask),
                                                    torch.zeros_like(batch.domain_ids)))
        hidden_pairs = [(fit(hs[m]), ht[g]) for m, g in enumerate((0, *self.teacher_layers))]
        attention_pairs = [(student_out.attention_scores[m - 1], teacher_out.attention_scores[g - 1])
                           for m, g in enumerate(self.teacher_layers, start=1)]
        weight = self.options.domain_loss_weight
        if not self.options.per_example_weights:  # the code: batch-mean MSEs times the batch-mean weight
            scale = weights.mean()
            return {"hidden": sum(F.mse_loss(s, t) for s, t in hidden_pairs) * scale,
                    "attention": sum(attention_score_mse(s, t) for s, t in attention_pairs) * scale,
                    "domain": weight * F.mse_loss(student_domain, teacher_domain) * scale}
        hidden = sum(_row_mse(s, t) for s, t in hidden_pairs)
        attention = sum(_row_mse(s.masked_fill(s <= MASKED_SCORE, 0.0), t.masked_fill(t <= MASKED_SCORE, 0.0))
                        for s, t in attention_pairs)
        domain = _row_mse(student_domain, teacher_domain)
        return {"hidden": (weights * hidden).mean(), "attention": (weights * attention).mean(),
                "domain": (weights * weight * domain).mean()}


@hookimpl
def bench_register_distillers(register):
    register(MetaKD)
