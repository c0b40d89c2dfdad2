"""The machine a run or a profile ran on: what a result records of it, and which kernels torch uses.

Machines of one kind (2 cores) differ by generation: fp32 matrix products about 3 times faster with
AVX-512 than with AVX2 alone; bf16 native with avx512_bf16 or AMX, emulated (hundreds of times
slower than fp32) without. Figures are only comparable between machines that agree here.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

WORKER = "BENCH_WORKER"  # set in a worker's environment by `run --jobs N`: "K/N"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either makes bf16 matrix products native


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux; elsewhere nothing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name"), "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def kernels() -> dict[str, Any]:
    """Which CPU kernels torch picked: its vector capability (e.g. AVX512, AVX2) and its libraries."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available(), "onednn": torch.backends.mkldnn.is_available()}


def machine_info(pm=None, world_size: int = 1) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        **cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "worker": os.environ.get(WORKER),  # "K/N" in `run --jobs N`: N processes shared the cores
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "world_size": world_size,
    }
    if pm is not None:
        pm.hook.bench_machine_info(info=info)
    return info
