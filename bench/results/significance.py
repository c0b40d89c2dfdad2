"""Paired significance of one method's accuracy over another's, on the same test examples.

The test is the paired randomisation test recommended for accuracy by Dror et al. (2018, "The
Hitchhiker's Guide to Testing Statistical Significance in NLP"): under the null hypothesis the two
methods' outputs are exchangeable, so each example's pair of outcomes may be swapped. The statistic
is the absolute difference in the number of examples each gets right. Only discordant examples
(one method right, the other wrong) change it when swapped, each by 2, so over all 2^n swaps the
statistic is |2K - n| with K ~ Binomial(n, 1/2), n the discordant examples: the randomisation
test computed exactly, with no sampling noise, which is the two-sided exact sign (McNemar) test.
Examples are pooled over domains and seeds: each (domain, seed, test example) is one pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.errors import BenchError

SIGNIFICANT = 0.05  # the level a report marks


@dataclass(frozen=True)
class Paired:
    """Counts of a paired comparison of A with B: examples only A got right, only B got right, in all."""

    a_only: int
    b_only: int
    examples: int

    @property
    def p_value(self) -> float:
        return randomization_p_value(self.a_only, self.b_only)


def discordant(preds_a: Sequence[int], preds_b: Sequence[int], labels: Sequence[int]) -> Paired:
    """The discordant counts of two methods' predictions on the same labelled examples."""
    if not len(preds_a) == len(preds_b) == len(labels):
        raise BenchError(f"paired predictions differ in length ({len(preds_a)}, {len(preds_b)}, {len(labels)} labels)",
                         "compare runs on the same test set (same suite version and data)")
    a_only = b_only = 0
    for a, b, y in zip(preds_a, preds_b, labels):
        right_a, right_b = a == y, b == y
        a_only += right_a and not right_b
        b_only += right_b and not right_a
    return Paired(a_only, b_only, len(labels))


def pooled(pairs: Iterable[Paired]) -> Paired:
    """Several paired comparisons (domains, seeds) as one."""
    a = b = n = 0
    for p in pairs:
        a, b, n = a + p.a_only, b + p.b_only, n + p.examples
    return Paired(a, b, n)


def randomization_p_value(a_only: int, b_only: int) -> float:
    """Two-sided p-value of the exact paired randomisation test: P(|2K - n| >= |a_only - b_only|),
    K ~ Binomial(n, 1/2), n = a_only + b_only. 1.0 when the methods are right equally often."""
    n = a_only + b_only
    if a_only == b_only:
        return 1.0
    k = min(a_only, b_only)
    # 2 * P(K <= k), summed in log space: n reaches tens of thousands when seeds and domains pool.
    log_terms = [_log_comb(n, i) - n * math.log(2) for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def encode_labels(values: Sequence[int]) -> str | list[int]:
    """Predictions or labels kept compactly in a result: one digit per example while every class id
    is below 10 (MNLI's test set of a genre: about 1,000 characters), else a list."""
    values = [int(v) for v in values]
    if all(0 <= v < 10 for v in values):
        return "".join(map(str, values))
    return values


def decode_labels(stored: str | Sequence[int]) -> list[int]:
    return [int(c) for c in stored] if isinstance(stored, str) else [int(v) for v in stored]
