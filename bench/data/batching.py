"""Tokenisation and batching: tokenise once through `Dataset.map`, pad each batch to its
longest row (never to the max length)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from bench.api import Batch


def tokenize(dataset, tokenizer, max_len: int, domains: Sequence[str]):
    """Token ids, token types, label, domain id and row id (the row's index in `dataset`) per
    row; no padding yet."""
    domain_index = {d: i for i, d in enumerate(domains)}
    pairs = "text_b" in dataset.column_names and any(t is not None for t in dataset["text_b"])

    def encode(rows: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        enc = tokenizer(
            rows["text_a"],
            rows["text_b"] if pairs else None,
            truncation=True,
            max_length=max_len,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        return {
            "input_ids": enc["input_ids"],
            "token_type_ids": enc["token_type_ids"],
            "domain_id": [domain_index[d] for d in rows["domain"]],
            "row_id": indices,
        }

    from datasets.utils import logging as ds_logging

    quiet = len(dataset) < 20_000  # a bar only where tokenising takes a while
    was_enabled = ds_logging.is_progress_bar_enabled()
    if quiet:
        ds_logging.disable_progress_bar()
    try:
        return dataset.map(encode, batched=True, with_indices=True, desc="tokenising", remove_columns=[
            c for c in dataset.column_names if c != "label"])
    finally:
        if quiet and was_enabled:
            ds_logging.enable_progress_bar()


class Collator:
    """Pads a list of tokenised rows to the longest of them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            types[i, :n] = torch.as_tensor(r["token_type_ids"])
            mask[i, :n] = 1
        return Batch(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            labels=torch.tensor([r["label"] for r in rows], dtype=torch.long),
            domain_ids=torch.tensor([r["domain_id"] for r in rows], dtype=torch.long),
            row_ids=torch.tensor([r["row_id"] for r in rows], dtype=torch.long) if "row_id" in rows[0] else None,
        )


class SeededShuffle(Sampler[int]):
    """A new permutation of the rows on each pass, drawn from (seed, pass number) alone, so that a
    resumed run can stand exactly where a killed one stood: `seek(passes, rows)` makes the next
    pass the `passes`-th, starting after its first `rows` rows.

    With `lengths` and `buckets` > 0 the order is bucketed by length: the permutation is cut into
    chunks of `buckets` batches, each chunk sorted by length and cut into batches, and the full
    batches shuffled (a last, partial batch stays last, so batches keep their rows). Batches
    then hold rows of similar length and are padded little: on MNLI fiction's pairs, batches of 16
    take 59.6 positions a row shuffled plainly and 31.2 bucketed (`bench profile --method tinybert
    --suite mnli --domains fiction --batch-per-domain 16 [--length-buckets 0]`).
    """

    def __init__(self, size: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int = 1,
                 buckets: int = 0):
        self.size, self.seed = size, seed
        self.lengths = torch.as_tensor(lengths) if lengths is not None and buckets else None
        self.batch_size, self.buckets = batch_size, buckets
        self.passes = 0  # passes begun so far
        self._skip = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        order = torch.randperm(self.size, generator=generator)
        if self.lengths is not None:
            order = self._bucketed(order, generator)
        order = order.tolist()
        skip, self._skip = self._skip, 0
        self.passes += 1
        return iter(order[skip:])

    def _bucketed(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        chunk = self.batch_size * self.buckets
        parts = []
        for start in range(0, self.size, chunk):
            rows = order[start:start + chunk]
            parts.append(rows[torch.argsort(self.lengths[rows], stable=True)])
        order = torch.cat(parts)
        full = self.size // self.batch_size * self.batch_size
        batches = order[:full].view(-1, self.batch_size)
        batches = batches[torch.randperm(len(batches), generator=generator)]
        return torch.cat([batches.reshape(-1), order[full:]])

    def seek(self, passes: int, rows: int) -> None:
        self.passes, self._skip = passes, rows


class ByLength(Sampler[int]):
    """The rows shortest first, for evaluation: a batch pads to its longest row, so in file order
    nearly every batch of 64 pads to the longest rows. MNLI fiction's test pairs at batch 64: 78.6
    positions a row in file order, 32.9 by length (Amazon books' reviews, most cut at 128: 128.0
    and 122.5; tests/benchmarks/test_evaluation.py). `predict` puts the predictions back in the
    rows' order."""

    def __init__(self, lengths: Sequence[int]):
        self.order = sorted(range(len(lengths)), key=lengths.__getitem__)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def make_loader(dataset, batch_size: int, pad_token_id: int, shuffle: bool, seed: int = 0,
                length_buckets: int = 0, by_length: bool = False) -> DataLoader:
    """A loader over a tokenised dataset; shuffling is seeded (SeededShuffle) so runs repeat
    exactly, and resume exactly; with `length_buckets`, batches of rows of similar length.
    Unshuffled: the rows in their order, or with `by_length` shortest first (ByLength)."""
    data = dataset.with_format(None)
    lengths = [len(ids) for ids in data["input_ids"]] if (shuffle and length_buckets) or by_length else None
    if shuffle:
        sampler = SeededShuffle(len(data), seed, lengths, batch_size, length_buckets)
    else:
        sampler = ByLength(lengths) if by_length else None
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=Collator(pad_token_id),
        # Its own generator: else each new pass draws a seed from the global one, which dropout
        # draws from too, and a resumed run (one pass more begun) would drop out other units.
        generator=torch.Generator().manual_seed(seed),
    )


def row_order(loader) -> list[int] | None:
    """The order a ByLength loader gives its rows in (None for any other loader)."""
    return next((s.order for s in _samplers(loader) if isinstance(s, ByLength)), None)


def _samplers(loader) -> list[Any]:
    """The chain under a loader: its batch sampler, any wrappers `accelerate` added, the sampler."""
    chain, node = [], loader
    while True:
        inner = getattr(node, "batch_sampler", None)
        inner = getattr(node, "sampler", None) if inner is None else inner
        if inner is None or len(chain) > 8:
            return chain
        chain.append(inner)
        node = inner


def seek_rows(loader, passes: int, batches: int) -> None:
    """Make `loader`'s next pass its `passes`-th, after `batches` of its steps (each step takes a
    batch for every process when `accelerate` shards it without splitting batches)."""
    chain = _samplers(loader)
    sampler = next((s for s in chain if isinstance(s, SeededShuffle)), None)
    if sampler is None:
        raise ValueError("only shuffled loaders made by make_loader can be resumed mid-pass")
    batch_size = next(s.batch_size for s in reversed(chain) if isinstance(s, BatchSampler))
    shard = next((s for s in chain if hasattr(s, "num_processes")), None)  # accelerate's, when sharded
    processes = 1 if shard is None or getattr(shard, "split_batches", False) else shard.num_processes
    sampler.seek(passes, batches * batch_size * processes)


def seek(loader, epoch: int, steps: int) -> None:
    """Make the next pass over `loader` (a DataLoader or a MultiDomainLoader) the one of `epoch`
    (counted from 0) after its first `steps` steps, as if the earlier ones had run."""
    if isinstance(loader, MultiDomainLoader):
        loader.seek(epoch, steps)
    else:
        seek_rows(loader, epoch, steps)


class MultiDomainLoader:
    """MultiDomainBatches: one sub-batch of each domain per step.

    An epoch is one pass over the largest domain; the other domains cycle, reshuffled on each
    new pass. HRKD's sampler does the same with its "fit" domain (the largest one in the paper's
    scripts: MNLI telephone, Amazon books) and wraps the others around.
    """

    def __init__(self, loaders: dict[str, Any]):
        if not loaders:
            raise ValueError("MultiDomainLoader needs at least one domain")
        self.loaders = loaders
        self._start = 0  # steps of the next epoch already done (a resumed run)

    def __len__(self) -> int:
        return max(len(loader) for loader in self.loaders.values())

    def seek(self, epoch: int, steps: int) -> None:
        """Stand where step `steps` of epoch `epoch` left off: each domain at the pass and batch
        it had reached (an epoch takes ceil(len / n) passes of a domain of n batches)."""
        for loader in self.loaders.values():
            n = len(loader)
            seek_rows(loader, epoch * -(-len(self) // n) + steps // n, steps % n)
        self._start = steps

    def __iter__(self):
        start, self._start = self._start, 0
        iterators = {d: iter(loader) for d, loader in self.loaders.items()}
        for _ in range(start, len(self)):
            step = {}
            for domain, it in iterators.items():
                try:
                    step[domain] = next(it)
                except StopIteration:  # a smaller domain starts its next pass
                    iterators[domain] = iter(self.loaders[domain])
                    step[domain] = next(iterators[domain])
            yield step


def batch_examples(batch: Batch | dict[str, Batch]) -> int:
    """Rows in a Batch or in all sub-batches of a MultiDomainBatch."""
    return sum(len(b) for b in batch.values()) if isinstance(batch, dict) else len(batch)
