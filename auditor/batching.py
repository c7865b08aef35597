"""Batches of prompts planned from the device's free memory and the prompts' lengths.

A fixed batch size is wrong everywhere but where it was tuned: too small, and a GPU sits idle between
small kernels; too large, and a long prompt runs out of memory. Every batched pass (capture, first-token
scoring, generation) is planned here instead. Prompts are sorted by length, so each batch's padding is small
and its width is its last prompt's length; a batch grows while the estimated memory of a forward pass
(`Footprint`) stays within a share of the free memory (`budget`) and it stays within the caller's `limit` (the
recipe's batch size, now an upper bound). Callers put results back in their own order.

The estimate is deliberately simple and conservative (activations of one block, attention scores as if
materialised, the key/value cache, float32 logits); `run_batch` still halves a batch that runs
out of memory, so an estimate that is too low costs a retry, not the run.

With enough memory the plan is exactly the old fixed one: the sorted prompts cut every `limit` items.

`for_each_batch` is the one loop every batched pass runs: plan, left-pad each batch, run it with the
out-of-memory halving of `run_batch`, all under `torch.inference_mode`. Capture, first-token scoring and
generation differ only in what they do with a padded `Batch`.

The audit's generation also reuses shared prefixes (`share_prefix`): prompts are grouped by system prompt
before they are sorted by length, and a batch whose prompts all start with the same tokens (the template's
system block, a persona's prompt) has that prefix's keys and values computed once, at batch 1, with each
prompt's rest padded after it. The suites, asked without a system prompt, keep the plan above; the persona
design's batches each hold one persona. The audit's direction capture reuses prefixes too
(`activations.capture(share_prefix=True)`); the prefix then ends before the first token it captures.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from auditor import heap
from auditor.models import Checkpoint

# The share of free memory one batch may plan for. On CUDA the auditor is usually alone on the card, and the
# estimate already counts attention scores that flash / memory-efficient kernels never materialise. On the CPU
# the memory is shared with everything else on the machine, and the allocator fragments more.
BUDGET_SHARE = {"cuda": 0.8, "cpu": 0.5}
# Below this many shared tokens, computing a batch's prefix once costs a forward pass more than it saves.
MIN_SHARED_PREFIX = 16
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class Footprint:
    """Bytes a batched forward pass needs beyond the weights, from the model's configuration and dtype.

    `per_token`: activations alive at once inside one decoder block (residual, q/k/v, attention output, the MLP's
    gate, up and activated projections) plus the float32 copy a capture hook reduces; `per_pair`: attention
    scores and mask for one (query, key) pair over all heads; `per_cached_token`: the key/value cache of one
    token over all layers; `per_row`: one row's float32 logits and their log-softmax."""

    per_token: int
    per_pair: int
    per_cached_token: int
    per_row: int

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype) -> Footprint:
        """From a transformers config (a multimodal config's text part); sizes it lacks take the usual defaults."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        element = torch.empty((), dtype=dtype).element_size()
        hidden = int(text.hidden_size)
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
        return cls(per_token=(4 * hidden + 3 * intermediate) * element + 2 * hidden * 4,
                   per_pair=heads * 2 * element + 4,
                   per_cached_token=2 * int(text.num_hidden_layers) * kv_heads * head_dim * element,
                   per_row=2 * int(text.vocab_size) * 4)

    def batch_bytes(self, rows: int, width: int, new_tokens: int) -> int:
        """A batch of `rows` prompts padded to `width` tokens; `new_tokens` > 0 is generation, with its cache."""
        cache = self.per_cached_token * (width + new_tokens) if new_tokens else 0
        return rows * (self.per_token * width + self.per_pair * width * width + self.per_row + cache)


def plan(lengths: Sequence[int], *, limit: int, budget: int | None, footprint: Footprint,
         new_tokens: int = 0, groups: Sequence[Hashable] | None = None,
         separate_groups: bool = False) -> list[list[int]]:
    """Batches of indices into `lengths`, shortest prompts first (ties in the caller's order), each at most
    `limit` long and, where `budget` is known, estimated to fit in it. A prompt that does not fit alone is a
    batch of one (out-of-memory handling has the last word).

    With `groups` (one per prompt: prompts of a group share a prefix, such as their system prompt), prompts are
    sorted by group first, in the order groups first appear, then by length, so a group fills batches of its own
    and its prefix can be computed once per batch; batches are cut by `limit` and `budget`, and with
    `separate_groups` also where a group ends, so that no batch holds two groups (and its whole group's prefix
    is shared)."""
    if limit < 1:
        raise ValueError(f"a batch size limit must be at least 1, got {limit}")
    rank: dict[Hashable, int] = {}
    for group in groups or ():
        rank.setdefault(group, len(rank))
    order = sorted(range(len(lengths)), key=lambda i: (rank[groups[i]] if groups else 0, lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # the current batch's longest prompt (the last one, unless a new group began inside the batch)
    for index in order:
        wider = max(width, lengths[index])
        full = len(current) == limit or (
            budget is not None and footprint.batch_bytes(len(current) + 1, wider, new_tokens) > budget) or (
            separate_groups and groups is not None and bool(current) and groups[current[-1]] != groups[index])
        if current and full:
            batches.append(current)
            current, wider = [], lengths[index]
        current.append(index)
        width = wider
    if current:
        batches.append(current)
    return batches


def plan_for(model: Any, device: torch.device, lengths: Sequence[int], *, limit: int,
             new_tokens: int = 0, groups: Sequence[Hashable] | None = None,
             separate_groups: bool = False) -> list[list[int]]:
    """`plan` for `model` on `device`, with the budget read from the device's free memory now."""
    footprint = Footprint.of(model.config, next(model.parameters()).dtype)
    return plan(lengths, limit=limit, budget=budget(device), footprint=footprint, new_tokens=new_tokens,
                groups=groups, separate_groups=separate_groups)


def budget(device: torch.device) -> int | None:
    """The bytes one batch may plan for on `device`; None where free memory cannot be read (only `limit` holds)."""
    free = free_bytes(device)
    return None if free is None else int(free * BUDGET_SHARE["cuda" if device.type == "cuda" else "cpu"])


def free_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: on CUDA what the driver reports plus what torch holds cached but unused (its
    allocator reuses that first); on the CPU the kernel's MemAvailable, else the free physical pages."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None  # mps, xpu, ...: no portable query; the recipe's batch size alone bounds the batch
    return meminfo_available(MEMINFO) or _sysconf_available()


def meminfo_available(path: Path) -> int | None:
    """MemAvailable from a /proc/meminfo file (kB in the file), or None when the file or the line is missing."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every platform has these names
        return None


@dataclass(frozen=True)
class Batch:
    """Left-padded model inputs for a group of rendered prompts.

    With a shared prefix (`prefix_length` > 0), the prompts' common first tokens stay in front, unpadded, and
    `prefix_cache` holds their keys and values, computed once and repeated for every row; the rest of each prompt
    is left-padded after them. `input_ids` and `attention_mask` still cover the whole prompts."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    lengths: list[int]
    prefix_length: int = 0
    prefix_cache: Any = None  # a transformers Cache holding the prefix, batch-sized; None without a shared prefix

    def cache_argument(self) -> dict[str, Any]:
        """The keyword that hands the prefix's cache to `generate` or a forward pass over the rest (none without a
        shared prefix)."""
        return {} if self.prefix_cache is None else {cache_keyword(): self.prefix_cache}

    def forward_inputs(self) -> dict[str, Any]:
        """The keywords of a forward pass over the batch: with a shared prefix only the columns after it run, over
        the prefix's keys and values (the attention mask still covers every column)."""
        shared = self.prefix_length
        return {"input_ids": self.input_ids[:, shared:], "attention_mask": self.attention_mask,
                "position_ids": self.position_ids[:, shared:], **self.cache_argument()}


def left_pad(sequences: Sequence[list[int]], pad_id: int, device: torch.device, prefix_length: int = 0) -> Batch:
    """Pad on the left; position ids count real tokens only, as they would for the prompt alone. With
    `prefix_length` P (a prefix all `sequences` share), the first P tokens stay in front and each rest is padded
    after them: attention mask [1]*P + [0]*pad + [1]*rest, positions continuing at P."""
    rests = [s[prefix_length:] for s in sequences]
    width = prefix_length + max(len(r) for r in rests)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, rest) in enumerate(zip(sequences, rests, strict=True)):
        input_ids[row, :prefix_length] = torch.tensor(seq[:prefix_length], dtype=torch.long)
        input_ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
        mask[row, :prefix_length] = 1
        mask[row, width - len(rest):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids.to(device), mask.to(device), positions.to(device), [len(s) for s in sequences],
                 prefix_length)


