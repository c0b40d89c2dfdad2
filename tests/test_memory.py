"""Per-run peak memory (it follows what the process really touched, and resets per run) and the heap trims."""

import sys

import numpy as np
import pytest

from bench.training.memory import HeapCreep, peak_rss_mib, reset_peak_rss, resident_bytes

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
    from bench.training.memory import release_free_heap

    def resident_mib():
        return resident_bytes() / 2**20

    blocks = [np.ones(64 * 1024 // 8) for _ in range(4096)]  # 256 MiB of 64 KiB heap blocks
    keep = blocks[::64]  # a few survivors pin the heap's top, so it cannot simply shrink
    del blocks
    before = resident_mib()
    release_free_heap()
    assert resident_mib() < before - 128
    del keep


def test_heap_creep_trims_once_the_resident_set_crept_its_slack_past_the_first_step_after_a_trim(monkeypatch):
    """A step's end sees what the heap has touched: the first step after a trim sets the base, a
    later one more than the slack above it trims, and the step after that sets the base again."""
    from bench.training import memory

    resident = [0]
    monkeypatch.setattr(memory, "resident_bytes", lambda: resident[0])
    monkeypatch.setattr(memory, "release_free_heap", lambda: resident.__setitem__(0, 1300 * 2**20))
    creep = HeapCreep(slack_mib=256)
    trims = []
    for now in (3000, 3100, 3250, 3257,  # base 3000: 3257 is past 3000 + 256, trimmed to 1300
                3050, 3300, 3307,  # the next step's end, 3050, is the base
                2900, 2950):
        resident[0] = now * 2**20
        creep.step_done()
        trims.append(creep.trims)
    assert trims == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@linux
def test_heap_creep_hands_back_a_fragmented_heap():
    creep = HeapCreep(slack_mib=64)
    creep.step_done()  # the base
    blocks = [np.ones(64 * 1024 // 8) for _ in range(4096)]  # 256 MiB of 64 KiB heap blocks
    keep = blocks[::64]
    del blocks
    grown = resident_bytes()
    creep.step_done()
    assert creep.trims == 1 and resident_bytes() < grown - 128 * 2**20
    del keep
