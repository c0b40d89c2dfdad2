"""A conformance check any plugin author can run on a distiller, in seconds on a CPU:

    from bench.testing import check_distiller
    check_distiller(MyKD)

It builds tiny random models (a 4-layer teacher, a 2-layer student), runs each stage's loss on
a padded batch (a "multi" student: `multi_domain_loss` on a MultiDomainBatch of two domains,
each with its own teacher and head) and checks that every part is a finite scalar, that backward reaches the
student, that one optimizer step changes it, that training-only modules stay out of the
student's parameters, and that the loss needs no model output beyond the declared `needs`
(the models fill only those), nor, when it says it does not (`reads_teacher_padding = False`),
the teacher's outputs at padded positions. A method with its own teacher objective has it checked the same
way on the teacher (finite parts, gradient reaching the teacher), and its prepared tensors and
modules bound before the student's checks. A failed check raises AssertionError saying which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bench.api import OUTPUTS, Batch, Distiller, ModelOutputs, TeacherExtras, TeacherObjective
from bench.models.classifier import ModelSpec, build_classifier

TEACHER = ModelSpec("random:tiny")
STUDENT = ModelSpec("random:tiny", init="random", layers=(0, 1))


DOMAINS = ("books", "dvd")


def conformance_batch(domain_id: int = 0) -> Batch:
    """Three rows of different lengths (so padding is exercised), two labels, one domain."""
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102],
                        [101, 6659, 2143, 102, 0, 0],
                        [101, 1037, 2210, 102, 2200, 102]])
    types = torch.tensor([[0] * 6, [0] * 6, [0, 0, 0, 0, 1, 1]])
    return Batch(ids, (ids != 0).long(), types, torch.tensor([1, 0, 1]), torch.full((3,), domain_id),
                 torch.arange(3))


def conformance_multi_batch() -> dict[str, Batch]:
    """A MultiDomainBatch of two domains whose sub-batches differ in length and labels."""
    second = conformance_batch(1)
    second = Batch(second.input_ids[:2, :5], second.attention_mask[:2, :5], second.token_type_ids[:2, :5],
                   torch.tensor([0, 1]), second.domain_ids[:2], second.row_ids[:2])
    return {DOMAINS[0]: conformance_batch(0), DOMAINS[1]: second}


def _check_parts(parts, what: str) -> torch.Tensor:
    assert isinstance(parts, dict) and parts, f"{what}: loss must return a non-empty dict"
    for part, value in parts.items():
        assert torch.is_tensor(value) and value.dim() == 0, f"{what}: loss part {part!r} is not a scalar tensor"
        assert torch.isfinite(value), f"{what}: loss part {part!r} is not finite ({value.item()})"
    return sum(parts.values())


def check_teacher_objective(objective: TeacherObjective, teacher) -> TeacherExtras:
    """Prepare `objective` on each domain's conformance batch, check one teacher step on a batch
    mixing both domains, and return what it would store with the teacher (modules frozen)."""
    objective.domains = DOMAINS
    teacher.eval()
    with torch.no_grad():
        tensors = objective.prepare(teacher, {d: [conformance_batch(i)] for i, d in enumerate(DOMAINS)})
    modules = objective.modules(teacher.config)
    first, second = conformance_batch(0), conformance_batch(1)
    mixed = Batch(*(torch.cat([getattr(first, f), getattr(second, f)]) for f in
                    ("input_ids", "attention_mask", "token_type_ids", "labels", "domain_ids", "row_ids")))
    teacher.train()
    total = _check_parts(objective.loss(mixed, teacher(mixed, objective.needs), modules, tensors),
                         f"teacher objective {objective.name}")
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters()), \
        f"teacher objective {objective.name}: no gradient reaches the teacher"
    teacher.zero_grad(set_to_none=True)
    teacher.eval()
    if modules is not None:
        modules.eval().requires_grad_(False)
    return TeacherExtras(modules, dict(tensors), DOMAINS)


def check_distiller(distiller_cls: type[Distiller], options: Mapping[str, Any] | None = None,
                    teacher: ModelSpec = TEACHER, student: ModelSpec = STUDENT, seed: int = 0) -> None:
    torch.manual_seed(seed)
    name = distiller_cls.name
    assert distiller_cls.needs <= OUTPUTS, f"{name} needs unknown outputs {sorted(distiller_cls.needs - OUTPUTS)}"
    distiller = distiller_cls(options)
    distiller.domains = DOMAINS
    multi = distiller.student_kind == "multi"
    student_model = build_classifier(student, 2, len(DOMAINS) if multi else 1)
    teachers = None
    if distiller.teacher_kind:  # a multi teacher: one checkpoint per domain, two heads each
        heads = len(DOMAINS) if distiller.teacher_kind == "multi" else 1
        teachers = {d: build_classifier(teacher, 2, heads).eval() for d in DOMAINS}
    teacher_model = teachers[DOMAINS[0]] if teachers else None
    objective = distiller.teacher_objective()
    if objective is not None:
        assert teacher_model is not None, f"{name} has a teacher objective but no teacher_kind"
        distiller.bind_teacher(check_teacher_objective(objective, teacher_model))
    extra = distiller.extra_modules(teacher_model.config if teacher_model else None, student_model.config)
    student_ids = {id(p) for p in student_model.parameters()}
    extra_params = list(extra.parameters()) if extra is not None else []
    assert not any(id(p) in student_ids for p in extra_params), \
        f"{name}: extra_modules share parameters with the student; they must be training-only"

    batch = conformance_multi_batch() if multi else conformance_batch()
    if teachers and not distiller.reads_teacher_padding:
        _check_ignores_teacher_padding(distiller, batch, student_model, teachers)
    trained = list(student_model.parameters()) + extra_params
    for stage in distiller.stages:
        optimizer = torch.optim.SGD(trained, lr=0.1)
        before = [p.detach().clone() for p in student_model.parameters()]
        student_model.train()
        try:
            if multi:
                student_out = {d: student_model(b, distiller.needs) for d, b in batch.items()}
                with torch.no_grad():
                    teacher_out = {d: teachers[d](b, distiller.needs) for d, b in batch.items()} if teachers else None
                parts = distiller.multi_domain_loss(batch, student_out, teacher_out, stage)
            else:
                student_out = student_model(batch, distiller.needs)
                with torch.no_grad():
                    teacher_out = teacher_model(batch, distiller.needs) if teacher_model else None
                parts = distiller.loss(batch, student_out, teacher_out, stage)
        except (TypeError, AttributeError) as exc:  # e.g. indexing an output it did not declare
            raise AssertionError(f"{name} stage {stage!r}: the loss failed with outputs limited to its "
                                 f"declared needs {sorted(distiller.needs)}: {exc}") from exc
        total = _check_parts(parts, f"{name} stage {stage!r}")
        assert total.requires_grad, f"{name} stage {stage!r}: the loss does not depend on the student"
        optimizer.zero_grad()
        total.backward()
        grads = [p.grad for p in student_model.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), \
            f"{name} stage {stage!r}: no gradient reaches the student"
        optimizer.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, student_model.parameters())), \
            f"{name} stage {stage!r}: one optimizer step left the student unchanged"


def _scramble_padding(out: ModelOutputs, mask: torch.Tensor) -> ModelOutputs:
    """`out` with every value at a padded position (token, query or key) replaced by noise."""
    real = mask.bool()

    def scramble(x: torch.Tensor, token_dims: tuple[int, ...]) -> torch.Tensor:
        keep = torch.ones_like(x, dtype=torch.bool)
        for d in token_dims:  # dims of x (batch first) that run over tokens
            shape = [1] * x.dim()
            shape[0], shape[d] = real.shape
            keep = keep & real.view(shape)
        return torch.where(keep, x, torch.randn_like(x) * 3)

    def layers(values, token_dims):
        return None if values is None else tuple(scramble(v, token_dims) for v in values)

    return ModelOutputs(out.logits, layers(out.hidden_states, (1,)), layers(out.attention_scores, (2, 3)),
                        layers(out.attention_probs, (2, 3)), layers(out.values, (2,)))


@torch.no_grad()
def _check_ignores_teacher_padding(distiller: Distiller, batch, student_model, teachers) -> None:
    """Each stage's loss is the same whatever the teacher's outputs hold at padded positions."""
    subs = batch if isinstance(batch, dict) else {DOMAINS[0]: batch}
    student_model.eval()
    student_out = {d: student_model(b, distiller.needs) for d, b in subs.items()}
    teacher_out = {d: teachers[d](b, distiller.needs) for d, b in subs.items()}
    scrambled = {d: _scramble_padding(o, subs[d].attention_mask) for d, o in teacher_out.items()}
    for stage in distiller.stages:
        losses = []
        for outs in (teacher_out, scrambled):
            torch.manual_seed(0)  # the same dropout (an HRKD graph's) for both
            losses.append(distiller.multi_domain_loss(batch, student_out, outs, stage) if isinstance(batch, dict)
                          else distiller.loss(batch, student_out[DOMAINS[0]], outs[DOMAINS[0]], stage))
        for part, value in losses[0].items():
            assert torch.allclose(value, losses[1][part], rtol=1e-5, atol=1e-7), \
                (f"{distiller.name} stage {stage!r}: loss part {part!r} changes with what the teacher's outputs hold "
                 "at padded positions, yet reads_teacher_padding is False (cached outputs would change it): "
                 "mask padding out of the loss, or leave reads_teacher_padding True")
