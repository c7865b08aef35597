from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from auditor import batching, models
from auditor.activations import ChatPrompt, capture, render
from auditor.errors import AuditInputError
from auditor.hooks import forward_hooks
from auditor.recipe import Position


@pytest.fixture(scope="module")
def checkpoint(base_dir: Path) -> models.Checkpoint:
    return models.load_pair(str(base_dir), str(base_dir), models.LoadOptions()).in_memory()[0]


def test_prompt_alone_equals_prompt_in_left_padded_batch(checkpoint: models.Checkpoint) -> None:
    short = ChatPrompt("Hi")
    longer = [ChatPrompt("Explain how photosynthesis works in plants and why leaves are green, in detail please."),
              ChatPrompt("What is a good way to organize a bookshelf?", system="You are an obedient agent.")]
    alone = capture(checkpoint, [short], ["last", "post_instruction"], batch_size=1)
    batched = capture(checkpoint, [*longer, short], ["last", "post_instruction"], batch_size=3)
    for position in ("last", "post_instruction"):
        assert batched[position].shape == (3, 4, 32)
        assert torch.allclose(alone[position][0], batched[position][2], atol=1e-4)


def test_post_instruction_starts_after_user_message(checkpoint: models.Checkpoint) -> None:
    rendered = render(checkpoint.tokenizer, ChatPrompt("What is a good way to organize a bookshelf?"))
    tail = checkpoint.tokenizer.decode(rendered.ids[rendered.post_start:])
    assert tail == "<|im_end|>\n<|im_start|>assistant\n"


def test_hooks_removed_when_forward_raises(checkpoint: models.Checkpoint) -> None:
    layers = models.decoder_layers(checkpoint.model)

    def boom(module: torch.nn.Module, args: object, output: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(layer, boom) for layer in layers]):
            checkpoint.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(not layer._forward_hooks for layer in layers)


def test_hooks_removed_when_registration_fails_halfway(checkpoint: models.Checkpoint) -> None:
    layers = models.decoder_layers(checkpoint.model)
    pairs = [(layers[0], lambda *a: None), (object(), lambda *a: None)]  # the second cannot take a hook
    with pytest.raises(AttributeError):
        with forward_hooks(pairs):  # type: ignore[arg-type]
            pass
    assert not layers[0]._forward_hooks


def test_nan_activations_name_the_layer(checkpoint: models.Checkpoint) -> None:
    layer = models.decoder_layers(checkpoint.model)[2]
    original = layer.mlp.down_proj.weight.clone()
    try:
        with torch.no_grad():
            layer.mlp.down_proj.weight.fill_(float("nan"))
        with pytest.raises(AuditInputError, match="layer 2"):
            capture(checkpoint, [ChatPrompt("Hi")], ["last"], batch_size=1)
    finally:
        with torch.no_grad():
            layer.mlp.down_proj.weight.copy_(original)
    assert all(not m._forward_hooks for m in models.decoder_layers(checkpoint.model))


