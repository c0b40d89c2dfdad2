"""The precision of the teacher's forwards while distilling, and of the student's training
forwards: fp32, or bf16 autocast.

Teacher. Where bf16 matrix products are faster than fp32 ones (GPUs; CPUs with AMX) this speeds up the
teacher's share of a step. Where they are not, it slows it down: on this project's 2-core machines
(AVX-512 BF16, no AMX) `bench profile --method hrkd --suite mnli --teacher random:bert-base
--student random:tinybert-4l312 --teacher-precision bf16` spent 1.72 s a step in the teacher
against 0.78 s in fp32, on 2 threads (autocast also re-casts the fp32 weights at every forward).
Measure before using it. Without native bf16 (no AVX-512 BF16 or AMX) it is emulated, hundreds of
times slower than fp32, and a run or profile that asks for it stops before it starts (`check_native`).
The teacher is frozen, so only its forward is affected; its outputs are handed to the method in
fp32, and the method's losses are computed in fp32 as before. Teachers are always trained in
fp32. Runs with a bf16 teacher are stored and reported apart (`kd@bf16`), since their numbers may
differ; `bench profile --teacher-precision bf16` measures how much.

Student. Mixed-precision training: the student's forward in a training step runs under bf16
autocast, its outputs are handed to the method in fp32, and the loss, the backward's gradients
(of fp32 weights), the optimizer and every evaluation stay fp32, so no loss scaling is needed.
It pays where bf16 matrix products are native and fast (GPUs, CPUs with AMX); the same CPU
check refuses it where bf16 would be emulated. Runs are stored and reported apart
(`kd@student-bf16`).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch

from bench.api import Batch, LazyLayers, ModelOutputs
from bench.errors import BenchError
from bench.machine import BF16_FLAGS, cpu_model

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, whose: str = "teacher") -> str:
    if precision not in PRECISIONS:
        raise BenchError(f"unknown {whose} precision {precision!r}", f"use one of: {', '.join(PRECISIONS)}")
    return precision


def check_native(precision: str, device: torch.device, cpu: dict | None = None,
                 option: str = "--teacher-precision") -> None:
    """Refuse bf16 on a CPU that would emulate it (`cpu`: `machine.cpu_model()`'s record; a CPU
    whose flags are unknown is let through); `option` names the flag that asked for it."""
    cpu = cpu_model() if cpu is None else cpu
    if precision != "bf16" or device.type != "cpu" or "cpu_flags" not in cpu:
        return
    if not set(BF16_FLAGS) & set(cpu["cpu_flags"]):
        raise BenchError(f"{option} bf16 on {cpu.get('cpu_model') or 'this CPU'}, which has no native "
                         f"bf16 ({' or '.join(BF16_FLAGS)}): emulated, it runs hundreds of times slower than fp32",
                         f"run with {option} fp32 (the default), or on a CPU with AVX-512 BF16 or AMX, "
                         "or on a GPU")


def as_fp32(out: ModelOutputs) -> ModelOutputs:
    """Every tensor of `out` in fp32 (autocast leaves matrix products' outputs in bf16); a
    per-layer output computed on first use stays so, each layer cast when it is read."""
    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.float()
        if isinstance(value, LazyLayers):
            return LazyLayers(len(value), lambda i: value[i].float())
        return tuple(v.float() for v in value) if value is not None else None

    return dataclasses.replace(out, **{f.name: cast(getattr(out, f.name)) for f in dataclasses.fields(out)})


class AutocastTeacher(torch.nn.Module):
    """A frozen teacher whose forward runs under bf16 autocast, its outputs returned in fp32."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher

    @property
    def config(self):
        return self.teacher.config

    def forward(self, batch: Batch, *args, **kwargs) -> ModelOutputs:
        with autocast("bf16", batch.input_ids.device.type):
            out = self.teacher(batch, *args, **kwargs)
        return as_fp32(out)


def with_precision(teacher: torch.nn.Module, precision: str) -> torch.nn.Module:
    return AutocastTeacher(teacher) if precision == "bf16" else teacher


def autocast(precision: str, device_type: str):
    """The region a bf16 forward runs in; nothing for fp32."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
