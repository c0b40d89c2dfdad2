"""The paired randomisation test of bench.results.significance, checked against independent computations:
brute-force enumeration of every swap pattern, a Monte-Carlo approximate randomisation, and scipy's
exact binomial test."""

import itertools
import math

import numpy as np
import pytest

from bench.errors import BenchError
from bench.results.significance import (
    Paired,
    decode_labels,
    discordant,
    encode_labels,
    pooled,
    randomization_p_value,
)


def paired_case(a_only, b_only, both_right, neither, classes=3, seed=0):
    """Labels and two methods' predictions with the given outcome counts, in a shuffled order;
    where both are wrong they give different wrong answers (still concordant: both wrong)."""
    kinds = ["a"] * a_only + ["b"] * b_only + ["both"] * both_right + ["neither"] * neither
    order = np.random.default_rng(seed).permutation(len(kinds))
    labels, preds_a, preds_b = [], [], []
    for i, k in enumerate(kinds[j] for j in order):
        y = i % classes
        wrong, other_wrong = (y + 1) % classes, (y + 2) % classes
        labels.append(y)
        preds_a.append(y if k in ("a", "both") else wrong)
        preds_b.append(y if k in ("b", "both") else (other_wrong if k == "neither" else wrong))
    return preds_a, preds_b, labels


def brute_force_p(preds_a, preds_b, labels):
    """The randomisation test by definition: every one of the 2^n ways to swap the two methods'
    outputs example by example, the statistic |#right A - #right B| of each, the share at least the
    observed one."""
    right_a = [a == y for a, y in zip(preds_a, labels)]
    right_b = [b == y for b, y in zip(preds_b, labels)]
    observed = abs(sum(right_a) - sum(right_b))
    n = len(labels)
    hits = 0
    for swaps in itertools.product((False, True), repeat=n):
        a = sum(rb if s else ra for ra, rb, s in zip(right_a, right_b, swaps))
        b = sum(ra if s else rb for ra, rb, s in zip(right_a, right_b, swaps))
        hits += abs(a - b) >= observed
    return hits / 2 ** n


# --- no difference, a clear difference ---------------------------------------------------------

def test_identical_predictions_give_p_one():
    preds, _, labels = paired_case(5, 0, 4, 3)
    same = discordant(preds, list(preds), labels)
    assert same == Paired(0, 0, 12) and same.p_value == 1.0
    # pooled over domains and seeds: still nothing discordant
    counts = [(3, 2, 1, 4), (0, 7, 2, 1), (6, 6, 0, 0)]
    runs = [paired_case(*c, seed=s) for s, c in enumerate(counts)]
    total = pooled(discordant(p, list(p), y) for p, _, y in runs)
    assert total == Paired(0, 0, 10 + 10 + 12) and total.p_value == 1.0


def test_equal_discordant_counts_give_p_one_whatever_the_concordant_examples():
    assert randomization_p_value(0, 0) == 1.0
    assert randomization_p_value(17, 17) == 1.0
    assert discordant(*paired_case(4, 4, 10, 3)).p_value == 1.0


def test_a_method_right_wherever_the_other_is_wrong_is_significant():
    labels = [i % 3 for i in range(30)]
    wrong = [(y + 1) % 3 for y in labels]
    result = discordant(labels, wrong, labels)
    assert result == Paired(30, 0, 30)
    # only the observed assignment and its mirror reach |30|: 2 / 2^30
    assert result.p_value == pytest.approx(2 / 2 ** 30, rel=1e-12) and result.p_value < 0.01
    assert discordant(wrong, labels, labels).p_value == result.p_value  # two-sided: symmetric


def test_discordant_counts_and_pooling():
    preds_a, preds_b, labels = paired_case(4, 2, 3, 3)
    assert discordant(preds_a, preds_b, labels) == Paired(4, 2, 12)
    assert discordant(preds_b, preds_a, labels) == Paired(2, 4, 12)
    assert pooled([Paired(4, 2, 12), Paired(0, 5, 7), Paired(3, 0, 100)]) == Paired(7, 7, 119)
    assert pooled([]) == Paired(0, 0, 0) and pooled([]).p_value == 1.0


# --- against independent computations -----------------------------------------------------------

