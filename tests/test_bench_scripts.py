"""scripts/bench_capture.py, bench_replay.py and bench_gpu.py on tiny models at a tiny size: both sides compute
the same thing, so the printed ratios compare like with like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from auditor import batching, models

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_capture  # noqa: E402
import bench_gpu  # noqa: E402
import bench_replay  # noqa: E402
import benchkit  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(base_dir: Path) -> models.Checkpoint:
    return models.load_pair(str(base_dir), str(base_dir), models.LoadOptions()).in_memory()[0]


def test_capture_benchmark_compares_equal_activations(checkpoint: models.Checkpoint,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = bench_capture.direction_prompts(10)
    assert len(prompts) == 10 and len(set(prompts)) > 1
    prefixes: list[int] = []
    real = batching.prefix_cache
    monkeypatch.setattr(batching, "prefix_cache",
                        lambda model, prefix, rows: prefixes.append(rows) or real(model, prefix, rows))
    comparison = bench_capture.compare(checkpoint, prompts, batch_size=4)
    assert prefixes == [4, 4, 2]  # the template's system block, reused by every batch of the second capture
    assert comparison.prompts == 10 and comparison.loop_seconds > 0 and comparison.auditor_seconds > 0
    assert comparison.reuse_seconds > 0
    assert comparison.max_difference < 1e-4  # the loop's hidden states reduced = the auditor's hooks
    assert comparison.reuse_difference < 1e-4 and comparison.reuse_change < 1e-6
    text = "\n".join(comparison.lines())
    assert "capture speed-up without prefix reuse" in text and "capture speed-up with prefix reuse" in text
    assert "target >= 2.5x" in text


def test_replay_benchmark_judges_both_sides(checkpoint: models.Checkpoint) -> None:
    items = bench_replay.suite_items(9)
    assert {i.expected for i in items[:3]} == {"refuse", "answer"}  # refusal, benign and contrast in turn
    comparison = bench_replay.compare(checkpoint, items, max_new_tokens=8, batch_size=4)
    assert comparison.same_tokens == comparison.same_label == 9  # greedy, float32: batching changes no token
    assert comparison.reuse_same_tokens == 9 and comparison.plain_seconds > 0
    assert comparison.loop_tokens > 9
    text = "\n".join(comparison.lines())
    assert "judged the same: 9/9 = 100.0% (target >= 97%: reached)" in text
    assert "speed-up without prefix reuse" in text and "identical tokens with and without: 9/9" in text


def test_replay_benchmark_under_personas_in_turn(checkpoint: models.Checkpoint) -> None:
    systems = bench_replay.personas()
    assert None in systems and len(set(systems)) == len(systems) > 3
    comparison = bench_replay.compare(checkpoint, bench_replay.suite_items(8), max_new_tokens=6, batch_size=4,
                                      systems=systems[:2], repeats=2)
    assert comparison.same_tokens == comparison.reuse_same_tokens == 8


def test_ratio_line_says_whether_the_target_is_reached() -> None:
    assert benchkit.ratio_line("x", 10.0, 2.0, 5.0) == "x: 5.00x (target >= 5x: reached)"
    assert benchkit.ratio_line("x", 10.0, 4.0, 2.5) == "x: 2.50x (target >= 2.5x: reached)"
    assert benchkit.ratio_line("x", 10.0, 5.0, 2.5) == "x: 2.00x (target >= 2.5x: NOT reached)"
    with pytest.raises(ValueError, match="no prompts"):
        benchkit.cycle([], 3)


def test_gpu_benchmark_runs_on_a_tiny_configuration_on_the_cpu() -> None:
    """The script a GPU session runs in one go: every line it prints, from a tiny configuration on the CPU."""
    args = bench_gpu.parse(["--config", "tiny", "--device", "cpu", "--prompts", "10", "--new-tokens", "5",
                            "--loop-prompts", "2", "--batch-sizes", "4,10", "--batch-size", "8", "--bandwidth", "1e10",
                            "--peak-flops", "1e11", "--audit-recipe", "quick"])
    text = "\n".join(bench_gpu.run(args))
    # random weights stop at random: every way of replaying is held to exactly 5 new tokens a prompt
    # the loop's 2 prompts; batch 4 and 10, the static cache twice and the auditor
    assert "(10 in " in text and text.count("(50 in ") == 5
    assert "static cache, first run" in text and "static cache, second run" in text
    assert "static cache against the plain batched generate at batch " in text
    assert "card's limit at batch 8" in text and "of the card's limit (target >= 40%" in text
    assert "auditor vs plain batched generate at its best (batch " in text and "target >= 2x" in text
    assert "audit of the pair under recipe quick" in text and "replay " in text and "verdict " in text


def test_gpu_benchmark_names_a_card_it_has_no_figures_for() -> None:
    with pytest.raises(SystemExit, match="--bandwidth"):
        bench_gpu.card_figures(bench_gpu.torch.device("cpu"), None, None)
