from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor import models
from auditor.activations import ChatPrompt, capture, render
from auditor.errors import AuditInputError
from auditor.hooks import forward_hooks


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
