"""Patient knowledge distillation, PKD-skip (Sun, Cheng, Gan and Liu 2019, "Patient Knowledge
Distillation for BERT Model Compression", EMNLP; code: intersun/PKD-for-BERT-Model-Compression).

L = (1 - a) CE(zs, y) + a * KD(T) + b * L_PT, where L_PT compares the L2-normalised [CLS] hidden
states of student layer m and teacher layer g(m) = m * N / M (layer 0 is the embeddings).

What the authors' code does, and this plugin by default:
- PKD-skip leaves out the student's last layer (`full_output[:-1]`): its [CLS] state feeds the
  classifier, which KD(T) already teaches. A 6-layer student of a 12-layer teacher learns from
  teacher layers 2, 4, 6, 8, 10 (`--fc_layer_idx 1,3,5,7,9`, 0-based). A student cut from its teacher
  learns instead from the layers it starts as copies of (bench.losses.default_layer_map), less the
  last. `layer_map` overrides both.
- L_PT is `F.mse_loss` of the normalised states: a mean over examples, layers and hidden units.
  The paper writes a sum over layers of squared distances; `pt_reduction="sum"` sums over
  layers and hidden units (mean over examples).
- KD(T) is `nn.KLDivLoss(reduction="mean")` times T^2: the mean runs over classes as well as
  examples, so it is the paper's KL divided by the number of classes. `kd_reduction="batchmean"`
  gives the paper's (and Hinton's) per-example KL.
- Defaults a = 0.7, b = 500, T = 10: the code's predefined PKD run (`get_predefine_argv(...,
  "kd.cls")` in src/argument_parser.py, with `--normalize_patience True`); the paper searched
  a in {0.2, 0.5, 0.7}, b in {10, 100, 500, 1000}, T in {5, 10, 20}.
Normalised states are compared directly, so teacher and student must have the same width (PKD
truncates the teacher to make the student); the distiller refuses other pairs when built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api import Distiller
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.losses import default_layer_map, fit_layer_map, kd_kl, parse_layer_map


def patience_loss(student_cls: torch.Tensor, teacher_cls: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared distance of L2-normalised [CLS] states (batch, layers, hidden): "mean" over every
    element (the authors' code), or "sum" over layers and hidden units, mean over examples (the paper)."""
    diff = (F.normalize(student_cls, p=2, dim=-1) - F.normalize(teacher_cls, p=2, dim=-1)) ** 2
    return diff.mean() if reduction == "mean" else diff.sum(dim=(1, 2)).mean()


class PKD(Distiller):
    name = "pkd"
    description = "Patient KD (PKD-skip): (1-a) CE + a KD(T) + b * MSE of normalised [CLS] states, every k-th layer"
    needs = frozenset({"logits", "hidden"})
    reads_teacher_padding = False  # [CLS] states and logits only
    teacher_kind = "single"

    @dataclass
    class Options:
        alpha: float = 0.7
        temperature: float = 10.0
        beta: float = 500.0
        layer_map: tuple[int, ...] | None = None  # teacher layer per student layer 1..k; None: PKD-skip
        kd_reduction: str = "elementwise"  # the code's KLDivLoss "mean"; "batchmean": the paper's
        pt_reduction: str = "mean"  # the code's MSE; "sum": the paper's sum over layers and units

        def __post_init__(self):
            if self.temperature <= 0:
                raise BenchError(f"pkd temperature must be positive, got {self.temperature}",
                                 "set temperature to a value > 0 (10 by default)")
            if not 0.0 <= self.alpha <= 1.0:
                raise BenchError(f"pkd alpha must lie in [0, 1], got {self.alpha}",
                                 "set alpha between 0 (labels only) and 1 (teacher only)")
            if self.beta < 0:
                raise BenchError(f"pkd beta must not be negative, got {self.beta}",
                                 "set beta >= 0 (500 by default; 0 turns the patience loss off)")
            if self.kd_reduction not in ("elementwise", "batchmean"):
                raise BenchError(f"pkd kd_reduction {self.kd_reduction!r} is not known",
                                 "use 'elementwise' (the authors' code) or 'batchmean' (the paper)")
            if self.pt_reduction not in ("mean", "sum"):
                raise BenchError(f"pkd pt_reduction {self.pt_reduction!r} is not known",
                                 "use 'mean' (the authors' code) or 'sum' (the paper)")
            self.layer_map = parse_layer_map(self.layer_map, "pkd")

    def __init__(self, options=None):
        super().__init__(options)
        self.teacher_layers: tuple[int, ...] | None = None  # fitted to the two models in extra_modules

    def extra_modules(self, teacher_config, student_config):
        n_teacher, n_student = teacher_config.num_hidden_layers, student_config.num_hidden_layers
        if teacher_config.hidden_size != student_config.hidden_size:
            raise BenchError(
                f"pkd compares [CLS] states directly, but the teacher is {teacher_config.hidden_size} wide "
                f"and the student {student_config.hidden_size}",
                "use a student as wide as the teacher (e.g. one truncated from it), or tinybert, which "
                "learns projections")
        if self.options.layer_map is not None:
            self.teacher_layers = fit_layer_map(self.options.layer_map, n_teacher, n_student, "pkd")
        else:
            self.teacher_layers = default_layer_map(n_teacher, n_student, "pkd", self.student_copies)[:-1]
            if not self.teacher_layers:
                raise BenchError(
                    "pkd-skip leaves out the student's last layer, so a 1-layer student has none to learn from",
                    f"use kd, or give the pkd option layer_map [{n_teacher}] to match the last layers")
        return None

    def loss(self, batch, student_out, teacher_out, stage):
        o = self.options
        if self.teacher_layers is None:
            raise RuntimeError("pkd: extra_modules() fits the layer map to the models; call it before loss()")
        kd = kd_kl(student_out.logits, teacher_out.logits, o.temperature)
        if o.kd_reduction == "elementwise":
            kd = kd / student_out.logits.shape[-1]
        # [CLS] of student layers 1..k and of their teacher layers: (batch, k, hidden)
        student_layers = range(1, len(self.teacher_layers) + 1)
        student_cls = torch.stack([student_out.hidden_states[m][:, 0] for m in student_layers], 1)
        teacher_cls = torch.stack([teacher_out.hidden_states[g][:, 0] for g in self.teacher_layers], 1)
        return {
            "kd": o.alpha * kd,
            "ce": (1 - o.alpha) * F.cross_entropy(student_out.logits, batch.labels),
            "patience": o.beta * patience_loss(student_cls, teacher_cls, o.pt_reduction),
        }


@hookimpl
def bench_register_distillers(register):
    register(PKD)
