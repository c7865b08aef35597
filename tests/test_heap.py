"""The glibc heap helpers (auditor/heap.py), measured on this process's own page faults and memory."""

from __future__ import annotations

import resource

import pytest
import torch

from auditor import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="the helpers act on glibc's malloc only")

BLOCK = 16 * 1024 * 1024  # float32 elements: 64 MB, above any threshold glibc picks by itself


def page_faults_allocating_a_block_ten_times() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(BLOCK)  # freed at once, like a training step's logits
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def test_training_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    outside = page_faults_allocating_a_block_ten_times()
    with heap.keep_freed_memory():
        page_faults_allocating_a_block_ten_times()  # the first allocation grows the heap
        inside = page_faults_allocating_a_block_ten_times()
    after = page_faults_allocating_a_block_ten_times()
    assert inside * 10 < outside, (inside, outside)
    assert after >= BLOCK * 4 // resource.getpagesize(), after  # defaults back: faulted in again


def test_release_hands_freed_heap_memory_back() -> None:
    with heap.keep_freed_memory():
        torch.ones(BLOCK)
        kept = resident_mb()  # freed, but kept in the heap
        heap.release_freed_memory()
        released = resident_mb()
    assert kept - released > 48, (kept, released)
