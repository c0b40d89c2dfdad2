"""Training checkpoints, so that a killed run resumes where it stood and ends as if never stopped.

A checkpoint holds everything the loop's future depends on: the model and the training-only
modules, the optimizer and the schedule, every random generator the step draws from, where the
data stood (epoch and step within it; the loaders' shuffles depend on nothing else), the best dev
checkpoints so far and the history. It is written to a temp file and renamed, so a kill while
writing leaves the previous one, and read with `torch.load(weights_only=True)`: data, never code.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.copy()), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the tuples it gave; a round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class Checkpoint:
    """One training's checkpoint file, `<folder>/<name>.pt`."""

    def __init__(self, folder: Path, name: str = "train"):
        self.folder = Path(folder)
        self.path = self.folder / f"{name}.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT:
            return None  # written by another version: start over rather than guess
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def remove_folder(folder: Path) -> None:
    """Drop a finished run's checkpoints (and the folder, when nothing else is in it)."""
    shutil.rmtree(folder, ignore_errors=True)
