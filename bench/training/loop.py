"""The one training loop (teachers and students alike) and model selection on dev.

AdamW with weight decay (none on biases and LayerNorm), linear warm-up then linear decay,
grad-norm clipping, dev evaluation every K steps; the best dev checkpoint is the one kept.
Written against `accelerate.Accelerator`, so `accelerate launch` runs it unchanged. With several
processes, a step that fails on any of them (an exception, a loss that is not finite) stops the
run on all of them at that step (`check_finite`), and so does an exception in one process's part
of a prediction batch (`predict`): each failure travels in a collective the step or the batch
makes anyway, so no process waits forever for one that raised (bench.training.agreement).
Predictions for dev and test: bench.training.predict.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.api import Batch, MultiDomainBatch
from bench.data.batching import batch_examples, seek
from bench.models.classifier import clone_state
from bench.presets import TrainConfig
from bench.training.agreement import agree_on_failure, check_finite, own_work
from bench.training.checkpoint import Checkpoint, rng_state, set_rng_state
from bench.training.memory import HeapCreep, release_free_heap

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """The best dev checkpoint under one selection key (a domain, or the mean over domains)."""

    step: int
    dev_accuracy: float
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    extra_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the extra modules then


@dataclass
class FitResult:
    steps: int
    examples: int
    wall_seconds: float
    selections: dict[str, Selection]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_seconds: float = 0.0  # of wall_seconds, what processes killed before this one spent

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def selection(self) -> Selection:
        """The one selection of a fit selected on a single dev figure."""
        if len(self.selections) != 1:
            raise ValueError(f"this fit kept {len(self.selections)} checkpoints; pick one of {sorted(self.selections)}")
        return next(iter(self.selections.values()))

    @property
    def selected_step(self) -> int:
        return self.selection.step

    @property
    def best_dev_accuracy(self) -> float:
        return self.selection.dev_accuracy


def untimed(phase: str) -> contextlib.AbstractContextManager:
    """The timer of an ordinary run: times nothing."""
    return contextlib.nullcontext()


def local_step(compute_loss: Callable, batch, accelerator, timer: Callable[[str], contextlib.AbstractContextManager]
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, Exception | None]:
    """This process's part of a step: forward, loss, backward; `(parts, loss, None)`. With several
    processes an exception is returned, `({}, None, exc)`, for check_finite to tell the others."""
    try:
        parts = compute_loss(batch)
        loss = sum(parts.values())
        with timer("backward"):
            accelerator.backward(loss)
    except Exception as exc:  # noqa: BLE001 - the others must hear of it, or they wait for this process forever
        if accelerator.num_processes == 1:
            raise
        return {}, None, exc
    return parts, loss, None


def make_accelerator():
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    # Under torchrun or `accelerate launch` on a machine without an accelerator, accelerate runs
    # the processes as one group (gloo) only when told the job is on the CPU.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = several and not torch.accelerator.is_available()
    # The preset's batch is the global batch: each of N processes takes 1/N of every batch, so a
    # run on N processes takes the steps, schedule and evaluations of the 1-process run.
    return Accelerator(cpu=cpu, dataloader_config=DataLoaderConfiguration(split_batches=several))


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only, as BERT's recipe does: biases and LayerNorm weights are left alone."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def average_gradients(params: list[torch.Tensor], accelerator) -> None:
    """Average the gradients over the processes (each computed them on its part of the batch), in
    one all-reduce of all of them. A parameter no process gave a gradient keeps none (AdamW then
    leaves it alone, as on one process); one that only some did counts as zero on the others."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=accelerator.device)
    dist.all_reduce(has)
    params = [p for p, n in zip(params, has.tolist()) if n > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= accelerator.num_processes
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def make_optimizer(modules: Iterable[nn.Module], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where PyTorch has one (CPU, CUDA). The students here keep most of
    their parameters in the embeddings (17M in a 3-layer MiniLM), so the optimizer step weighs:
    `bench profile --method tinybert --suite mnli --domains fiction --batch-per-domain 16` on one
    thread showed it at 385 ms a step with the per-tensor kernels and 73 ms fused."""
    return torch.optim.AdamW(param_groups(modules, config.weight_decay), lr=config.lr,
                             fused=device.type in ("cpu", "cuda"))


def fit(
    model: nn.Module,
    train_loader: Iterable,
    compute_loss: Callable[[Batch | MultiDomainBatch], dict[str, torch.Tensor]],
    evaluate: Callable[[], float | dict[str, float]],
    config: TrainConfig,
    accelerator,
    extra_modules: nn.Module | None = None,
    desc: str = "train",
    trace: Callable[[], dict[str, Any] | None] | None = None,
    select_on_mean: bool = False,
    select_best: bool = True,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    timer: Callable[[str], contextlib.AbstractContextManager] = untimed,
    curves: Callable[[dict[str, Any], float], None] | None = None,
) -> FitResult:
    """Train `model` (and `extra_modules`) on `compute_loss`, keep the best dev checkpoints.

    `train_loader` is a DataLoader (prepared here) or a MultiDomainLoader of prepared loaders.
    `compute_loss(batch)` returns named loss parts whose sum is minimised; `evaluate()`
    returns the dev accuracy of `model` (called in eval mode), or one per domain: then the
    best checkpoint of each is kept (HRKD's multi-domain models). With one dev figure `model`
    ends with the weights of its best step (the earliest, on ties); with several it keeps its
    last weights, and `selections[key].state` holds each best. `trace()`, asked at each dev
    evaluation, adds what a method wants recorded to that step's history. `select_on_mean`:
    one checkpoint, the best on the mean of the dev figures (a model trained on the union).
    `select_best=False`: keep the last weights instead (a stage that does not train the
    classifier, whose dev accuracy says nothing). With a `checkpoint`, the loop saves its whole
    state every `checkpoint_every` steps and, when the checkpoint holds one, resumes from it.
    `timer(phase)` times the backward pass and the optimizer step (`bench profile`). `curves(entry,
    lr)` hears of each dev evaluation's history entry and the learning rate (bench.training.tracking).
    """
    loop = FitLoop(model, train_loader, config, accelerator, extra_modules, desc)
    if checkpoint is not None:
        loop.resume(checkpoint)
    return loop.run(compute_loss, evaluate, Evaluation(trace, select_on_mean, select_best, curves),
                    checkpoint, checkpoint_every, timer)


@dataclass(frozen=True)
class Evaluation:
    """What `fit` does at each dev evaluation besides recording it (see `fit`)."""

    trace: Callable[[], dict[str, Any] | None] | None = None
    select_on_mean: bool = False
    select_best: bool = True
    curves: Callable[[dict[str, Any], float], None] | None = None


class FitLoop:
    """One training's optimiser, schedule and progress: everything a checkpoint saves and a
    resumed training restores."""

    def __init__(self, model: nn.Module, train_loader: Iterable, config: TrainConfig, accelerator,
                 extra_modules: nn.Module | None, desc: str):
        from transformers import get_linear_schedule_with_warmup

        self.model, self.extra_modules, self.accelerator, self.desc = model, extra_modules, accelerator, desc
        self.steps_per_epoch = len(train_loader)
        self.total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total = min(self.total, config.max_steps)
        self.eval_every = config.eval_every or self.steps_per_epoch
        self.max_grad_norm = config.max_grad_norm
        self.trained = [model] + ([extra_modules] if extra_modules is not None else [])
        optimizer = make_optimizer(self.trained, config, accelerator.device)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, math.ceil(config.warmup_ratio * self.total), max(self.total, 1))
        # The models are not wrapped in DDP: methods call them inside their own closures (the runner's
        # forwards, a teacher objective), which a wrapper's forward would not see, so its gradient
        # all-reduce would silently not happen. average_gradients() syncs them after each backward.
        self.optimizer, self.scheduler = accelerator.prepare(optimizer, scheduler)
        for module in self.trained:
            module.to(accelerator.device)
        if isinstance(train_loader, torch.utils.data.DataLoader):
            train_loader = accelerator.prepare(train_loader)
        self.train_loader = train_loader
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.selections: dict[str, Selection] = {}
        self.history: list[dict[str, Any]] = []
        self.step = self.examples = self.epoch = self.epoch_step = 0
        self.wall_before = 0.0  # training time spent before a resume
        self.start = 0.0  # when run() starts: a resume between does not count as training time

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from `checkpoint` where it holds a saved training (else start afresh)."""
        if (saved := checkpoint.load()) is None:
            return
        self.model.load_state_dict(saved["model"])
        if self.extra_modules is not None:
            self.extra_modules.load_state_dict(saved["extra"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.step, self.examples, self.epoch = saved["step"], saved["examples"], saved["epoch"]
        self.epoch_step, self.wall_before, self.history = saved["epoch_step"], saved["wall_seconds"], saved["history"]
        self.selections = {k: Selection(**v) for k, v in saved["selections"].items()}
        set_rng_state(saved["rng"])
        seek(self.train_loader, self.epoch, self.epoch_step)
        log.info("%s: resuming at step %d/%d from %s", self.desc, self.step, self.total, checkpoint.path)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.start

    def save(self, checkpoint: Checkpoint) -> None:
        at_end = self.epoch_step == self.steps_per_epoch  # the next pass is the next epoch's first
        checkpoint.save({
            "model": self.model.state_dict(),
            "extra": self.extra_modules.state_dict() if self.extra_modules is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "examples": self.examples, "epoch": self.epoch + at_end,
            "epoch_step": 0 if at_end else self.epoch_step, "wall_seconds": self.wall_seconds(),
            "history": self.history, "selections": {k: vars(v) for k, v in self.selections.items()},
            "rng": rng_state()})

    def note_evaluation(self, dev: dict[str, float], loss: torch.Tensor, parts: dict[str, torch.Tensor],
                        rate: float, how: Evaluation) -> None:
        """This process's record of a dev evaluation: the history entry (with the method's trace)
        and the best checkpoints."""
        acc = sum(dev.values()) / len(dev)
        entry = {"step": self.step, "loss": loss.item(), "dev_accuracy": acc,
                 **{k: v.item() for k, v in parts.items()}}
        if len(dev) > 1:
            entry["dev"] = dict(dev)
        if how.trace is not None and (traced := how.trace()) is not None:
            entry["trace"] = traced
        self.history.append(entry)
        if how.curves is not None:
            how.curves(entry, self.scheduler.get_last_lr()[0])
        log.info("%s: step %d/%d loss %.4f dev accuracy %.4f (%.1f ex/s)", self.desc, self.step, self.total,
                 loss.item(), acc, rate)
        snapshot = None  # one copy for every domain whose best is this step
        for key, value in ({"mean": acc} if how.select_on_mean else dev).items():
            if key not in self.selections or value > self.selections[key].dev_accuracy or not how.select_best:
                snapshot = snapshot or (clone_state(self.model), clone_state(self.extra_modules)
                                        if self.extra_modules is not None else None)
                self.selections[key] = Selection(self.step, value, *snapshot)

    def optimizer_step(self, timer) -> None:
        with timer("backward"):
            average_gradients(self.params, self.accelerator)
        with timer("optimizer"):
            if self.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def run(self, compute_loss, evaluate, how: Evaluation, checkpoint: Checkpoint | None, checkpoint_every: int,
            timer) -> FitResult:
        accelerator = self.accelerator
        self.start = time.perf_counter()
        creep = HeapCreep()
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, unit="step", dynamic_ncols=True, leave=False,
                   disable=None if accelerator.is_main_process else True)
        raised = None  # an exception of its own work (evaluation records, checkpoints), told at the next check
        while self.step < self.total:
            for batch in self.train_loader:
                for m in self.trained:
                    m.train()
                # Each process's part of the step, then one all-reduce of whether it failed: every process
                # stops together, before the gradient all-reduce that a failed one would never join.
                parts, loss, failed = local_step(compute_loss, batch, accelerator, timer)
                check_finite(loss, parts, self.desc, self.step + 1, accelerator, raised or failed)
                self.optimizer_step(timer)
                creep.step_done()
                self.step += 1
                self.epoch_step += 1
                self.examples += batch_examples(batch) * accelerator.num_processes  # every process took its part
                rate = self.examples / max(self.wall_seconds(), 1e-9)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}", ex_s=f"{rate:.1f}", refresh=False)
                if self.step % self.eval_every == 0 or self.step == self.total:
                    for m in self.trained:
                        m.eval()
                    # glibc's heap fragments over steps of many tensor sizes and never shrinks on its own;
                    # trimmed here (cheap, unlike per step) so evaluation and checkpoints run on a lean heap
                    release_free_heap()
                    dev = evaluate()  # predict stops every process together when one raises in it
                    dev = dev if isinstance(dev, dict) else {"dev": dev}
                    raised = raised or own_work(lambda: self.note_evaluation(dev, loss, parts, rate, how),
                                                accelerator)
                if (checkpoint is not None and checkpoint_every and self.step % checkpoint_every == 0
                        and self.step < self.total and accelerator.is_main_process):
                    # the main process alone writes: the others hear of it
                    raised = raised or own_work(lambda: self.save(checkpoint), accelerator)
                if self.step >= self.total:
                    break
            else:  # a whole pass: the next one is the next epoch's
                self.epoch, self.epoch_step = self.epoch + 1, 0
        bar.close()
        agree_on_failure(raised, self.desc, f"at step {self.step}", accelerator)  # what the last evaluation raised
        if creep.trims:
            log.info("%s: heap trimmed %d times as it crept", self.desc, creep.trims)
        return self.finish()

    def finish(self) -> FitResult:
        wall = self.wall_seconds()
        self.accelerator.free_memory()  # drop the accelerator's references, or every run of a grid stays in memory
        if len(self.selections) == 1:
            chosen = next(iter(self.selections.values()))
            self.model.load_state_dict(chosen.state)
            if self.extra_modules is not None:  # trained with the model: kept as they were at the chosen step
                self.extra_modules.load_state_dict(chosen.extra_state)
        self.model.eval()
        return FitResult(steps=self.step, examples=self.examples, wall_seconds=wall, selections=self.selections,
                         history=self.history, resumed_seconds=self.wall_before)