@pytest.mark.parametrize("counts", [(6, 1, 3, 2), (4, 3, 2, 3), (7, 0, 3, 2), (1, 5, 0, 6), (3, 3, 4, 2)])
def test_p_value_equals_brute_force_enumeration_of_every_swap(counts):
    """12 examples, concordant ones included, so 4,096 swap patterns each."""
    preds_a, preds_b, labels = paired_case(*counts)
    assert len(labels) == 12
    assert discordant(preds_a, preds_b, labels).p_value == pytest.approx(brute_force_p(preds_a, preds_b, labels),
                                                                          abs=1e-12)


def test_the_brute_force_values_by_hand():
    # (6, 1): P(|2K - 7| >= 5), K ~ Bin(7, 1/2) = 2 * (C(7,0) + C(7,1)) / 2^7 = 16 / 128
    assert brute_force_p(*paired_case(6, 1, 3, 2)) == 16 / 128
    assert randomization_p_value(6, 1) == pytest.approx(0.125, abs=1e-15)
    # (4, 3): every assignment has |2K - 7| >= 1
    assert randomization_p_value(4, 3) == 1.0


def test_p_value_matches_a_monte_carlo_approximate_randomisation():
    """a_only=40, b_only=25 among 120 examples: 200k random swap patterns over every example."""
    preds_a, preds_b, labels = paired_case(40, 25, 45, 10, seed=3)
    right_a = np.array(preds_a) == np.array(labels)
    right_b = np.array(preds_b) == np.array(labels)
    observed = abs(int(right_a.sum()) - int(right_b.sum()))
    assert observed == 15
    rng = np.random.default_rng(12345)
    hits = trials = 0
    for _ in range(20):  # 20 chunks of 10k trials
        swaps = rng.integers(0, 2, size=(10_000, len(labels))).astype(bool)
        a = np.where(swaps, right_b, right_a).sum(axis=1)
        b = np.where(swaps, right_a, right_b).sum(axis=1)
        hits += int((np.abs(a - b) >= observed).sum())
        trials += len(swaps)
    assert trials == 200_000
    exact = discordant(preds_a, preds_b, labels).p_value
    assert exact == pytest.approx(hits / trials, abs=0.01)
    # and the closed form: 2 * P(K <= 25), K ~ Bin(65, 1/2)
    assert exact == pytest.approx(2 * sum(math.comb(65, i) for i in range(26)) / 2 ** 65, rel=1e-12)
    assert 0.05 < exact < 0.1  # not significant at 0.05, though A is right 15 more times


@pytest.mark.parametrize("a_only,b_only", [(40, 25), (25, 40), (30, 0), (9, 1), (10_500, 10_000), (1_000, 1_190)])
def test_p_value_matches_scipys_exact_binomial_test(a_only, b_only):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5, alternative="two-sided").pvalue
    assert randomization_p_value(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_large_pooled_counts_stay_finite_and_tiny():
    """Tens of thousands of pooled examples: the log-space sum neither overflows nor returns 0 too early."""
    p = randomization_p_value(10_500, 10_000)
    assert 0 < p < 0.001
    assert randomization_p_value(10_050, 10_000) > 0.7
    assert randomization_p_value(50_000, 0) < 1e-300  # 2^-49999 underflows; no error, no 1.0


# --- storing predictions --------------------------------------------------------------------

def test_labels_are_stored_as_digits_while_every_class_is_below_ten():
    assert encode_labels([0, 1, 2, 9, 0]) == "01290"
    assert encode_labels(np.array([2, 1, 0])) == "210"  # numpy ints too
    assert encode_labels([]) == ""
    assert encode_labels([3, 10, 1]) == [3, 10, 1]
    assert encode_labels([0, -1]) == [0, -1]
    for values in ([0, 1, 2, 9, 0], [3, 10, 1], [0, -1], [], [7] * 1000):
        stored = encode_labels(values)
        assert decode_labels(stored) == values
        assert all(type(v) is int for v in decode_labels(stored))
    assert decode_labels("0120") == [0, 1, 2, 0] and decode_labels((4, 12)) == [4, 12]


@pytest.mark.parametrize("lengths", [(3, 2, 3), (2, 3, 3), (3, 3, 2)])
def test_predictions_of_different_lengths_are_refused(lengths):
    a, b, y = ([0] * n for n in lengths)
    with pytest.raises(BenchError, match=r"paired predictions differ in length \(%d, %d, %d labels\)" % lengths):
        discordant(a, b, y)
