"""The result store: one JSON file per (suite, preset, method, domain, seed), written atomically.

Schema (version 1). Keys every tool may rely on, as dotted paths: `seed`, `preset`,
`method.name`, `suite.name`, `suite.domain`, `suite.train_ratio`, `teacher.ref`,
`teacher.key`, `machine.world_size`. The whole record:

- schema_version, bench_version, plugin_versions, git {commit, dirty}, created (UTC, ISO 8601)
- seed, preset
- machine {platform, python, cpu, threads, gpu, torch, transformers, world_size, ...}
- suite {name, version, domain, train_ratio, sizes {train, dev, test}, fingerprint,
  left_out {dropped_no_consensus, skipped_bad_rows, ...}, trained_on (the domains the student
  was trained on: [domain], or all of the grid's for a mix or multi student), and for a `files:DIR`
  suite labels (its label names, in head order) and source (DIR, absolute)}
- method {name, label (the name, plus the options that differ from the defaults), plugin, config,
  student_kind}
- teacher {ref, key, kind, params, latency, dev_accuracy, test_accuracy (the domain's), reused,
  precision (of its forwards while distilling: fp32 or bf16; absent in older records: fp32)} or
  null when the method has none
- student {ref, init, layers}
- train {steps, epochs, batch_size, lr, ..., wall_seconds, examples, examples_per_second,
  selected_step, best_dev_accuracy (both the domain's), history [{step, loss, dev_accuracy (the
  mean over domains), dev {domain: accuracy} (joint trainings), trace (what the method traced,
  e.g. HRKD's ratios), loss parts}]}. A joint training's figures (steps, examples, wall time,
  history, timings) are the whole training's, repeated in each of its domains' records.
- metrics {accuracy, macro_f1, params {total, non_embedding, extra_training_only},
  latency {device, threads, seq_len, warmup, repeats, batch_<B> {median_ms, iqr_ms}},
  throughput {batch, examples_per_second}, speedup {batch_<B>}, compression, ...}: one entry
  per registered metric; a field may be missing from records written before it existed
- timings {teacher_seconds (spent by this run: 0 when the teacher was reused), train_seconds (the student's
  training and testing, a resumed run's killed processes included), eval_seconds,
  peak_rss_mib (the process's peak resident memory during the run; on Linux the run's own)}
- retimed {created, git, machine}: present when `bench retime` wrote the timed metrics (latency,
  throughput, speedup) and teacher.latency again, all in that one sitting

Reports are built from the store only; `upgrade()` keeps files of older schema versions loading.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import BenchError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Where a run writes when no --results-dir is named: a folder git ignores, so a fresh clone's run
# trains. The committed comparison (results/runs) is written only by commands that name it (make grid).
DEFAULT_RESULTS_DIR = "outputs/runs"


@dataclass(frozen=True)
class RunKey:
    suite: str
    preset: str
    method: str
    domain: str
    seed: int
    train_ratio: float = 1.0

    def path(self, root: str | os.PathLike) -> Path:
        """`<suite>/<preset>/<method>/<domain>/seed<N>.json`; few-shot runs under `<suite>-r<ratio>`."""
        suite = self.suite if self.train_ratio == 1.0 else f"{self.suite}-r{self.train_ratio:g}"
        return Path(root) / suite / self.preset / self.method / self.domain / f"seed{self.seed}.json"


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, flushed, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Bring a record of an older schema to the current one (version 1 is the first)."""
    version = record.get("schema_version")
    if version == SCHEMA_VERSION:
        return record
    raise BenchError(f"result schema version {version!r} is not known to kd-bench {__version__}",
                     "upgrade kd-bench, or move that file out of the results dir")


def read_result(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})",
                         "delete the file and rerun that run, or restore it") from None
    return upgrade(record)


def result_paths(root: str | os.PathLike) -> Iterator[Path]:
    """The result files under `root`, sorted; hidden folders (.failed, .checkpoints) hold none."""
    base = Path(root)
    if not base.is_dir():
        raise BenchError(f"no results dir {base}", "run `python -m bench run ...` first, or pass --results-dir")
    for path in sorted(base.rglob("*.json")):
        if not any(part.startswith(".") for part in path.relative_to(base).parts):
            yield path


def iter_results(*roots: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every result under `roots` (the stores of a sharded grid merge: a run found in two of them
    is taken from the first, with a warning)."""
    seen: dict[tuple, Path] = {}
    for root in roots:
        for path in result_paths(root):
            record = read_result(path)
            if len(roots) > 1:
                key = (record["suite"]["name"], record["suite"].get("train_ratio"), record["preset"],
                       record["method"].get("label", record["method"]["name"]), record["suite"]["domain"],
                       record["seed"])
                if key in seen:
                    log.warning("%s is the same run as %s: keeping the first", path, seen[key])
                    continue
                seen[key] = path
            yield record


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit of the kd-bench checkout this runs from, and whether it has local changes."""
    repo = Path(__file__).resolve().parents[2]  # bench/results/records.py -> the checkout
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recorded_rates(root: str | os.PathLike, suite: str, preset: str, train_ratio: float) -> dict[str, float]:
    """Each method's (by label) median student training rate, `train.examples_per_second`, over its
    runs of one suite, preset and train ratio under `root`; empty where there is no store yet."""
    if not Path(root).is_dir():
        return {}
    rates: dict[str, list[float]] = defaultdict(list)
    for r in iter_results(root):
        same = (r["suite"]["name"], r["preset"], float(r["suite"].get("train_ratio", 1.0))) == (suite, preset,
                                                                                               train_ratio)
        if same and (rate := (r.get("train") or {}).get("examples_per_second")):
            rates[r["method"].get("label", r["method"]["name"])].append(rate)
    return {method: statistics.median(values) for method, values in rates.items()}
