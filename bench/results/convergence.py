"""Whether a training had converged: its dev curve had flattened by the last step.

A run has converged when the mean dev accuracy of the evaluations in the last quarter of its steps
is less than `MIN_GAIN` above the mean of those in the quarter before. Means of a quarter, not its
best point: a dev set of 200 rows moves by 0.5 points an example, and a flat but noisy curve often
sets its best in the last quarter. A joint training (mix, multi) is judged on each domain's own dev
curve. Only the last stage counts: earlier stages (an intermediate-layer stage) do not train the
classifier, so their dev accuracy says nothing. Unknown (None) when either quarter holds no
evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIN_GAIN = 0.01  # one point of accuracy


def convergence(history: Sequence[dict[str, Any]], steps: int, domain: str | None = None) -> dict[str, Any]:
    """`{"converged": bool | None, "last_quarter_gain": points | None}` of one fit's dev history
    (the entries `bench.training.loop.fit` records) over its `steps`; `domain` picks that domain's curve
    of a joint training."""
    def accuracy(entry: dict[str, Any]) -> float:
        per_domain = entry.get("dev")
        return per_domain[domain] if domain is not None and per_domain and domain in per_domain \
            else entry["dev_accuracy"]

    third = [accuracy(e) for e in history if steps / 2 < e["step"] <= 3 * steps / 4]
    last = [accuracy(e) for e in history if e["step"] > 3 * steps / 4]
    if not third or not last:
        return {"converged": None, "last_quarter_gain": None}
    gain = sum(last) / len(last) - sum(third) / len(third)
    return {"converged": gain < MIN_GAIN, "last_quarter_gain": round(100 * gain, 2)}


def unconverged(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records whose training had not converged (unknown counts as converged: nothing to say)."""
    return [r for r in records if (r.get("train") or {}).get("converged") is False]


def describe(record: dict[str, Any]) -> str:
    """`hrkd amazon/books seed 1 (+2.5 points in the last quarter)`."""
    suite = record["suite"]
    ratio = suite.get("train_ratio", 1.0)
    name = suite["name"] if ratio in (None, 1.0) else f"{suite['name']}-r{ratio:g}"
    method = record["method"].get("label") or record["method"]["name"]
    return (f"{method} {name}/{suite['domain']} seed {record['seed']} "
            f"(+{record['train']['last_quarter_gain']:.1f} points in the last quarter)")