def shared_prefix_length(sequences: Sequence[list[int]], own_from: Sequence[int] | None = None) -> int:
    """How many first tokens all `sequences` share, leaving each its tokens from `own_from` (one index per
    sequence) on; by default its last token, from which the next token's logits come and which must therefore run
    with the rest. A capture passes its first captured token: the hooks only see what runs with the rest."""
    first = sequences[0]
    limit = min(own_from) if own_from is not None else min(len(s) for s in sequences) - 1
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


def prefix_cache(model: Any, prefix: Tensor, rows: int) -> Any:
    """The keys and values of `prefix` (1, P), computed in one pass of batch 1 through the decoder blocks (the
    language-model head has nothing to predict there) and repeated to `rows`."""
    output = model.get_decoder()(input_ids=prefix, use_cache=True)
    cache = getattr(output, cache_keyword())
    cache.batch_repeat_interleave(rows)
    return cache


@functools.cache
def cache_keyword() -> str:
    """The keyword transformers takes a key/value cache under (and returns it as): `cache` in 5.x, `past_key_values`
    before. Read from the signature, not the version, and only when needed: importing transformers is slow."""
    from transformers import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def reusable_prefix(model: Any, sequences: Sequence[list[int]], new_tokens: int,
                    own_from: Sequence[int] | None = None) -> int:
    """The shared prefix worth computing once for a batch of `sequences`, or 0 (`own_from`: see
    `shared_prefix_length`). Too short a prefix costs a forward pass more than it saves; under a sliding attention
    window, padding after the prefix would move the window, so only a batch that fits in the window shares it."""
    if len(sequences) < 2:
        return 0
    length = shared_prefix_length(sequences, own_from)
    window = getattr(model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config,
                     "sliding_window", None)
    if window and max(len(s) for s in sequences) + new_tokens > window:
        return 0
    return length if length >= MIN_SHARED_PREFIX else 0


