"""The one training loop (teachers and students alike) and model selection on dev.

AdamW with weight decay (none on biases and LayerNorm), linear warm-up then linear decay,
grad-norm clipping, dev evaluation every K steps; the best dev checkpoint is the one kept.
Written against `accelerate.Accelerator`, so `accelerate launch` runs it unchanged. With several
processes, a step that fails on any of them (an exception, a loss that is not finite) stops the
run on all of them at that step (`check_finite`), and so does an exception in one process's part
of a prediction batch (`predict`): each failure travels in a collective the step or the batch
makes anyway, so no process waits forever for one that raised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.api import Batch, MultiDomainBatch
from bench.checkpoint import Checkpoint, rng_state, set_rng_state
from bench.data import batch_examples, row_order, seek
from bench.errors import BenchError
from bench.memory import HeapCreep, release_free_heap
from bench.models import clone_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 0  # steps between dev evaluations; 0: at the end of each epoch
    max_steps: int | None = None  # stop early (smoke runs); None: epochs decide
    # Batches of rows of similar length: each pass is cut into chunks of this many batches, sorted
    # by length (bench.data.SeededShuffle); 0: plain shuffling.
    length_buckets: int = 50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class NonFiniteLoss(BenchError):
    """A loss that became NaN or infinite: the run stops at that step, before the weights are spoilt."""


class ProcessFailed(BenchError):
    """Another process of the run raised: this one stops the run at the same point."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text: a ProcessFailed's cause,
    so that the run's failure record holds it."""

    def __str__(self) -> str:
        return f"\n\n{self.args[0]}"


OK, NON_FINITE, RAISED = 0.0, 1.0, 2.0  # a process's state at the end of its part of a step


def process_states(state: float | torch.Tensor, accelerator) -> list[float]:
    """Every process's state, this one's `state` at its index, in one all-reduce."""
    states = torch.zeros(accelerator.num_processes, device=accelerator.device)
    states[accelerator.process_index] = state
    if accelerator.num_processes > 1:
        states = accelerator.reduce(states, reduction="sum")
    return states.tolist()  # the one wait for the device


def check_finite(loss: torch.Tensor | None, parts: dict[str, torch.Tensor], desc: str, step: int, accelerator,
                 raised: Exception | None = None) -> None:
    """Stop the run on every process at this step when any process's part of it failed: where a
    loss is NaN or infinite with NonFiniteLoss; where a process raised (`raised`), there with its
    own exception and on the others with ProcessFailed. The processes' states travel in one
    all-reduce; without it the others would wait forever at the next gradient all-reduce."""
    if raised is not None and accelerator.num_processes == 1:
        raise raised
    states = process_states(RAISED if raised is not None else torch.where(
        torch.isfinite(loss.detach()).all(), OK, NON_FINITE), accelerator)
    if RAISED in states:
        stop_after_failure(raised, states.index(RAISED), desc, f"at step {step}", accelerator)
    if NON_FINITE not in states:
        return
    bad = ", ".join(f"{k}={v.item():g}" for k, v in parts.items() if not torch.isfinite(v.detach()).all())
    raise NonFiniteLoss(
        f"{desc}: the loss is {loss.item():g} at step {step}" + (f" ({bad})" if bad else " on another process"),
        "lower the learning rate (and check the method's loss for a log of 0 or a division by 0); "
        "the run is stopped, the grid goes on")


def agree_on_failure(raised: Exception | None, desc: str, where: str, accelerator) -> None:
    """Raise on every process when any raised (`raised`: this one's exception, or None), as
    check_finite does, in one all-reduce: after work not every process does (the main process's
    writes) or whose exceptions were kept for the others, before any process's next collective."""
    if accelerator.num_processes == 1:
        if raised is not None:
            raise raised
        return
    states = process_states(RAISED if raised is not None else OK, accelerator)
    if RAISED in states:
        stop_after_failure(raised, states.index(RAISED), desc, where, accelerator)


def own_work(work: Callable[[], Any], accelerator) -> Exception | None:
    """Run `work`, which makes no collective. With several processes its exception is returned, to
    be told to the others at the next check (check_finite, agree_on_failure): raised here, it would
    leave them waiting for this process at their next collective forever."""
    try:
        work()
    except Exception as exc:  # noqa: BLE001 - the others must hear of it
        if accelerator.num_processes == 1:
            raise
        return exc
    return None


