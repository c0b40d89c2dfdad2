"""Loss building blocks that several methods share. Plugins import these; never each other."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(softmax(zt/T) || softmax(zs/T)), summed over classes,
    averaged over examples. The T^2 keeps its gradients on the scale of the hard-label term."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * t * t



def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """SCE(zs, zt; t) = mean over elements of -softmax(zt/t) * log_softmax(zs/t), as TinyBERT's and
    HRKD's code compute it: averaged over classes as well as examples, and no t^2."""
    t = temperature
    return -(F.softmax(teacher_logits / t, dim=-1) * F.log_softmax(student_logits / t, dim=-1)).mean()


# TinyBERT's reference code treats attention scores this low as the additive mask.
MASKED_SCORE = -1e2


def attention_score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT's attention loss on pre-softmax scores (batch, heads, seq, seq): entries <= -100 (keys
    the additive mask hid) are set to 0 on both sides, then the MSE.

    With `attention_mask` (batch, seq; 1 for real tokens) the mean runs over the real (query, key)
    pairs only, so it does not depend on how far a batch was padded; None: over every element, as the
    references (which pad every row to 128) compute it."""
    student_scores = student_scores.masked_fill(student_scores <= MASKED_SCORE, 0.0)
    teacher_scores = teacher_scores.masked_fill(teacher_scores <= MASKED_SCORE, 0.0)
    if attention_mask is None:
        return F.mse_loss(student_scores, teacher_scores)
    real = attention_mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    # padded entries (masked scores, anything a cache pads with) are <= -100 or finite, so 0 or finite here
    diff = torch.where(pairs, student_scores - teacher_scores, 0.0)
    return diff.square().sum() / (pairs.sum() * student_scores.shape[1])


def projected_hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                         projection: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE(W H_s, H_t); W (a trained projection) maps the student's width to the teacher's. With
    `attention_mask` (batch, seq) the mean runs over real tokens only; None: over every element."""
    projected = projection(student_hidden)
    if attention_mask is None:
        return F.mse_loss(projected, teacher_hidden)
    real = attention_mask.bool()[..., None]
    diff = torch.where(real, projected - teacher_hidden, 0.0)
    return diff.square().sum() / (real.sum() * projected.shape[-1])


# Logit given to padded keys: exp() of it is exactly 0 in every float format, and unlike -inf it
# keeps log-probabilities finite, so masked terms are 0 * finite, never nan.
_NO_KEY = -1e4


