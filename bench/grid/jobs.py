"""A grid as a list of jobs, one training each, and its split into shards (`--shard K/N`).

A job is what trains once: a single-domain student (one result), or a mix or multi student trained
on all the grid's domains (one result per domain). Jobs come in a fixed order (the joint ones; then
per-domain students domain by domain, method by method, seed by seed), so every machine of a
sharded grid computes the same list and takes its own contiguous part: shard K of N takes jobs
[(K-1)·J/N, K·J/N). Contiguous parts keep a domain's jobs together, so each machine trains few
teachers. Joint jobs come first because they are the longest (a teacher and a student on every
domain): processes sharing a grid (`run --jobs`) start on them, and do not end on one alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.api import Distiller
from bench.errors import BenchError
from bench.results.records import RunKey


@dataclass(frozen=True)
class Job:
    method: type[Distiller]
    seed: int
    keys: tuple[RunKey, ...]  # the results it writes
    joint: bool  # a mix or multi student: one training for all the keys

    @property
    def key(self) -> RunKey:
        """The job's own key: its result's, or for a joint job all its domains joined by '+'."""
        if not self.joint:
            return self.keys[0]
        first = self.keys[0]
        return RunKey(first.suite, first.preset, first.method, "+".join(k.domain for k in self.keys),
                      first.seed, first.train_ratio)

    def describe(self) -> str:
        k = self.key
        return f"{k.method} on {k.suite}/{k.domain} seed {k.seed}"

    def lock_path(self, results_dir: str | Path) -> Path:
        return self.key.path(Path(results_dir) / ".locks").with_suffix(".lock")


def grid_jobs(grid) -> list[Job]:
    """Every job of `grid`, in the fixed order."""
    keys = grid.keys()
    single, joint = [], []
    for key, method in keys:
        if grid.distiller(method).student_kind == "single":
            single.append(Job(method, key.seed, (key,), joint=False))
    for method in grid.methods:
        if grid.distiller(method).student_kind == "single":
            continue
        for seed in grid.seeds:
            mine = tuple(k for k, m in keys if m is method and k.seed == seed)
            joint.append(Job(method, seed, mine, joint=True))
    return joint + single


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` with 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BenchError(f"--shard {text!r} is not K/N with 1 <= K <= N",
                         "give this job's part and the number of parts, e.g. --shard 2/4")
    return int(match[1]), int(match[2])


def shard_jobs(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """Shard K of N: its contiguous part of `jobs`; the N parts cover every job once."""
    k, n = shard
    return [job for i, job in enumerate(jobs) if i * n // len(jobs) == k - 1]
