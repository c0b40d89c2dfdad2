"""Training curves where researchers look at them: `run --log-with tensorboard` (or any tracker
accelerate offers) logs each student training's dev evaluations (the loss and its parts, dev
accuracy, per domain for a joint training, the learning rate) through accelerate's trackers, one
directory a run under `<results>/trackers/`, named as the run's result file is."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, unknown_name

# the package each tracker needs, where its pip name is not the tracker's own
PIP_NAMES = {"tensorboard": "kd-bench[tensorboard]", "comet_ml": "comet-ml"}


def known_trackers() -> list[str]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def check_trackers(names: Sequence[str]) -> None:
    """Each of `names` a tracker accelerate knows, with its package installed; checked before anything trains."""
    utils = importlib.import_module("accelerate.utils")
    for name in names:
        if name not in known_trackers():
            raise unknown_name("tracker", name, known_trackers(),
                               hint=f"pass --log-with one of {', '.join(known_trackers())}, or leave it out")
        if not getattr(utils, f"is_{name}_available")():
            raise BenchError(f"--log-with {name}: the {name} package is not installed",
                             f"pip install {PIP_NAMES.get(name, name)}, or leave --log-with out")


class CurveLog:
    """One training's trackers: `log(entry, lr)` at each dev evaluation, `close()` at its end."""

    def __init__(self, names: Sequence[str], folder: Path, run_name: str, config: dict[str, Any]):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_name, folder) if cls.requires_logging_directory else cls(run_name)
            tracker.start()
            tracker.store_init_configuration(config)
            self.trackers.append(tracker)

    def log(self, entry: dict[str, Any], lr: float) -> None:
        """A history entry of `bench.training.loop.fit` (step, loss, its parts, dev accuracy, per-domain dev)."""
        values = {k: v for k, v in entry.items() if isinstance(v, int | float) and k != "step"}
        values.update({f"dev_accuracy/{d}": v for d, v in entry.get("dev", {}).items()})
        values["lr"] = lr
        for tracker in self.trackers:
            tracker.log(values, step=entry["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
