"""Residual-stream capture: per decoder block, reduced to a few token positions on the fly.

Prompts are rendered with the model's own chat template and tokenized once. Batches are
left-padded with explicit position ids, so a prompt's activations do not depend on what it is
batched with. Hooks reduce each block's output to one vector per position kind before the next
block runs, so memory is (prompts x layers x d_model), never full sequences.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from auditor import heap
from auditor.batching import plan_for
from auditor.errors import AuditInputError
from auditor.hooks import ForwardHook, block_output, forward_hooks
from auditor.models import Checkpoint, decoder_layers
from auditor.recipe import Position


@dataclass(frozen=True)
class ChatPrompt:
    """A user message, optionally under a system prompt (None: the template's default)."""

    user: str
    system: str | None = None


@dataclass(frozen=True)
class Rendered:
    """Token ids of a chat-rendered prompt; `post_start` is the first token after the user message."""

    ids: list[int]
    post_start: int


@dataclass(frozen=True)
class Batch:
    """Left-padded model inputs for a group of rendered prompts."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    lengths: list[int]


def render(tokenizer: object, prompt: ChatPrompt) -> Rendered:
    """Render with the chat template and the generation prompt, as the model sees it in chat."""
    messages = [{"role": "user", "content": prompt.user}]
    if prompt.system is not None:
        messages.insert(0, {"role": "system", "content": prompt.system})
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # type: ignore[attr-defined]
    except Exception as exc:  # jinja raises TemplateError for e.g. an unsupported system role
        raise AuditInputError(f"the chat template cannot render this prompt ({exc}). Use a recipe without system "
                              "prompts for this model, or pass --chat-template.") from None
    end = text.rfind(prompt.user)
    if end < 0:
        raise AuditInputError(f"the chat template changed the user message, so its end cannot be located: "
                              f"{prompt.user[:60]!r}. Pass --chat-template with a template that keeps it verbatim.")
    end += len(prompt.user)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # type: ignore[operator]
    ids: list[int] = encoded["input_ids"]
    after = [i for i, (start, _) in enumerate(encoded["offset_mapping"]) if start >= end]
    return Rendered(ids=ids, post_start=after[0] if after else len(ids) - 1)


def left_pad(sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> Batch:
    """Pad on the left; position ids count real tokens only, as they would for the prompt alone."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids.to(device), mask.to(device), positions.to(device), [len(s) for s in sequences])


def position_weights(rendered: Sequence[Rendered], width: int, position: Position) -> Tensor:
    """A (batch, width) matrix whose row averages the chosen token positions of one left-padded prompt."""
    weights = torch.zeros((len(rendered), width), dtype=torch.float32)
    for row, item in enumerate(rendered):
        pad = width - len(item.ids)
        start = width - 1 if position == "last" else pad + item.post_start
        weights[row, start:] = 1.0 / (width - start)
    return weights


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


def capture(
    checkpoint: Checkpoint,
    prompts: Sequence[ChatPrompt],
    positions: Sequence[Position],
    *,
    batch_size: int,
    layers_path: str | None = None,
    desc: str = "activations",
) -> dict[Position, Tensor]:
    """Activations per position: a float32 tensor (prompts, layers, d_model), in the order of `prompts`.
    `batch_size` bounds the batches `auditor.batching` plans from free memory and the prompts' lengths."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    layers = decoder_layers(model, layers_path)
    rendered = [render(tokenizer, p) for p in prompts]
    device = input_device(model)
    collected: dict[Position, list[list[Tensor]]] = {p: [[] for _ in layers] for p in positions}
    pending: dict[Position, dict[int, Tensor]] = {p: {} for p in positions}
    weights: dict[Position, Tensor] = {}
    order_done: list[int] = []  # prompt indices in the order their rows were collected

    def record(index: int) -> ForwardHook:
        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = block_output(output).detach()
            for position, w in weights.items():
                reduced = torch.einsum("btd,bt->bd", hidden.float(), w.to(hidden.device))
                if not torch.isfinite(reduced).all():
                    raise AuditInputError(f"the model produced NaN or infinite activations at layer {index} "
                                          "(decoder block index). Check the weights, or try --dtype float32.")
                pending[position][index] = reduced.cpu()
        return hook

    def forward(indices: list[int]) -> None:
        group = [rendered[i] for i in indices]
        batch = left_pad([r.ids for r in group], tokenizer.pad_token_id, device)
        width = batch.input_ids.shape[1]
        weights.clear()
        weights.update({p: position_weights(group, width, p) for p in positions})
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
              position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        for p in positions:  # only a finished forward pass is kept (an OOM retry starts clean)
            for index, reduced in pending[p].items():
                collected[p][index].append(reduced)
        order_done.extend(indices)

    hooks = [(layer, record(i)) for i, layer in enumerate(layers)]
    with forward_hooks(hooks), torch.inference_mode():
        for group in tqdm(plan_for(model, device, [len(r.ids) for r in rendered], limit=batch_size), desc=desc,
                          unit="batch", leave=False):
            run_batch(group, forward)
    inverse = torch.empty(len(order_done), dtype=torch.long)
    inverse[torch.tensor(order_done, dtype=torch.long)] = torch.arange(len(order_done))
    return {p: torch.stack([torch.cat(per_layer) for per_layer in collected[p]], dim=1)[inverse] for p in positions}
