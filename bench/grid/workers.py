"""`run --jobs N`: N processes on this machine share one grid, each with its share of the cores.

Small models leave a CPU's cores idle in one process (on 2 cores, one 2-thread process trains
all-MiniLM-L6-v2 at 1.6 times the rate of a 1-thread one; two 1-thread processes at 2 times:
docs/SETTINGS.md). The workers run the same `run` command and take the grid's jobs as two grids on
one results dir always have (bench.grid.runner: a job or teacher another process holds is left to it), so
each run and each teacher still trains once. Their output comes through this process, line by line,
each line marked with its worker; a worker writes to a pipe, so it draws no progress bar.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence

from bench.machine import WORKER


def is_worker() -> bool:
    return bool(os.environ.get(WORKER))


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _relay(stream, mark: str) -> None:
    for line in stream:
        sys.stderr.write(mark + line)
        sys.stderr.flush()


def run_workers(argv: Sequence[str], jobs: int) -> list[int]:
    """Run `python -m bench <argv>` as `jobs` workers, each with cores // jobs threads (at least 1);
    their exit codes. Stopping this process stops them: a killed worker's run continues from its
    checkpoint with `--resume`."""
    threads = str(max(1, cores() // jobs))
    procs, relays = [], []
    try:
        for k in range(1, jobs + 1):
            env = dict(os.environ, **{WORKER: f"{k}/{jobs}", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
            proc = subprocess.Popen([sys.executable, "-m", "bench", *argv], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            procs.append(proc)
            relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{k}/{jobs}] "), daemon=True)
            relay.start()
            relays.append(relay)
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    for relay in relays:
        relay.join(timeout=5)
    return codes