def stop_after_failure(raised: Exception | None, failed: int, desc: str, where: str, accelerator) -> None:
    """Raise on every process once process `failed` raised `where` ("at step 3"): that one its own
    exception, the others a ProcessFailed with its error and traceback, which only it holds
    (gathered on this path only)."""
    import torch.distributed as dist

    errors = [None] * accelerator.num_processes
    dist.all_gather_object(errors, None if raised is None else (one_line(raised), "".join(
        traceback.format_exception(raised))))
    if raised is not None:
        raise raised
    error, trace = errors[failed]
    raised_where = f"raised {where}" if where else "raised"
    raise ProcessFailed(f"{desc}: process {failed} of {accelerator.num_processes} {raised_where}: {error}",
                        f"process {failed}'s traceback opens the run's traceback file (under .failed/); the run "
                        "is stopped on every process, the grid goes on") from RemoteTraceback(trace)


def one_line(exc: BaseException) -> str:
    """`Type: the first line of its message`, as a failure record names an error."""
    text = exc.what if isinstance(exc, BenchError) else str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


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
    lr)` hears of each dev evaluation's history entry and the learning rate (bench.tracking).
    """
    from transformers import get_linear_schedule_with_warmup

    steps_per_epoch = len(train_loader)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch
    trained = [model] + ([extra_modules] if extra_modules is not None else [])
    optimizer = make_optimizer(trained, config, accelerator.device)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total), max(total, 1))
    # The models are not wrapped in DDP: methods call them inside their own closures (the runner's
    # forwards, a teacher objective), which a wrapper's forward would not see, so its gradient
    # all-reduce would silently not happen. average_gradients() syncs them after each backward.
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    for module in trained:
        module.to(accelerator.device)
    if isinstance(train_loader, torch.utils.data.DataLoader):
        train_loader = accelerator.prepare(train_loader)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    selections: dict[str, Selection] = {}
    history: list[dict[str, Any]] = []
    step = examples = epoch = epoch_step = 0
    wall_before = 0.0
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        model.load_state_dict(saved["model"])
        if extra_modules is not None:
            extra_modules.load_state_dict(saved["extra"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, examples, epoch, epoch_step = saved["step"], saved["examples"], saved["epoch"], saved["epoch_step"]
        wall_before, history = saved["wall_seconds"], saved["history"]
        selections = {k: Selection(**v) for k, v in saved["selections"].items()}
        set_rng_state(saved["rng"])
        seek(train_loader, epoch, epoch_step)
        log.info("%s: resuming at step %d/%d from %s", desc, step, total, checkpoint.path)

    def save_checkpoint() -> None:
        at_end = epoch_step == steps_per_epoch  # the next pass is the next epoch's first
        checkpoint.save({
            "model": model.state_dict(),
            "extra": extra_modules.state_dict() if extra_modules is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "examples": examples, "epoch": epoch + at_end, "epoch_step": 0 if at_end else epoch_step,
            "wall_seconds": wall_before + time.perf_counter() - start, "history": history,
            "selections": {k: vars(v) for k, v in selections.items()}, "rng": rng_state()})

    def note_evaluation(dev: dict[str, float]) -> None:
        """This process's record of a dev evaluation: the history entry (with the method's trace)
        and the best checkpoints."""
        acc = sum(dev.values()) / len(dev)
        entry = {"step": step, "loss": loss.item(), "dev_accuracy": acc, **{k: v.item() for k, v in parts.items()}}
        if len(dev) > 1:
            entry["dev"] = dict(dev)
        if trace is not None and (traced := trace()) is not None:
            entry["trace"] = traced
        history.append(entry)
        if curves is not None:
            curves(entry, scheduler.get_last_lr()[0])
        log.info("%s: step %d/%d loss %.4f dev accuracy %.4f (%.1f ex/s)", desc, step, total, loss.item(), acc, rate)
        snapshot = None  # one copy for every domain whose best is this step
        for key, value in ({"mean": acc} if select_on_mean else dev).items():
            if key not in selections or value > selections[key].dev_accuracy or not select_best:
                snapshot = snapshot or (clone_state(model), clone_state(extra_modules)
                                        if extra_modules is not None else None)
                selections[key] = Selection(step, value, *snapshot)

    start = time.perf_counter()
    creep = HeapCreep()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, leave=False,
               disable=None if accelerator.is_main_process else True)
    raised = None  # an exception of this process's own work (evaluation records, checkpoints), told at the next check
    while step < total:
        for batch in train_loader:
            for m in trained:
                m.train()
            # Each process's part of the step, then one all-reduce of whether it failed: every process
            # stops together, before the gradient all-reduce that a failed one would never join.
            parts, loss, failed = local_step(compute_loss, batch, accelerator, timer)
            check_finite(loss, parts, desc, step + 1, accelerator, raised or failed)
            with timer("backward"):
                average_gradients(params, accelerator)
            with timer("optimizer"):
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            creep.step_done()
            step += 1
            epoch_step += 1
            examples += batch_examples(batch) * accelerator.num_processes  # every process took its part
            rate = examples / max(wall_before + time.perf_counter() - start, 1e-9)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", ex_s=f"{rate:.1f}", refresh=False)
            if step % eval_every == 0 or step == total:
                for m in trained:
                    m.eval()
                # glibc's heap fragments over steps of many tensor sizes and never shrinks on its own;
                # trimmed here (cheap, unlike per step) so evaluation and checkpoints run on a lean heap
                release_free_heap()
                dev = evaluate()  # predict stops every process together when one raises in it
                dev = dev if isinstance(dev, dict) else {"dev": dev}
                raised = raised or own_work(lambda: note_evaluation(dev), accelerator)
            if (checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < total
                    and accelerator.is_main_process):  # the main process alone writes: the others hear of it
                raised = raised or own_work(save_checkpoint, accelerator)
            if step >= total:
                break
        else:  # a whole pass: the next one is the next epoch's
            epoch, epoch_step = epoch + 1, 0
    bar.close()
    agree_on_failure(raised, desc, f"at step {step}", accelerator)  # what the last evaluation raised
    if creep.trims:
        log.info("%s: heap trimmed %d times as it crept", desc, creep.trims)
    wall = wall_before + time.perf_counter() - start
    accelerator.free_memory()  # drop the accelerator's references, or every run of a grid stays in memory
    if len(selections) == 1:
        chosen = next(iter(selections.values()))
        model.load_state_dict(chosen.state)
        if extra_modules is not None:  # trained with the model: kept as they were at the chosen step
            extra_modules.load_state_dict(chosen.extra_state)
    model.eval()
    return FitResult(steps=step, examples=examples, wall_seconds=wall, selections=selections, history=history,
                     resumed_seconds=wall_before)


@torch.no_grad()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, accelerator, desc: str = "predict",
            where: str = "while predicting") -> tuple[list[int], list[int]]:
    """Argmax predictions and gold labels over a loader, gathered across processes, in the
    dataset's row order (also when the loader takes the rows by length). Each batch's one gather
    carries every process's state too: when one raised in its part, every process raises there
    (`stop_after_failure`, naming `desc` and `where`) instead of waiting at the next gather."""
    model.eval()
    preds, golds = [], []
    processes = accelerator.num_processes
    for batch in loader:
        local, raised = local_predictions(model, batch, accelerator)
        parts = accelerator.gather(local).view(processes, -1).tolist()  # per process: preds, golds, state
        states = [part.pop() for part in parts]
        if RAISED in states:
            stop_after_failure(raised, states.index(RAISED), desc, where, accelerator)
        rows = len(parts[0]) // 2
        preds.extend(_without_padding([p for part in parts for p in part[:rows]], accelerator))
        golds.extend(_without_padding([y for part in parts for y in part[rows:]], accelerator))
    if (order := row_order(loader)) is not None:
        preds, golds = _in_row_order(preds, order), _in_row_order(golds, order)
    return preds, golds


def local_predictions(model: nn.Module, batch: Batch, accelerator) -> tuple[torch.Tensor, Exception | None]:
    """This process's part of a batch as one tensor: its predictions, its gold labels, then its
    state (OK). With several processes an exception is returned with a tensor of that shape whose
    state is RAISED, for predict to tell the others."""
    try:
        batch = batch.to(accelerator.device)
        state = torch.full((1,), int(OK), dtype=torch.long, device=accelerator.device)
        return torch.cat([model(batch).logits.argmax(-1), batch.labels, state]), None
    except Exception as exc:  # noqa: BLE001 - the others must hear of it, or they wait at the gather forever
        if accelerator.num_processes == 1:
            raise
        local = torch.zeros(2 * len(batch.labels) + 1, dtype=torch.long, device=accelerator.device)
        local[-1] = int(RAISED)
        return local, exc


def _without_padding(values: list[int], accelerator) -> list[int]:
    """A loader's last batch, split over the processes, ends with repeated rows that make the
    parts even: dropped, as accelerate's gather_for_metrics drops them."""
    state = accelerator.gradient_state
    return values[:state.remainder] if state.end_of_dataloader and state.remainder > 0 else values


def _in_row_order(values: list[int], order: list[int]) -> list[int]:
    out = [0] * len(order)
    for value, row in zip(values, order, strict=True):
        out[row] = value
    return out


def accuracy(preds: list[int], golds: list[int]) -> float:
    return sum(int(p == g) for p, g in zip(preds, golds)) / max(len(golds), 1)
