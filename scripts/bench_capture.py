"""Capture benchmark: the auditor's activation capture against a per-prompt `output_hidden_states=True` loop.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_capture.py [--prompts 256] [--batch-size 8]

Both capture the same thing on SmolLM2-135M-Instruct (float32, CPU): per decoder block, the mean residual
activation over the post-instruction tokens and the last prompt token's, for the default recipe's direction
prompts (harmful, harmless, persona, neutral; repeated in turn up to --prompts). The loop is what a script
without the auditor does: one forward pass per prompt, keeping every layer's hidden states, reduced after.
The auditor batches (length-sorted, planned from free memory, at most --batch-size, the default recipe's)
and reduces each block's output in a hook; it runs twice, without and with shared-prefix reuse
(`capture(share_prefix=True)`: prompts batched by system prompt, the prefix a batch shares computed once).
Printed side by side, from one run: the wall time of each, the speed-ups (issue 15's target: at least 2.5x)
and the largest differences between the results (every block but the last: transformers' last hidden state
has the model's final norm applied, the auditor's does not).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields

import benchkit
import torch
from torch import Tensor

from auditor import inputs
from auditor.activations import ChatPrompt, capture, position_weights, render
from auditor.models import Checkpoint
from auditor.recipe import Position, load_recipe

POSITIONS: tuple[Position, ...] = ("post_instruction", "last")
TARGET = 2.5


@dataclass(frozen=True)
class Comparison:
    """Seconds of the per-prompt loop and of the auditor without and with prefix reuse, and how far apart their
    activations are: each of the auditor's from the loop's (`max_difference`, `reuse_difference`) and the
    auditor's two from each other (`reuse_change`, over every block, beside the largest |activation|)."""

    prompts: int
    loop_seconds: float
    auditor_seconds: float
    reuse_seconds: float
    max_difference: float
    reuse_difference: float
    reuse_change: float
    largest_activation: float

    def lines(self) -> list[str]:
        def timing(name: str, seconds: float) -> str:
            return f"{name:<45}{seconds:8.2f} s ({self.prompts / seconds:.1f} prompts/s)"

        return [timing("per-prompt output_hidden_states loop:", self.loop_seconds),
                timing("auditor capture without prefix reuse:", self.auditor_seconds),
                timing("auditor capture with prefix reuse:", self.reuse_seconds),
                benchkit.ratio_line("capture speed-up without prefix reuse", self.loop_seconds, self.auditor_seconds,
                                    TARGET),
                benchkit.ratio_line("capture speed-up with prefix reuse", self.loop_seconds, self.reuse_seconds,
                                    TARGET),
                f"largest |difference| from the loop's activations (all blocks but the last): "
                f"{self.max_difference:.2e} without reuse, {self.reuse_difference:.2e} with it",
                f"largest |difference| between the auditor's activations without and with reuse: "
                f"{self.reuse_change:.2e} (largest |activation|: {self.largest_activation:.2e})"]


def direction_prompts(count: int) -> list[ChatPrompt]:
    """The default recipe's direction prompts, every set in turn, `count` of them."""
    sets = inputs.prompt_sets(load_recipe("default"))
    return benchkit.cycle([p for f in fields(sets) for p in getattr(sets, f.name)], count)


def loop_capture(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt]) -> dict[Position, Tensor]:
    """One forward pass per prompt with every hidden state kept, reduced to the auditor's positions after."""
    rows: dict[Position, list[Tensor]] = {p: [] for p in POSITIONS}
    for prompt in prompts:
        rendered = render(checkpoint.tokenizer, prompt)
        hidden = checkpoint.model(input_ids=torch.tensor([rendered.ids]), output_hidden_states=True).hidden_states
        stacked = torch.stack(hidden[1:], dim=1)[0].float()  # (layers, tokens, d_model): block outputs
        for position in POSITIONS:
            weights = position_weights([rendered], len(rendered.ids), position)[0]
            rows[position].append(torch.einsum("ltd,t->ld", stacked, weights))
    return {p: torch.stack(rows[p]) for p in POSITIONS}


def compare(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], batch_size: int) -> Comparison:
    """The three captures, timed in this process one after the other, after one warm-up pass."""
    benchkit.timed(lambda: loop_capture(checkpoint, prompts[:1]))
    loop_seconds, expected = benchkit.timed(lambda: loop_capture(checkpoint, prompts))
    auditor_seconds, got = benchkit.timed(lambda: capture(checkpoint, prompts, POSITIONS, batch_size=batch_size))
    reuse_seconds, reused = benchkit.timed(lambda: capture(checkpoint, prompts, POSITIONS, batch_size=batch_size,
                                                           share_prefix=True))
    return Comparison(len(prompts), loop_seconds, auditor_seconds, reuse_seconds,
                      largest_difference(got, expected, blocks=slice(-1)),
                      largest_difference(reused, expected, blocks=slice(-1)),
                      largest_difference(reused, got, blocks=slice(None)),
                      max(float(got[p].abs().max()) for p in POSITIONS))


def largest_difference(a: dict[Position, Tensor], b: dict[Position, Tensor], blocks: slice) -> float:
    """Over both positions and the `blocks` compared (the loop's last hidden state is the last block's output
    after the final norm, not a block output: leave it out against the loop)."""
    return max(float((a[p][:, blocks] - b[p][:, blocks]).abs().max()) for p in POSITIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256, help="how many prompts (issue 15's size: 256)")
    parser.add_argument("--batch-size", type=int, default=load_recipe("default").batch_size,
                        help="the auditor's largest batch (default: the default recipe's)")
    args = parser.parse_args()
    prompts = direction_prompts(args.prompts)
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts, batch <= {args.batch_size}, {benchkit.machine()}")
    print("\n".join(compare(benchkit.smollm2(), prompts, args.batch_size).lines()))


if __name__ == "__main__":
    main()
