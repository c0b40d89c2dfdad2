"""Per-run peak memory: the peak follows what the process really touched, and resets per run."""

import sys

import numpy as np
import pytest

from bench.memory import peak_rss_mib, reset_peak_rss

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-run peaks need /proc/self/clear_refs")


@linux
def test_the_peak_sees_an_allocation_and_resets_after_it_is_freed():
    assert reset_peak_rss()
    before = peak_rss_mib()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, written, so resident
    during = peak_rss_mib()
    assert during - before == pytest.approx(256, abs=32)
    del block
    assert peak_rss_mib() == pytest.approx(during, abs=1)  # a peak stays until it is reset
    assert reset_peak_rss()
    assert peak_rss_mib() < during - 200


@linux
def test_the_peak_is_at_least_the_current_resident_set():
    import resource
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    assert peak_rss_mib() >= resident_pages * resource.getpagesize() / 2**20 - 1