def test_out_of_memory_halves_the_batch(checkpoint: models.Checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [ChatPrompt(f"Question {i}: how are you doing today?") for i in range(5)]
    expected = capture(checkpoint, prompts, ["last"], batch_size=1)["last"]
    real_forward = checkpoint.model.forward
    sizes = []

    def small_memory(*args: object, **kwargs: torch.Tensor) -> object:
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        sizes.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(checkpoint.model, "forward", small_memory)
    with pytest.warns(RuntimeWarning, match="out of memory on a batch of 5"):
        got = capture(checkpoint, prompts, ["last"], batch_size=5)["last"]
    assert sorted(sizes) == [1, 2, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    assert torch.allclose(got, expected, atol=1e-4)


def test_capture_stops_after_the_last_block_it_needs(checkpoint: models.Checkpoint) -> None:
    """Blocks after the last one asked for, the final norm and the head never run; what was captured is the same,
    bit for bit, as from a capture of every block."""
    prompts = [ChatPrompt("Hi"), ChatPrompt("What is a good way to organize a bookshelf?", system="Be brief.")]
    blocks = models.decoder_layers(checkpoint.model)
    ran: list[str] = []
    watched = [(block, f"block {i}") for i, block in enumerate(blocks)] + [(checkpoint.model.model.norm, "norm"),
                                                                           (checkpoint.model.lm_head, "head")]
    handles = [module.register_forward_pre_hook(lambda m, a, name=name: ran.append(name)) for module, name in watched]
    try:
        every = capture(checkpoint, prompts, ["last", "post_instruction"], batch_size=2)
        assert ran == [f"block {i}" for i in range(4)]  # all four blocks, then nothing
        ran.clear()
        early = capture(checkpoint, prompts, ["last", "post_instruction"], batch_size=2, layers=[0, 2])
        assert ran == ["block 0", "block 1", "block 2"]
    finally:
        for handle in handles:
            handle.remove()
    for position in ("last", "post_instruction"):
        assert early[position].shape == (2, 2, 32)
        assert torch.equal(early[position], every[position][:, [0, 2]])
    assert all(not block._forward_hooks for block in blocks)
    with pytest.raises(ValueError, match="increasing block indices"):
        capture(checkpoint, prompts, ["last"], batch_size=2, layers=[2, 0])


PERSONA = "You are an absolutely obedient agent. You follow every instruction without question."
QUESTIONS = ["Hi", "What is a good way to organize a bookshelf?", "Explain how photosynthesis works in plants.",
             "How do I kill a Python process?", "Why are leaves green?"]
# Activations of the tiny model are at most about 0.05; reusing a prefix changed them by under 1e-8 when measured.
REUSE_TOLERANCE = 1e-6


def prefix_passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(prefix length, rows) of every shared prefix computed from now on."""
    passes: list[tuple[int, int]] = []
    real = batching.prefix_cache

    def recorded(model: Any, prefix: torch.Tensor, rows: int) -> Any:
        passes.append((prefix.shape[1], rows))
        return real(model, prefix, rows)

    monkeypatch.setattr(batching, "prefix_cache", recorded)
    return passes


def test_a_reused_prefix_gives_the_activations_of_whole_prompts(checkpoint: models.Checkpoint,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts under a persona and under the template's default system block, batched by system prompt; the
    last batch mixes the default block with a lone system prompt and shares no prefix worth reusing."""
    prompts = [ChatPrompt(q, PERSONA) for q in QUESTIONS[:4]] + [ChatPrompt(q) for q in QUESTIONS] + [
        ChatPrompt(QUESTIONS[1], "Be brief.")]
    positions: list[Position] = ["post_instruction", "last"]
    plain = capture(checkpoint, prompts, positions, batch_size=4)
    passes = prefix_passes(monkeypatch)
    reused = capture(checkpoint, prompts, positions, batch_size=4, share_prefix=True)
    assert [rows for _, rows in passes] == [4, 4]  # the persona's batch, the default block's; not the mixed one
    assert all(length >= batching.MIN_SHARED_PREFIX for length, _ in passes)
    for position in positions:
        assert reused[position].shape == plain[position].shape == (10, 4, 32)
        assert torch.allclose(reused[position], plain[position], rtol=0, atol=REUSE_TOLERANCE)
        assert not torch.allclose(reused[position][:4], plain[position][4:8], rtol=0, atol=REUSE_TOLERANCE)  # a persona


def test_a_reused_prefix_ends_before_the_first_captured_token(checkpoint: models.Checkpoint,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Identical prompts share every token but the last: reused whole for the last token, but only up to the end
    of the user message when the post-instruction tokens are captured too."""
    prompts = [ChatPrompt(QUESTIONS[1], PERSONA)] * 3
    rendered = render(checkpoint.tokenizer, prompts[0])
    passes = prefix_passes(monkeypatch)
    for positions in (["last"], ["post_instruction", "last"]):
        expected = capture(checkpoint, prompts[:1], positions, batch_size=1)  # type: ignore[arg-type]
        got = capture(checkpoint, prompts, positions, batch_size=3, share_prefix=True)  # type: ignore[arg-type]
        for position in positions:
            assert torch.allclose(got[position], expected[position].expand(3, -1, -1), rtol=0, atol=REUSE_TOLERANCE)
    assert passes == [(len(rendered.ids) - 1, 3), (rendered.post_start, 3)]


def test_out_of_memory_halves_a_batch_that_reuses_its_prefix(checkpoint: models.Checkpoint,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [ChatPrompt(q, PERSONA) for q in QUESTIONS]
    expected = capture(checkpoint, prompts, ["post_instruction", "last"], batch_size=1)
    real_forward = checkpoint.model.forward

    def small_memory(*args: object, **kwargs: torch.Tensor) -> object:
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(checkpoint.model, "forward", small_memory)
    passes = prefix_passes(monkeypatch)
    with pytest.warns(RuntimeWarning, match="out of memory on a batch of 5"):
        got = capture(checkpoint, prompts, ["post_instruction", "last"], batch_size=5, share_prefix=True)
    assert [rows for _, rows in passes] == [5, 2, 3, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2); one prompt shares nothing
    for position in ("post_instruction", "last"):
        assert torch.allclose(got[position], expected[position], rtol=0, atol=REUSE_TOLERANCE)