def run_batch(group: list[int], run: Callable[[list[int]], None]) -> None:
    """Run one batch of prompts; if the accelerator runs out of memory, run each half instead
    (recursively), then hand the batch's freed CPU memory back where that is allowed (`auditor.heap`).

    The run goes on with smaller batches instead of dying after hours; a single prompt that does
    not fit still raises. Every batched forward pass goes through here, so memory stays what one
    batch needs however many batches a suite has.
    """
    try:
        run(group)
    except torch.cuda.OutOfMemoryError:
        if len(group) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        warnings.warn(f"out of memory on a batch of {len(group)}; retrying as two batches of "
                      f"{len(group) // 2} and {len(group) - len(group) // 2}", RuntimeWarning, stacklevel=2)
        half = len(group) // 2
        run_batch(group[:half], run)
        run_batch(group[half:], run)
        return
    heap.batch_done()


def input_device(model: nn.Module) -> torch.device:
    """Where inputs go: the embedding's device (also right under an accelerate device_map)."""
    return model.get_input_embeddings().weight.device  # type: ignore[operator, union-attr, no-any-return]


def for_each_batch(checkpoint: Checkpoint, sequences: Sequence[list[int]], run: Callable[[list[int], Batch], None],
                   *, limit: int, new_tokens: int = 0, needed: Sequence[bool] | None = None,
                   share_prefix: bool = False, groups: Sequence[Hashable] | None = None,
                   separate_groups: bool = False, own_from: Sequence[int] | None = None,
                   desc: str = "batches") -> None:
    """Run `run(indices, batch)` on every planned batch of `sequences` (token ids), left-padded on the model's
    input device. `limit` bounds the batch size, `new_tokens` > 0 plans for generation; with `needed`, a batch
    none of whose prompts is needed is skipped (what a cache already holds). The plan is made over all
    `sequences` first, so skipping some never changes the batches the others are run in.

    With `share_prefix`, a batch whose prompts start with the same tokens (the chat template's system block, one
    persona's system prompt) gets that prefix's keys and values computed once (`Batch.prefix_cache`), for a
    `run` that hands them to `generate` or to a forward pass over the rest; where no prefix is worth it
    (`reusable_prefix`) the batch is plain. `groups` (see `plan`) batches the prompts of one system prompt
    together, so that they share it (`separate_groups`: never two groups in a batch); `own_from` (one index per
    sequence) ends the prefix before the first token a capture or a score must see (`shared_prefix_length`)."""
    model, pad_id = checkpoint.model, checkpoint.tokenizer.pad_token_id
    device = input_device(model)
    planned = plan_for(model, device, [len(s) for s in sequences], limit=limit, new_tokens=new_tokens, groups=groups,
                       separate_groups=separate_groups)
    todo = planned if needed is None else [group for group in planned if any(needed[i] for i in group)]
    with tqdm(total=sum(len(group) for group in todo), desc=desc, unit="prompt", leave=False) as bar, \
            torch.inference_mode():
        def padded(group: list[int]) -> None:
            rows = [sequences[i] for i in group]
            own = None if own_from is None else [own_from[i] for i in group]
            shared = reusable_prefix(model, rows, new_tokens, own) if share_prefix else 0
            batch = left_pad(rows, pad_id, device, shared)
            if shared:
                batch = replace(batch, prefix_cache=prefix_cache(model, batch.input_ids[:1, :shared], len(group)))
            run(group, batch)
            bar.update(len(group))

        for group in todo:
            run_batch(group, padded)
