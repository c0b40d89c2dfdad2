"""Peak resident memory of this process, per run.

Linux keeps a process's peak RSS (VmHWM in /proc/self/status) and resets it to the current RSS
when "5" is written to /proc/self/clear_refs, so one process running a grid can report each
run's own peak. Elsewhere the peak is the process's lifetime maximum (getrusage), which is
what a fresh process running one run reports anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim). glibc keeps what a finished
    phase freed (a teacher's training, an earlier run) and, fragmented over its arenas, it would
    count in every later run's memory. Called per run, per dev evaluation and when a training loop's
    heap creeps (HeapCreep); not on every step, which would fault each step's memory in again."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


_STATM = Path("/proc/self/statm")


def resident_bytes() -> int | None:
    """This process's resident set now; None where the OS does not say (not Linux)."""
    try:
        return int(_STATM.read_text().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


class HeapCreep:
    """Trims the heap at a step's end once the resident set has crept `slack` past where the first
    step after the last trim left it.

    Steps of ever-changing tensor shapes fragment glibc's heap: blocks a step frees stay resident,
    and those too small for the next shapes make the heap grow, step after step. At a step's end
    the resident set is what the heap has ever touched, so its growth is that creep. A trim on every
    step would fault each step's memory in again (see release_free_heap); on creep alone the steps
    between trims (two or three in a `cpu`-preset HRKD run) reuse the pages the heap holds."""

    def __init__(self, slack_mib: float = 256):
        self.slack = slack_mib * 2**20
        self.base: int | None = None  # None: the next step's end sets it
        self.trims = 0

    def step_done(self) -> None:
        if (now := resident_bytes()) is None:
            return
        if self.base is None:
            self.base = now
        elif now > self.base + self.slack:
            release_free_heap()
            self.trims += 1
            self.base = None


def reset_peak_rss() -> bool:
    """Start a new peak at the current RSS; False where the OS cannot (the peak stays the process's)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """The peak resident memory since the last `reset_peak_rss` (else since the process started), MiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
