"""One domain's rows as a grid uses them: the preset's caps and the few-shot cut applied, each
split tokenised once per tokenizer and shared by the teacher and every student."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.data.batching import tokenize
from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.api import DataConfig, SuiteSpec
    from bench.presets import Preset


@dataclass
class DomainData:
    rows: dict[str, Any]  # split -> datasets.Dataset
    fingerprint: str
    left_out: dict[str, int]
    max_len: int
    domains: Sequence[str]
    _tokenized: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.rows.items()}

    def tokenized(self, split: str, tokenizer) -> Any:
        key = (tokenizer.name_or_path, split)
        if key not in self._tokenized:
            self._tokenized[key] = tokenize(self.rows[split], tokenizer, self.max_len, self.domains)
        return self._tokenized[key]


def load_domain(suite: SuiteSpec, domain: str, preset: Preset, data: DataConfig, train_ratio: float) -> DomainData:
    """The splits of one domain: the first `train_ratio` of train (the few-shot protocol takes
    the first rows), then the preset's row caps."""
    limits = {"train": preset.max_train_rows, "dev": preset.max_dev_rows, "test": preset.max_test_rows}
    rows = {}
    for split, limit in limits.items():
        ds = suite.load(domain, split, data)
        keep = len(ds)
        if split == "train" and train_ratio < 1.0:
            keep = max(1, int(train_ratio * keep))
        if limit is not None:
            keep = min(keep, limit)
        if keep < len(ds):
            ds = ds.select(range(keep))
        if len(ds) == 0:
            raise BenchError(f"{suite.name}/{domain} has no {split} rows in {data.data_dir}",
                             "check the data dir, or use another preset")
        rows[split] = ds
    return DomainData(rows, suite.fingerprint(domain, data), suite.audit(domain, data), preset.max_len,
                      suite.domains)
