"""Residual-stream capture: per decoder block, reduced to a few token positions on the fly.

Prompts are rendered with the model's own chat template and tokenized once. Batches (`auditor.batching`) are
left-padded with explicit position ids, so a prompt's activations do not depend on what it is
batched with. Hooks reduce each block's output to one vector per position kind before the next
block runs, so memory is (prompts x layers x d_model), never full sequences. On request (`share_prefix`), a
prefix a batch's prompts share is run once, as a key/value cache, and only the rest of each prompt through the
hooks.
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

    def first(self, position: Position) -> int:
        """The first token a position averages over: the last token, or every token from `post_start` on."""
        return len(self.ids) - 1 if position == "last" else self.post_start


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
    system = (prompt.system or "").strip()
    if system and system not in text:  # some templates skip the system role instead of raising
        raise AuditInputError(f"the chat template drops the system prompt {system[:60]!r}, so a persona-prompted "
                              "prompt would be the plain one and every persona number zero. Pass --chat-template "
                              "with a template that renders system messages.")
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
    """A (batch, width) matrix whose row averages the chosen token positions of one prompt ending at the right
    edge (left-padded, or padded after a shared prefix: `batching.left_pad`)."""
    weights = torch.zeros((len(rendered), width), dtype=torch.float32)
    for row, item in enumerate(rendered):
        start = width - len(item.ids) + item.first(position)
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
    share_prefix: bool = False,
    desc: str = "activations",
) -> dict[Position, Tensor]:
    """Activations per position: a float32 tensor (prompts, layers, d_model), in the order of `prompts`, for the
    decoder blocks `layers` (indices, in increasing order; None: every block). Each forward pass stops after the
    last block asked for (`hooks.StopForward`): the later blocks, the final norm and the head never run.
    `batch_size` bounds the batches `auditor.batching` plans from free memory and the prompts' lengths.

    With `share_prefix`, prompts are batched by system prompt, and the first tokens a batch's prompts share (the
    template's system block, a persona) are computed once, at batch 1, as a key/value cache; only the rest of each
    prompt runs with it, so the hooks see the rest alone. The prefix ends before the first token any requested
    position averages over (`Rendered.first`), so nothing captured lies in it. The activations differ from a run
    without reuse only by float rounding (tests/test_activations.py), but they do differ in the last bits."""
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
            if not weights:
                return  # a shared prefix's own pass (`batching.prefix_cache`): only its keys and values are wanted
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
        shared = batch.prefix_length  # 0 without a reused prefix; only the columns after it run
        group = [rendered[i] for i in indices]
        width = batch.input_ids.shape[1]
        # every prompt ends at the right edge, with or without a prefix in front, and no captured token lies in
        # the prefix (`own_from` below): the columns cut off carry no weight
        weights.update({p: position_weights(group, width, p)[:, shared:] for p in positions})
        try:
            model(**batch.forward_inputs(), use_cache=False, logits_to_keep=1)
        except StopForward:
            pass  # every block asked for has run
        finally:
            weights.clear()
        for p in positions:  # only a finished forward pass is kept (an OOM retry starts clean)
            for slot, reduced in pending[p].items():
                collected[p][slot].append(reduced)
        order_done.extend(indices)

    hooks = [(blocks[index], record(slot, index)) for slot, index in enumerate(chosen)]
    with forward_hooks(hooks):
        for_each_batch(checkpoint, [r.ids for r in rendered], forward, limit=batch_size, share_prefix=share_prefix,
                       groups=[p.system for p in prompts] if share_prefix else None,
                       own_from=[min(r.first(p) for p in positions) for r in rendered] if share_prefix else None,
                       desc=desc)
    inverse = torch.empty(len(order_done), dtype=torch.long)
    inverse[torch.tensor(order_done, dtype=torch.long)] = torch.arange(len(order_done))
    return {p: torch.stack([torch.cat(per_layer) for per_layer in collected[p]], dim=1)[inverse] for p in positions}
