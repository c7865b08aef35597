"""Replay benchmark: the auditor's generation against a per-prompt `generate` loop, and whether the judge agrees.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_replay.py [--prompts 256] [--max-new-tokens 256] \
        [--personas N] [--repeats R]

Both generate greedily on SmolLM2-135M-Instruct (float32, CPU), up to --max-new-tokens new tokens, stopping
at the model's end-of-turn tokens, for the default recipe's refusal and false-refusal items taken in turn
(--prompts of them). The loop is what a script without the auditor does: `model.generate` on one unpadded
prompt at a time. The auditor batches (length-sorted, planned from free memory, at most --batch-size, the
default recipe's), with no generation cache, without and with the reuse of the prefix a batch's prompts share
(the chat template's system block; with --personas N, item k is asked under the default recipe's persona k
modulo N, as the persona design asks its items, and prompts are batched by persona), --repeats times each in
turn. Printed side by side, from one run: the wall time of each (the auditor's: the median), the speed-ups
(issue 15's target: at least 5x), whether prefix reuse changed any token, and the share of prompts whose
responses the default `phrase` judge labels the same as the loop's (target: at least 97%), beside the share with
identical tokens.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import benchkit
import torch

from auditor.activations import ChatPrompt, render
from auditor.inputs import load_suites
from auditor.judge import PhraseJudge, Response
from auditor.models import Checkpoint
from auditor.recipe import load_recipe
from auditor.replay import Generation, GenerationCache, cut_at_stop, generate, stop_ids
from auditor.suites import PromptItem

SPEED_TARGET = 5.0
SAME_LABEL_TARGET = 0.97


@dataclass(frozen=True)
class Comparison:
    """Seconds of the per-prompt loop and of the auditor without and with prefix reuse; how many prompts got the
    same label / tokens from the auditor (with reuse) as from the loop, and the same tokens with reuse as without."""

    prompts: int
    loop_seconds: float
    plain_seconds: float
    auditor_seconds: float
    same_label: int
    same_tokens: int
    loop_tokens: int
    reuse_same_tokens: int

    @property
    def same_label_share(self) -> float:
        return self.same_label / self.prompts

    def lines(self) -> list[str]:
        reached = "reached" if self.same_label_share >= SAME_LABEL_TARGET else "NOT reached"
        return [f"per-prompt generate loop: {self.loop_seconds:8.2f} s ({self.loop_tokens / self.loop_seconds:.1f} "
                "new tokens/s)",
                f"auditor, no prefix reuse: {self.plain_seconds:8.2f} s",
                f"auditor, prefix reuse:    {self.auditor_seconds:8.2f} s",
                benchkit.ratio_line("replay speed-up without prefix reuse", self.loop_seconds, self.plain_seconds,
                                    SPEED_TARGET),
                benchkit.ratio_line("replay speed-up with prefix reuse", self.loop_seconds, self.auditor_seconds,
                                    SPEED_TARGET),
                f"prefix reuse: {self.plain_seconds / self.auditor_seconds:.2f}x; identical tokens with and without: "
                f"{self.reuse_same_tokens}/{self.prompts}",
                f"judged the same: {self.same_label}/{self.prompts} = {self.same_label_share:.1%} (target >= "
                f"{SAME_LABEL_TARGET:.0%}: {reached}); identical tokens: {self.same_tokens}/{self.prompts}"]


def suite_items(count: int) -> list[PromptItem]:
    """The default recipe's refusal, benign and contrast items, in turn, `count` of them."""
    suites = load_suites(load_recipe("default"))
    mixed = [item for group in zip(suites.refusal, suites.benign, suites.contrast, strict=False) for item in group]
    rest = [i for i in suites.refusal + suites.benign + suites.contrast if i not in mixed]
    return benchkit.cycle(mixed + rest, count)


def personas() -> list[str | None]:
    """The default recipe's replay personas' system prompts (None: the one without a persona)."""
    return [p.system or None for p in load_suites(load_recipe("default")).personas]


def loop_generate(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], max_new_tokens: int) -> list[Generation]:
    """`generate` on one prompt at a time, no padding, greedy, stopping at the same end-of-turn tokens."""
    stops = stop_ids(checkpoint)
    responses = []
    for prompt in prompts:
        ids = torch.tensor([render(checkpoint.tokenizer, prompt).ids])
        output = checkpoint.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                           eos_token_id=stops, pad_token_id=checkpoint.tokenizer.pad_token_id,
                                           top_p=None, top_k=None, temperature=None)
        responses.append(cut_at_stop(output[0, ids.shape[1]:].tolist(), stops, checkpoint.tokenizer))
    return responses


def compare(checkpoint: Checkpoint, items: Sequence[PromptItem], *, max_new_tokens: int,
            batch_size: int, systems: Sequence[str | None] = (None,), repeats: int = 1) -> Comparison:
    """The three replays, timed in this process one after the other, after one short warm-up generation; the
    auditor's two, without and with prefix reuse, `repeats` times in turn (the median is kept: on a shared machine
    one run of each is noisier than the difference). Item k is asked under `systems[k % len(systems)]` (None:
    the template's default system prompt)."""
    prompts = [ChatPrompt(item.prompt, systems[k % len(systems)]) for k, item in enumerate(items)]
    benchkit.timed(lambda: loop_generate(checkpoint, prompts[:1], 4))
    loop_seconds, expected = benchkit.timed(lambda: loop_generate(checkpoint, prompts, max_new_tokens))

    def auditor(share_prefix: bool) -> tuple[float, list[Generation]]:
        return benchkit.timed(lambda: generate(checkpoint, prompts, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size, cache=GenerationCache.in_memory(),
                                               share_prefix=share_prefix))

    runs = [(auditor(False), auditor(True)) for _ in range(repeats)]
    (_, plain), (_, got) = runs[0]
    plain_seconds = statistics.median(without[0] for without, _ in runs)
    auditor_seconds = statistics.median(with_reuse[0] for _, with_reuse in runs)
    judge = PhraseJudge()
    same_label = sum(judge.label(item.prompt, Response(a.text, a.token_ids))
                     == judge.label(item.prompt, Response(b.text, b.token_ids))
                     for item, a, b in zip(items, expected, got, strict=True))
    same_tokens = sum(a.token_ids == b.token_ids for a, b in zip(expected, got, strict=True))
    return Comparison(len(items), loop_seconds, plain_seconds, auditor_seconds, same_label, same_tokens,
                      sum(len(g.token_ids) for g in expected),
                      sum(a.token_ids == b.token_ids for a, b in zip(plain, got, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256, help="how many prompts (issue 15's size: 256)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="new tokens at most (issue 15's: 256)")
    parser.add_argument("--batch-size", type=int, default=load_recipe("default").replay.batch_size,
                        help="the auditor's largest batch (default: the default recipe's replay batch size)")
    parser.add_argument("--personas", type=int, default=0,
                        help="ask the items under the default recipe's first N personas in turn, as the persona design "
                             "does (0: no system prompt)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time the auditor without and with prefix reuse this many times in turn (median)")
    args = parser.parse_args()
    items = suite_items(args.prompts)
    systems = personas()[:args.personas] or [None]
    asked = f"under {len(systems)} personas in turn" if args.personas else "no system prompt"
    print(f"SmolLM2-135M-Instruct, {len(items)} prompts, up to {args.max_new_tokens} new tokens, batch <= "
          f"{args.batch_size}, {asked}, {benchkit.machine()}")
    comparison = compare(benchkit.smollm2(), items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         systems=systems, repeats=args.repeats)
    print("\n".join(comparison.lines()))


if __name__ == "__main__":
    main()
