"""A student's stages (TinyBERT: intermediate, then prediction) as a run goes through them:
each with its checkpoint under `<results>/.checkpoints/`, a stage finished before a kill loaded
rather than trained again, and each stage's curves to the trackers (--log-with)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.api import Distiller
from bench.training.agreement import agree_on_failure, own_work
from bench.training.checkpoint import Checkpoint, remove_folder
from bench.training.context import GridContext
from bench.training.loop import FitResult, Selection
from bench.training.tracking import CurveLog
from bench.training.trainer import Trained

if TYPE_CHECKING:
    from bench.results.records import RunKey

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, ctx: GridContext):
        self.ctx = ctx

    def checkpoint_folder(self, key: RunKey) -> Path:
        """`<results>/.checkpoints/<suite>/<preset>/<method>/<domain>/seed<N>/`: beside the results,
        so a run resumes wherever the results dir is (another node of a cluster)."""
        return key.path(Path(self.ctx.grid.results_dir) / ".checkpoints").with_suffix("")

    def checkpoints(self, key: RunKey, distiller: Distiller) -> list[tuple[str, Checkpoint]]:
        """Each stage of a run with its checkpoint. Without --resume a killed run's checkpoints are
        discarded: they may come from other code or settings."""
        folder = self.checkpoint_folder(key)
        if folder.exists() and not self.ctx.grid.resume and self.ctx.main:
            log.info("discarding the checkpoints of an earlier %s/%s seed %d (--resume continues from them)",
                     key.method, key.domain, key.seed)
            remove_folder(folder)
        self.ctx.accelerator.wait_for_everyone()
        return [(stage, Checkpoint(folder, f"{i}-{stage}")) for i, stage in enumerate(distiller.stages)]

    def resumable(self, stage: str, checkpoint: Checkpoint, student, extra, train):
        """`train(stage, checkpoint)` (a Trained, or one per domain), unless the stage had finished
        before the run was killed: then its outcome and the student it left are loaded."""
        done = Checkpoint(checkpoint.folder, checkpoint.path.stem + ".done")
        if (saved := done.load()) is not None:
            student.load_state_dict(saved["student"])
            if extra is not None:
                extra.load_state_dict(saved["extra"])
            log.info("stage %s was done before the run stopped: loaded from %s", checkpoint.path.stem, done.path)
            return _trained_from_state(saved["trained"])
        trained = train(stage, checkpoint)
        if not self.ctx.grid.checkpoint_every:
            return trained

        def save_done() -> None:
            done.save({"student": student.state_dict(), "extra": extra.state_dict() if extra is not None else None,
                       "trained": _trained_state(trained)})
            checkpoint.remove()

        # the main process alone writes: the others hear of a failed write here, not at their next collective
        accelerator = self.ctx.accelerator
        raised = own_work(save_done, accelerator) if self.ctx.main else None
        agree_on_failure(raised, f"stage {checkpoint.path.stem}", "while saving its outcome", accelerator)
        return trained

    @contextlib.contextmanager
    def curve_log(self, key: RunKey, distiller: Distiller, stage: str):
        """The trackers of one stage's training (--log-with), on the main process; None without."""
        grid = self.ctx.grid
        if not grid.log_with or not self.ctx.main:
            yield None
            return
        run = key.path(".").with_suffix("").as_posix().removeprefix("./")
        run += f"/{stage}" if len(distiller.stages) > 1 else ""
        config = {"method": key.method, "domain": key.domain, "seed": key.seed, "preset": key.preset,
                  "stage": stage, **grid.preset.student_train.to_dict()}
        curves = CurveLog(grid.log_with, Path(grid.results_dir) / "trackers", run,
                          {k: v for k, v in config.items() if v is not None})
        try:
            yield curves
        finally:
            curves.close()


def _trained_state(trained: Trained | dict[str, Trained]) -> dict[str, Any]:
    """A stage's outcome as checkpoint data: the fit's figures and each selection with its state."""
    per = trained if isinstance(trained, dict) else {"": trained}
    fit = next(iter(per.values())).fit
    return {"fit": {"steps": fit.steps, "examples": fit.examples, "wall_seconds": fit.wall_seconds,
                    "history": fit.history, "selections": {k: vars(v) for k, v in fit.selections.items()}},
            "domains": {d: {"selection": vars(t.selection), "test_preds": t.test_preds, "test_golds": t.test_golds}
                        for d, t in per.items()}}


def _trained_from_state(state: dict[str, Any]) -> Trained | dict[str, Trained]:
    """A stage's outcome as a killed process left it: all its training time was spent there."""
    f = state["fit"]
    fit = FitResult(f["steps"], f["examples"], f["wall_seconds"],
                    {k: Selection(**v) for k, v in f["selections"].items()}, f["history"],
                    resumed_seconds=f["wall_seconds"])
    per = {d: Trained(fit, Selection(**t["selection"]), t["test_preds"], t["test_golds"])
           for d, t in state["domains"].items()}
    return per[""] if list(per) == [""] else per
