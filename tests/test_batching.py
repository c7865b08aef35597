"""The batch planner (free memory and prompt lengths, the recipe's batch size as an upper bound) and the same
outputs from capture, generation and first-token scoring whatever batches it plans."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from auditor import batching, models
from auditor.activations import ChatPrompt, capture
from auditor.batching import Footprint, plan
from auditor.replay import GenerationCache, first_token_log_probs, generate

FOOTPRINT = Footprint(per_token=100, per_pair=1, per_cached_token=10, per_row=1000)
# Lengths out of order, with ties: the plan sorts them, shortest first, ties in the caller's order.
LENGTHS = [30, 10, 20, 10, 50, 20, 40, 10]
SORTED = [1, 3, 7, 2, 5, 0, 6, 4]
PROMPTS = [ChatPrompt(("Please tell me, in a few words, " * (i % 4)) + f"what is {i} plus {i * 3}?",
                      system="You are terse." if i % 3 == 0 else None) for i in range(12)]


def test_without_a_budget_the_plan_is_the_sorted_prompts_cut_every_limit() -> None:
    assert plan(LENGTHS, limit=3, budget=None, footprint=FOOTPRINT) == [SORTED[0:3], SORTED[3:6], SORTED[6:8]]
    assert plan(LENGTHS, limit=100, budget=None, footprint=FOOTPRINT) == [SORTED]
    assert plan([], limit=4, budget=None, footprint=FOOTPRINT) == []


def test_a_budget_makes_batches_of_long_prompts_smaller() -> None:
    # One row of width w costs 100 w + w^2 + 1000 bytes: 2,100 at 10, 8,500 at 50.
    budget = 10_000
    batches = plan(LENGTHS, limit=8, budget=budget, footprint=FOOTPRINT)
    assert [i for b in batches for i in b] == SORTED  # every prompt once, in length order
    assert [len(b) for b in batches] == [3, 2, 1, 1, 1]
    for group in batches:  # each batch fits, or is a single prompt
        width = max(LENGTHS[i] for i in group)
        assert len(group) == 1 or FOOTPRINT.batch_bytes(len(group), width, 0) <= budget


def test_a_prompt_too_long_for_the_budget_is_a_batch_of_its_own() -> None:
    assert plan([5, 5, 5], limit=4, budget=1, footprint=FOOTPRINT) == [[0], [1], [2]]


def test_generation_plans_for_its_cache() -> None:
    # A row of width 10 costs 2,100 bytes; generation adds 10 bytes per token of prompt and new tokens: 3,100.
    assert [len(b) for b in plan([10] * 6, limit=6, budget=9_000, footprint=FOOTPRINT)] == [4, 2]
    assert [len(b) for b in plan([10] * 6, limit=6, budget=9_000, footprint=FOOTPRINT, new_tokens=90)] == [2, 2, 2]
    assert [len(b) for b in plan([10] * 6, limit=6, budget=6_000, footprint=FOOTPRINT)] == [2, 2, 2]
    assert [len(b) for b in plan([10] * 6, limit=6, budget=6_000, footprint=FOOTPRINT, new_tokens=90)] == [1] * 6


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        plan([1], limit=0, budget=None, footprint=FOOTPRINT)


def test_footprint_of_a_llama_config() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2)
    assert Footprint.of(config, torch.bfloat16) == Footprint(
        per_token=(4 * 64 + 3 * 256) * 2 + 2 * 64 * 4, per_pair=8 * 2 * 2 + 4,
        per_cached_token=2 * 3 * 2 * 8 * 2, per_row=2 * 1000 * 4)
    assert Footprint.of(config, torch.float32).per_cached_token == 2 * 3 * 2 * 8 * 4


def test_free_memory_on_the_cpu_is_memavailable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:          100000 kB\nMemAvailable:    8000000 kB\n")
    assert batching.meminfo_available(meminfo) == 8_000_000 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")
    assert batching.meminfo_available(meminfo) is None
    assert batching.meminfo_available(tmp_path / "missing") is None
    assert batching.budget(torch.device("cpu")) is not None  # this machine: Linux, or free pages from sysconf


def test_free_memory_on_cuda_counts_what_torch_holds_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    assert batching.free_bytes(torch.device("cuda", 0)) == 12 * 2**30
    assert batching.budget(torch.device("cuda", 0)) == int(12 * 2**30 * 0.8)


@pytest.fixture(scope="module")
def checkpoint(base_dir: Path) -> models.Checkpoint:
    return models.load_pair(str(base_dir), str(base_dir), models.LoadOptions()).in_memory()[0]


@pytest.fixture
def batch_sizes(checkpoint: models.Checkpoint, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes the model's forward passes see (for generation: its prefill, not the decoding steps)."""
    sizes: list[int] = []
    real_forward = checkpoint.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:  # a decoding step feeds one token per row
            sizes.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(checkpoint.model, "forward", counting)
    return sizes


