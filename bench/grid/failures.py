"""Failed runs, recorded beside the results so that a grid goes on past them and says at the end
what failed and where to look.

`<results>/.failed/<suite>/<preset>/<method>/<domain>/seed<N>.json` holds the run's key, the
error and the code's version; `seed<N>.traceback.txt` beside it the whole traceback. The
hidden folder keeps them out of reports. A later success of the same run removes its record.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.results.records import RunKey, git_state, now_utc, write_result

FAILED_DIR = ".failed"


@dataclass(frozen=True)
class Failure:
    key: RunKey
    error: str  # `Type: message`, first line only
    record: Path

    def describe(self) -> str:
        k = self.key
        return f"{k.method} on {k.suite}/{k.domain} seed {k.seed}: {self.error}"


def failure_path(results_dir: str | Path, key: RunKey) -> Path:
    return key.path(Path(results_dir) / FAILED_DIR)


def record_failure(results_dir: str | Path, key: RunKey, exc: BaseException) -> Failure:
    """Write the failure record and traceback of `key`'s run, which raised `exc`."""
    path = failure_path(results_dir, key)
    full = exc.what if isinstance(exc, BenchError) else str(exc)  # a BenchError's str() ends with its hint
    message = full.splitlines()[0] if full else ""
    error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    trace = path.with_suffix(".traceback.txt")
    trace.parent.mkdir(parents=True, exist_ok=True)
    trace.write_text("".join(traceback.format_exception(exc)))
    write_result(path, {
        "run": {"suite": key.suite, "preset": key.preset, "method": key.method, "domain": key.domain,
                "seed": key.seed, "train_ratio": key.train_ratio},
        "error": {"type": type(exc).__name__, "message": full,
                  "hint": exc.hint if isinstance(exc, BenchError) else None},
        "traceback_file": trace.name, "git": git_state(), "created": now_utc()})
    return Failure(key, error, path)


def clear_failure(results_dir: str | Path, key: RunKey) -> None:
    path = failure_path(results_dir, key)
    path.unlink(missing_ok=True)
    path.with_suffix(".traceback.txt").unlink(missing_ok=True)


def failed_error(failures: list[Failure]) -> BenchError:
    """The error a grid ends with when some of its runs failed (the others' results are written)."""
    lines = "\n  ".join(f.describe() for f in failures)
    where = failures[0].record.parents[4] if failures else ""
    return BenchError(f"{len(failures)} run(s) failed; the other results are written:\n  {lines}",
                      f"each failure's record and traceback are under {where}; "
                      "rerun the same command to retry only what is missing")
