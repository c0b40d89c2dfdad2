"""Every registered distiller passes the conformance check plugin authors run on theirs."""

import pytest
import torch.nn.functional as F

from bench.api import Distiller
from bench.plugins import get_registry
from bench.testing import check_distiller


@pytest.mark.parametrize("name", sorted(get_registry().distillers))
def test_registered_distiller_conforms(name):
    check_distiller(get_registry().distiller(name))


def test_tinybert_two_stage_conforms():
    check_distiller(get_registry().distiller("tinybert"), {"two_stage": True})


def test_tinybert_with_padded_means_conforms():  # it then says it reads padding, and is not cached
    check_distiller(get_registry().distiller("tinybert"), {"loss_padding": True})


class UsesUndeclaredHidden(Distiller):
    name = "sneaky"
    needs = frozenset({"logits"})

    def loss(self, batch, student_out, teacher_out, stage):
        return {"mse": F.mse_loss(student_out.hidden_states[-1][:, 0], teacher_out.hidden_states[-1][:, 0])}


class IgnoresTheStudent(Distiller):
    name = "detached"
    needs = frozenset({"logits"})

    def loss(self, batch, student_out, teacher_out, stage):
        return {"kd": F.cross_entropy(teacher_out.logits, batch.labels)}


class ReadsPaddingButSaysNot(Distiller):
    name = "padded-mse"
    needs = frozenset({"logits", "hidden"})
    reads_teacher_padding = False  # wrong: the MSE runs over the padded batch

    def loss(self, batch, student_out, teacher_out, stage):
        return {"mse": F.mse_loss(student_out.hidden_states[-1], teacher_out.hidden_states[-1])}


@pytest.mark.parametrize("cls,message", [
    (UsesUndeclaredHidden, "declared needs"),
    (IgnoresTheStudent, "does not depend on the student"),
    (ReadsPaddingButSaysNot, "at padded positions, yet reads_teacher_padding is False"),
])
def test_the_check_catches_broken_distillers(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_distiller(cls)
