"""Several processes end a run together. Each process's state at the end of its part of a step
or a prediction batch (ok, not finite, raised) travels in a collective the step or batch makes
anyway; when any process failed, every process raises at the same point (`ProcessFailed` names
the one that failed, with its traceback), so no process waits forever for one that raised."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch

from bench.errors import BenchError


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
