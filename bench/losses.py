"""Loss building blocks that several methods share. Plugins import these; never each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(softmax(zt/T) || softmax(zs/T)), summed over classes,
    averaged over examples. The T^2 keeps its gradients on the scale of the hard-label term."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * t * t