def relation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) of each row over its keys, averaged over heads and
    the rows of real tokens (MiniLM's attention and value-relation transfer).

    Logits are (batch, heads, seq, seq), before softmax; attention_mask is (batch, seq), 1 for real
    tokens. Padded keys get no probability on either side and padded query rows do not count.
    """
    keys = attention_mask[:, None, None, :].bool()
    log_pt = F.log_softmax(teacher_logits.masked_fill(~keys, _NO_KEY), dim=-1)
    log_ps = F.log_softmax(student_logits.masked_fill(~keys, _NO_KEY), dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~keys, 0.0).sum(-1)  # (batch, heads, seq)
    rows = attention_mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * rows).sum() / rows.sum()


def value_relation(values: torch.Tensor, relation_heads: int = 0) -> torch.Tensor:
    """MiniLM's value relation logits V V^T / sqrt(d) per head, (batch, heads, seq, seq), from values
    (batch, heads, seq, head_dim). With relation_heads > 0 the heads are first concatenated and
    re-split into that many relation heads (MiniLMv2), so a teacher and a student with different
    head counts give relations of the same shape."""
    if relation_heads:
        batch, heads, seq, head_dim = values.shape
        values = (values.transpose(1, 2).reshape(batch, seq, relation_heads, heads * head_dim // relation_heads)
                  .transpose(1, 2))
    return values @ values.transpose(-1, -2) / math.sqrt(values.shape[-1])


def uniform_layer_map(n_teacher: int, n_student: int, method: str) -> tuple[int, ...]:
    """g(m) = m * N / M: the teacher layer each student layer m = 1..M learns from (layer 0, the
    embeddings, maps to 0)."""
    if n_student > n_teacher or n_teacher % n_student:
        raise BenchError(
            f"{method}: a {n_student}-layer student has no uniform map onto a {n_teacher}-layer teacher "
            "(g(m) = m * N / M needs the teacher's layer count to be a multiple of the student's)",
            f"give the {method} option layer_map: increasing teacher layers in 1..{n_teacher}, "
            "one per student layer from 1 on")
    return tuple(m * n_teacher // n_student for m in range(1, n_student + 1))


def parse_layer_map(layer_map: Sequence[int] | None, method: str) -> tuple[int, ...] | None:
    """An explicit layer map as given (teacher layers for student layers 1, 2, ...), checked for
    what can be checked before the models are known: increasing layer numbers from 1 on."""
    if layer_map is None:
        return None
    layers = tuple(layer_map)
    if not layers or any(not isinstance(i, int) or i < 1 for i in layers) or list(layers) != sorted(set(layers)):
        raise BenchError(f"{method} layer_map {list(layers)} is not a list of increasing teacher layers >= 1",
                         "give one teacher layer per student layer from 1 on, e.g. [2, 4] "
                         "(layer 0, the embeddings, is always mapped to 0)")
    return layers


def fit_layer_map(layer_map: Sequence[int], n_teacher: int, n_student: int, method: str) -> tuple[int, ...]:
    """Check an explicit layer map against the two models: at most one teacher layer per student
    layer, each within the teacher."""
    layers = parse_layer_map(layer_map, method)
    if len(layers) > n_student or layers[-1] > n_teacher:
        raise BenchError(
            f"{method} layer_map {list(layers)} does not fit a {n_teacher}-layer teacher and a "
            f"{n_student}-layer student",
            f"give at most {n_student} increasing teacher layers, each between 1 and {n_teacher}")
    return layers


def default_layer_map(n_teacher: int, n_student: int, method: str,
                      copies: Sequence[int] | None = None) -> tuple[int, ...]:
    """The teacher layer each student layer 1..M learns from when the user names none: for a student
    cut from its teacher, the layer it starts as a copy of (`Distiller.student_copies`), so every
    mapped layer starts at its target; else the uniform g(m) = m * N / M of the papers, whose
    general-distilled students were trained to match it."""
    if copies is not None and len(copies) == n_student and max(copies) <= n_teacher:
        return tuple(copies)
    return uniform_layer_map(n_teacher, n_student, method)


def layer_per_student_layer(layer_map: Sequence[int] | None, n_teacher: int, n_student: int,
                            method: str, copies: Sequence[int] | None = None) -> tuple[int, ...]:
    """The teacher layer of each student layer 1..M (TinyBERT, HRKD): the user's map, which must
    name one per student layer, or else the default (`default_layer_map`)."""
    if layer_map is None:
        return default_layer_map(n_teacher, n_student, method, copies)
    layers = fit_layer_map(layer_map, n_teacher, n_student, method)
    if len(layers) != n_student:
        raise BenchError(
            f"{method} layer_map {list(layers)} names {len(layers)} teacher layers for a {n_student}-layer student",
            f"give one teacher layer per student layer: {n_student} increasing layers in 1..{n_teacher}")
    return layers


def check_same_heads(teacher_config, student_config, method: str) -> None:
    """Attention maps are matched head by head (TinyBERT, HRKD): the head counts must agree."""
    if teacher_config.num_attention_heads != student_config.num_attention_heads:
        raise BenchError(
            f"{method} matches attention maps head by head, but the teacher has "
            f"{teacher_config.num_attention_heads} heads and the student {student_config.num_attention_heads}",
            "pick a teacher and a student with the same number of attention heads")


def make_projections(student_hidden: int, teacher_hidden: int, count: int, init_std: float) -> nn.ModuleList:
    """`count` linear maps from the student's width to the teacher's, initialised as BERT's linears
    (normal(0, init_std) weights, zero biases), as the TinyBERT and HRKD codes do (`fit_dense`)."""
    projections = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(count))
    for p in projections:
        nn.init.normal_(p.weight, std=init_std)
        nn.init.zeros_(p.bias)
    return projections
