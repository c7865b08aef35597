"""Residual-stream capture: per decoder block, reduced to a few token positions on the fly.

Prompts are rendered with the model's own chat template and tokenized once. Batches (`auditor.batching`) are
left-padded with explicit position ids, so a prompt's activations do not depend on what it is
batched with. Hooks reduce each block's output to one vector per position kind before the next
block runs, so memory is (prompts x layers x d_model), never full sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from auditor.batching import Batch, for_each_batch
from auditor.errors import AuditInputError
from auditor.hooks import ForwardHook, StopForward, block_output, forward_hooks
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


def position_weights(rendered: Sequence[Rendered], width: int, position: Position) -> Tensor:
    """A (batch, width) matrix whose row averages the chosen token positions of one left-padded prompt."""
    weights = torch.zeros((len(rendered), width), dtype=torch.float32)
    for row, item in enumerate(rendered):
        pad = width - len(item.ids)
        start = width - 1 if position == "last" else pad + item.post_start
        weights[row, start:] = 1.0 / (width - start)
    return weights


def capture(
    checkpoint: Checkpoint,
    prompts: Sequence[ChatPrompt],
    positions: Sequence[Position],
    *,
    batch_size: int,
    layers: Sequence[int] | None = None,
    layers_path: str | None = None,
    desc: str = "activations",
) -> dict[Position, Tensor]:
    """Activations per position: a float32 tensor (prompts, layers, d_model), in the order of `prompts`, for the
    decoder blocks `layers` (indices, in increasing order; None: every block). Each forward pass stops after the
    last block asked for (`hooks.StopForward`): the later blocks, the final norm and the head never run.
    `batch_size` bounds the batches `auditor.batching` plans from free memory and the prompts' lengths."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    blocks = decoder_layers(model, layers_path)
    chosen = list(range(len(blocks))) if layers is None else list(layers)
    if not chosen or chosen != sorted(set(chosen)) or not 0 <= chosen[0] <= chosen[-1] < len(blocks):
        raise ValueError(f"layers must be increasing block indices in [0, {len(blocks)}), got {chosen}")
    rendered = [render(tokenizer, p) for p in prompts]
    collected: dict[Position, list[list[Tensor]]] = {p: [[] for _ in chosen] for p in positions}
    pending: dict[Position, dict[int, Tensor]] = {p: {} for p in positions}
    weights: dict[Position, Tensor] = {}
    order_done: list[int] = []  # prompt indices in the order their rows were collected

    def record(slot: int, index: int) -> ForwardHook:
        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = block_output(output).detach()
            for position, w in weights.items():
                reduced = torch.einsum("btd,bt->bd", hidden.float(), w.to(hidden.device))
                if not torch.isfinite(reduced).all():
                    raise AuditInputError(f"the model produced NaN or infinite activations at layer {index} "
                                          "(decoder block index). Check the weights, or try --dtype float32.")
                pending[position][slot] = reduced.cpu()
            if index == chosen[-1]:
                raise StopForward
        return hook

    def forward(indices: list[int], batch: Batch) -> None:
        group = [rendered[i] for i in indices]
        width = batch.input_ids.shape[1]
        weights.clear()
        weights.update({p: position_weights(group, width, p) for p in positions})
        try:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        except StopForward:
            pass  # every block asked for has run
        for p in positions:  # only a finished forward pass is kept (an OOM retry starts clean)
            for slot, reduced in pending[p].items():
                collected[p][slot].append(reduced)
        order_done.extend(indices)

    hooks = [(blocks[index], record(slot, index)) for slot, index in enumerate(chosen)]
    with forward_hooks(hooks):
        for_each_batch(checkpoint, [r.ids for r in rendered], forward, limit=batch_size, desc=desc)
    inverse = torch.empty(len(order_done), dtype=torch.long)
    inverse[torch.tensor(order_done, dtype=torch.long)] = torch.arange(len(order_done))
    return {p: torch.stack([torch.cat(per_layer) for per_layer in collected[p]], dim=1)[inverse] for p in positions}
