"""Where kd-bench keeps what it can rebuild: stored teachers, assembled packaged models
(and, later, teacher outputs). `$BENCH_CACHE_DIR`, else `~/.cache/kd-bench`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "kd-bench")
