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


def test_batches_trim_the_heap_only_where_the_auditor_owns_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library call inside someone's training process leaves its heap alone; the CLI and an opted-in caller
    hand freed memory back after every batch."""
    from auditor import batching, cli

    trims: list[int] = []
    monkeypatch.setattr(heap, "release_freed_memory", lambda: trims.append(1))
    batching.run_batch([0, 1], lambda group: None)
    assert trims == []
    with heap.trim_after_batches():
        batching.run_batch([0, 1], lambda group: None)
    assert trims == [1]
    batching.run_batch([0, 1], lambda group: None)  # the context closed: off again
    assert trims == [1]

    def command(args: object) -> int:
        batching.run_batch([0], lambda group: None)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "report", command)
    assert cli.main(["report", "results.json"]) == 0 and trims == [1, 1]
