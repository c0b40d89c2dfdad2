"""Predictions over a loader for dev and test: argmax and gold labels gathered across processes,
in the dataset's row order, a failure in one process's part of a batch told to all."""

from __future__ import annotations

import torch
from torch import nn

from bench.api import Batch
from bench.data.batching import row_order
from bench.training.agreement import OK, RAISED, stop_after_failure


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
