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


@linux
def test_releasing_the_free_heap_lowers_the_resident_set_after_many_small_frees():
    """Blocks under glibc's mmap threshold stay in the heap when freed; releasing hands them back."""
    from bench.memory import release_free_heap

    def resident_mib():
        import resource
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    blocks = [np.ones(64 * 1024 // 8) for _ in range(4096)]  # 256 MiB of 64 KiB heap blocks
    keep = blocks[::64]  # a few survivors pin the heap's top, so it cannot simply shrink
    del blocks
    before = resident_mib()
    release_free_heap()
    assert resident_mib() < before - 128
    del keep