def small_memory(monkeypatch: pytest.MonkeyPatch, checkpoint: models.Checkpoint, rows: int) -> None:
    """Free memory for about `rows` prompts of the longest width in PROMPTS (float32, no generation)."""
    from auditor.activations import render

    width = max(len(render(checkpoint.tokenizer, p).ids) for p in PROMPTS)
    need = Footprint.of(checkpoint.model.config, torch.float32).batch_bytes(rows, width, 0)
    monkeypatch.setattr(batching, "free_bytes", lambda device: int(need / batching.BUDGET_SHARE["cpu"]) + 1)


def test_capture_is_the_same_whatever_the_plan(checkpoint: models.Checkpoint, batch_sizes: list[int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    one = capture(checkpoint, PROMPTS, ["post_instruction", "last"], batch_size=1)
    planned = capture(checkpoint, PROMPTS, ["post_instruction", "last"], batch_size=12)
    assert batch_sizes == [1] * 12 + [12]
    again = capture(checkpoint, PROMPTS, ["post_instruction", "last"], batch_size=12)
    batch_sizes.clear()
    small_memory(monkeypatch, checkpoint, 3)
    squeezed = capture(checkpoint, PROMPTS, ["post_instruction", "last"], batch_size=12)
    assert max(batch_sizes) < 12 and sum(batch_sizes) == 12 and len(set(batch_sizes)) > 1  # short prompts: more
    for position in ("post_instruction", "last"):
        assert torch.equal(planned[position], again[position])  # the same batches: bit-identical
        assert torch.allclose(squeezed[position], one[position], atol=1e-5)  # other batches: padding's rounding
        assert torch.allclose(planned[position], one[position], atol=1e-5)


def test_generation_is_the_same_to_the_token_whatever_the_plan(checkpoint: models.Checkpoint, batch_sizes: list[int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def run(batch_size: int) -> list[tuple[int, ...]]:
        cache = GenerationCache.in_memory()
        return [g.token_ids for g in generate(checkpoint, PROMPTS, max_new_tokens=10, batch_size=batch_size,
                                              cache=cache)]

    one = run(1)
    whole = run(12)
    batch_sizes.clear()
    small_memory(monkeypatch, checkpoint, 2)
    squeezed = run(12)
    assert max(batch_sizes) < 12 and sum(batch_sizes) == 12
    assert whole == one and squeezed == one
    assert sum(len(t) for t in one) > 12  # the model says something


def test_first_token_scores_are_the_same_whatever_the_plan(checkpoint: models.Checkpoint, batch_sizes: list[int],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    one = first_token_log_probs(checkpoint, PROMPTS, batch_size=1)
    batch_sizes.clear()
    small_memory(monkeypatch, checkpoint, 3)
    squeezed = first_token_log_probs(checkpoint, PROMPTS, batch_size=12)
    assert 1 < len(batch_sizes) < 12
    assert torch.allclose(squeezed, one, atol=1e-5)
    assert torch.equal(squeezed.argmax(-1), one.argmax(-1))


def test_a_shared_prefix_stays_in_front_and_the_rest_is_padded_after_it() -> None:
    batch = batching.left_pad([[7, 8, 9, 1, 2], [7, 8, 9, 3]], pad_id=0, device=torch.device("cpu"), prefix_length=3)
    assert batch.input_ids.tolist() == [[7, 8, 9, 1, 2], [7, 8, 9, 0, 3]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]]
    positions = batch.position_ids.tolist()
    assert positions[0] == [0, 1, 2, 3, 4] and [positions[1][i] for i in (0, 1, 2, 4)] == [0, 1, 2, 3]
    plain = batching.left_pad([[7, 8, 9, 1, 2], [7, 8, 9, 3]], pad_id=0, device=torch.device("cpu"))
    assert plain.input_ids.tolist() == [[7, 8, 9, 1, 2], [0, 7, 8, 9, 3]] and plain.prefix_length == 0


def test_a_shared_prefix_leaves_every_prompt_a_token_of_its_own() -> None:
    assert batching.shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert batching.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert batching.shared_prefix_length([[1, 2], [3]]) == 0


def test_a_shared_prefix_ends_before_the_first_token_a_capture_sees() -> None:
    same = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    assert batching.shared_prefix_length(same, own_from=[2, 3]) == 2
    assert batching.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]], own_from=[3, 2]) == 2  # they differ first
    model = SimpleNamespace(config=SimpleNamespace(sliding_window=None))
    long = [[5] * 20 + [1], [5] * 20 + [1]]
    assert batching.reusable_prefix(model, long, new_tokens=0) == 20
    assert batching.reusable_prefix(model, long, new_tokens=0, own_from=[18, 20]) == 18
    assert batching.reusable_prefix(model, long, new_tokens=0, own_from=[9, 20]) == 0  # too short to pay


def test_a_prefix_is_reused_only_where_it_pays_and_fits_the_attention_window() -> None:
    model = SimpleNamespace(config=SimpleNamespace(sliding_window=None))
    long, short = batching.MIN_SHARED_PREFIX, batching.MIN_SHARED_PREFIX - 1
    assert batching.reusable_prefix(model, [[5] * long + [1], [5] * long + [2]], new_tokens=8) == long
    assert batching.reusable_prefix(model, [[5] * short + [1], [5] * short + [2]], new_tokens=8) == 0
    assert batching.reusable_prefix(model, [[5] * long + [1]], new_tokens=8) == 0  # one prompt: nothing to share
    windowed = SimpleNamespace(config=SimpleNamespace(sliding_window=long + 8))
    assert batching.reusable_prefix(windowed, [[5] * long + [1], [5] * long + [2]], new_tokens=8) == 0
    assert batching.reusable_prefix(windowed, [[5] * long + [1], [5] * long + [2]], new_tokens=7) == long


def test_groups_fill_batches_of_their_own_shortest_first() -> None:
    groups = ["b", "a", "b", "a", "b", "a", "b", "a"]  # two system prompts in turn, as the persona design asks
    assert plan(LENGTHS, limit=4, budget=None, footprint=FOOTPRINT, groups=groups) == [[2, 0, 6, 4], [1, 3, 7, 5]]
    assert plan(LENGTHS, limit=3, budget=None, footprint=FOOTPRINT, groups=groups) == [[2, 0, 6], [4, 1, 3], [7, 5]]
    assert plan(LENGTHS, limit=3, budget=None, footprint=FOOTPRINT, groups=[None] * 8) == plan(
        LENGTHS, limit=3, budget=None, footprint=FOOTPRINT)
    # a batch that crosses into the next group is as wide as its longest prompt, not its last
    budget = FOOTPRINT.batch_bytes(2, 50, 0)
    assert plan([50, 10, 10], limit=3, budget=budget, footprint=FOOTPRINT, groups=["x", "y", "y"]) == [[0, 1], [2]]


def test_separate_groups_never_share_a_batch() -> None:
    """Scoring shares a whole prompt among its answers: a batch that held two prompts would share only their common
    start."""
    groups = ["b", "a", "b", "a", "b", "a", "b", "a"]
    assert plan(LENGTHS, limit=3, budget=None, footprint=FOOTPRINT, groups=groups, separate_groups=True) == [
        [2, 0, 6], [4], [1, 3, 7], [5]]
    assert plan(LENGTHS, limit=8, budget=None, footprint=FOOTPRINT, groups=groups, separate_groups=True) == [
        [2, 0, 6, 4], [1, 3, 7, 5]]
