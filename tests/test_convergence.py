"""Whether a training had converged (bench.results.convergence): the mean dev accuracy of the last quarter of
its steps against that of the quarter before."""

import pytest

from bench.results.convergence import MIN_GAIN, convergence, describe, unconverged


def curve(points, **per_domain):
    """History entries {step, dev_accuracy} from {step: accuracy}; `per_domain` adds the "dev" dict
    of a joint training ({domain: {step: accuracy}}), dev_accuracy then being their mean."""
    entries = []
    for step, acc in points.items():
        entry = {"step": step, "loss": 0.5, "dev_accuracy": acc}
        if per_domain:
            entry["dev"] = {d: values[step] for d, values in per_domain.items()}
        entries.append(entry)
    return entries


def test_a_curve_still_rising_in_the_last_quarter_has_not_converged():
    # 100 steps, evaluated every 10: the third quarter is (50, 75] -> steps 60, 70; the last (75, 100] -> 80, 90, 100
    history = curve({10: 0.40, 20: 0.50, 30: 0.60, 40: 0.65, 50: 0.68, 60: 0.70, 70: 0.72, 80: 0.74, 90: 0.76,
                     100: 0.78})
    # (0.74 + 0.76 + 0.78) / 3 - (0.70 + 0.72) / 2 = 0.76 - 0.71 = 5 points
    assert convergence(history, 100) == {"converged": False, "last_quarter_gain": 5.0}


def test_the_quarter_bounds_are_half_open():
    """Step 50 of 100 is in the second quarter (left out), step 75 in the third, step 100 in the last."""
    history = curve({25: 0.10, 50: 0.20, 75: 0.50, 100: 0.80})
    assert convergence(history, 100) == {"converged": False, "last_quarter_gain": 30.0}  # 0.80 - 0.50
    history = curve({25: 0.10, 50: 0.90, 74: 0.60, 76: 0.62, 100: 0.64})
    # third quarter: 74 only (50 is out); last: 76 and 100 -> 0.63 - 0.60 = 3 points
    assert convergence(history, 100) == {"converged": False, "last_quarter_gain": 3.0}


def test_a_flat_curve_has_converged_even_with_its_best_point_in_the_last_quarter():
    history = curve({10: 0.50, 20: 0.70, 30: 0.78, 40: 0.80, 50: 0.80, 60: 0.80, 70: 0.81, 80: 0.79, 90: 0.82,
                     100: 0.80})
    assert max(history, key=lambda e: e["dev_accuracy"])["step"] == 90  # the best point is in the last quarter
    # (0.79 + 0.82 + 0.80) / 3 - (0.80 + 0.81) / 2 = 0.80333 - 0.805 = -0.17 points
    assert convergence(history, 100) == {"converged": True, "last_quarter_gain": -0.17}


def test_a_gain_under_one_point_is_converged_and_over_it_is_not():
    assert MIN_GAIN == 0.01
    # exact binary fractions: gains of 0.78 and 1.56 points
    assert convergence(curve({60: 0.5, 100: 0.5 + 1 / 128}), 100) == {"converged": True, "last_quarter_gain": 0.78}
    assert convergence(curve({60: 0.5, 100: 0.5 + 2 / 128}), 100) == {"converged": False, "last_quarter_gain": 1.56}
    # falling: converged (nothing more to gain from more steps)
    assert convergence(curve({60: 0.8, 100: 0.7}), 100) == {"converged": True, "last_quarter_gain": -10.0}


def test_a_joint_training_is_judged_on_each_domains_own_curve():
    steps = {60: 0, 70: 1, 80: 2, 90: 3, 100: 4}
    books = {s: 0.60 + 0.03 * i for s, i in steps.items()}  # rising: 0.60 .. 0.72
    dvd = {s: 0.80 - 0.002 * i for s, i in steps.items()}  # flat, slightly falling
    history = curve({s: (books[s] + dvd[s]) / 2 for s in steps}, books=books, dvd=dvd)
    # books: (0.66 + 0.69 + 0.72) / 3 - (0.60 + 0.63) / 2 = 0.69 - 0.615 = 7.5 points
    assert convergence(history, 100, "books") == {"converged": False, "last_quarter_gain": 7.5}
    # dvd: (0.796 + 0.794 + 0.792) / 3 - (0.800 + 0.798) / 2 = 0.794 - 0.799 = -0.5 points
    assert convergence(history, 100, "dvd") == {"converged": True, "last_quarter_gain": -0.5}
    # the mean curve: (7.5 - 0.5) / 2 = 3.5 points
    assert convergence(history, 100) == {"converged": False, "last_quarter_gain": 3.5}
    # a domain the entries do not name falls back to the mean
    assert convergence(history, 100, "electronics") == convergence(history, 100)


@pytest.mark.parametrize("points", [
    {},
    {10: 0.5, 25: 0.6, 50: 0.7},  # nothing after half-way
    {10: 0.5, 60: 0.6, 75: 0.7},  # a third quarter, no last
    {10: 0.5, 50: 0.6, 100: 0.7},  # a last quarter, no third (50 is the second's)
    {100: 0.7},  # one evaluation at the end, as a short smoke run has
])
def test_unknown_when_a_quarter_holds_no_evaluation(points):
    assert convergence(curve(points), 100) == {"converged": None, "last_quarter_gain": None}


def record(method="kd", domain="books", seed=1, converged=False, gain=2.46, *, suite="amazon", ratio=1.0,
           label=None):
    return {"seed": seed, "suite": {"name": suite, "domain": domain, "train_ratio": ratio},
            "method": {"name": method, "label": label},
            "train": {"steps": 100, "converged": converged, "last_quarter_gain": gain}}


def test_describe_names_the_method_suite_domain_seed_and_gain():
    assert describe(record("hrkd", "books", 1, gain=2.5)) == \
        "hrkd amazon/books seed 1 (+2.5 points in the last quarter)"
    # few-shot suites are named as in the store: <suite>-r<ratio>
    assert describe(record("kd", "fiction", 2, gain=2.46, suite="mnli", ratio=0.1)) == \
        "kd mnli-r0.1/fiction seed 2 (+2.5 points in the last quarter)"
    assert describe(record("kd", "dvd", 3, gain=12.0, ratio=None)) == \
        "kd amazon/dvd seed 3 (+12.0 points in the last quarter)"
    # a method run with user options goes by its label
    assert describe(record("kd", "dvd", 1, gain=1.04, label="kd[temperature=4]")) == \
        "kd[temperature=4] amazon/dvd seed 1 (+1.0 points in the last quarter)"


def test_unconverged_keeps_only_the_runs_known_not_to_have_converged():
    late = record("kd", "books", 1, converged=False)
    runs = [late, record("kd", "dvd", 1, converged=True, gain=0.1), record("kd", "books", 2, converged=None),
            {"seed": 3, "suite": {"name": "amazon", "domain": "books"}, "method": {"name": "kd"}, "train": {}},
            {"seed": 4, "suite": {"name": "amazon", "domain": "books"}, "method": {"name": "kd"}, "train": None}]
    assert unconverged(runs) == [late]
    assert unconverged([]) == []
