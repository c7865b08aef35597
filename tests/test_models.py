from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import lora_adapter, make_model

from auditor import models, sources
from auditor.errors import AuditInputError


def test_lora_shares_one_base_copy_and_toggles(base_dir: Path, lora_random_dir: Path) -> None:
    pair = models.load_pair(str(base_dir), str(lora_random_dir), models.LoadOptions())
    assert pair.kind == "lora" and len(pair.in_memory()) == 1  # the base, with the adapter attached
    ids = torch.tensor([[5, 6, 7, 8]])
    with pair.loaded("base") as base:
        base_logits = base.model(input_ids=ids).logits
    with pair.loaded("finetune") as finetune:
        assert finetune.model is base.model
        ft_logits = finetune.model(input_ids=ids).logits
    with pair.loaded("base") as again:
        assert torch.equal(again.model(input_ids=ids).logits, base_logits)
    assert not torch.allclose(base_logits, ft_logits)


def test_full_finetune_low_memory_loads_in_turn(base_dir: Path, full_small_dir: Path) -> None:
    pair = models.load_pair(str(base_dir), str(full_small_dir), models.LoadOptions(low_memory=True))
    assert pair.kind == "full" and pair.in_memory() == []  # nothing loaded before a side is used
    with pair.loaded("finetune") as checkpoint:
        weight = models.decoder_layers(checkpoint.model)[0].self_attn.q_proj.weight
        saved = load_file(str(full_small_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
        assert torch.equal(weight, saved)


def test_low_memory_keeps_the_last_side_instead_of_reloading(base_dir: Path, full_small_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading is counted: a side used again in a row is not read from disk again; switching sides reloads."""
    loaded: list[str] = []
    real_load = models._load_checkpoint

    def counting(source: sources.Source, options: models.LoadOptions) -> models.Checkpoint:
        loaded.append(source.name)
        return real_load(source, options)

    monkeypatch.setattr(models, "_load_checkpoint", counting)
    pair = models.load_pair(str(base_dir), str(full_small_dir), models.LoadOptions(low_memory=True))
    assert loaded == []
    for side in ("finetune", "finetune", "finetune", "base", "base", "finetune"):
        with pair.loaded(side) as checkpoint:  # type: ignore[arg-type]
            assert checkpoint.model is not None
    assert loaded == [str(full_small_dir), str(base_dir), str(full_small_dir)]


@pytest.mark.parametrize("change", [{"hidden": 48}, {"layers": 3}])
def test_mismatched_models_are_refused_naming_both(base_dir: Path, tmp_path: Path, change: dict[str, int]) -> None:
    other = make_model(tmp_path / "other", **change)
    with pytest.raises(AuditInputError) as err:
        models.load_pair(str(base_dir), str(other), models.LoadOptions())
    message = str(err.value)
    assert str(base_dir) in message and str(other) in message
    assert ("hidden_size" in message) == ("hidden" in change)
    assert ("num_hidden_layers" in message) == ("layers" in change)


def test_adapter_for_another_base_is_refused(base_dir: Path, tmp_path: Path) -> None:
    other_base = make_model(tmp_path / "other-base", hidden=48)
    adapter = lora_adapter(other_base, tmp_path / "adapter", random=False)
    with pytest.raises(AuditInputError, match="adapter made for another base"):
        models.load_pair(str(base_dir), str(adapter), models.LoadOptions())


def test_pickled_weights_refused_unless_allowed(base_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(pickled)
    assert not list(pickled.glob("*.safetensors"))
    with pytest.raises(AuditInputError, match="--allow-pickle"):
        models.load_pair(str(base_dir), str(pickled), models.LoadOptions())
    pair = models.load_pair(str(base_dir), str(pickled), models.LoadOptions(allow_pickle=True))
    assert pair.kind == "full"
    assert sources.resolve_source(str(pickled), what="--finetune").describe()["format"] == "pickle"
    assert sources.resolve_source(str(base_dir), what="--base").describe()["format"] == "safetensors"


def test_corrupt_safetensors_named(base_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(base_dir, tmp_path / "broken"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AuditInputError, match="model.safetensors is truncated or corrupt"):
        models.load_pair(str(base_dir), str(broken), models.LoadOptions())


@pytest.mark.parametrize("name, expected", [
    ("/no/such/folder", "no such file or folder"),
    ("org/not-cached-model", "hf download org/not-cached-model"),
])
def test_missing_sources_explain_the_fix(name: str, expected: str, offline_hub: Path) -> None:
    with pytest.raises(AuditInputError, match=expected):
        sources.resolve_source(name, what="--finetune")


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match="is not a model folder"):
        sources.resolve_source(str(tmp_path), what="--base")


def test_missing_chat_template_explains_flag(base_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = None
    with pytest.raises(AuditInputError, match="--chat-template"):
        models.prepare_tokenizer(tokenizer, "m", None)
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    assert models.prepare_tokenizer(tokenizer, "m", str(template)).chat_template == "{{ messages[0]['content'] }}"


def test_no_op_finetunes_are_reported_as_identical(base_dir: Path, same_dir: Path, lora_zero_dir: Path,
                                                   lora_random_dir: Path, full_small_dir: Path) -> None:
    def identical(finetune: Path) -> str | None:
        pair = models.load_pair(str(base_dir), str(finetune), models.LoadOptions(low_memory=True))
        assert pair.describe()[1].identical_to_base == (pair.identical is not None)
        assert (pair.identical is not None) == any("identical in function" in w for w in pair.warnings)
        return pair.identical

    assert "B @ A is zero" in str(identical(lora_zero_dir))
    assert "every weight tensor equal" in str(identical(same_dir))
    assert identical(lora_random_dir) is None
    assert identical(full_small_dir) is None


def test_folder_with_an_adapter_and_full_weights_warns(base_dir: Path, lora_random_dir: Path,
                                                       tmp_path: Path) -> None:
    both = Path(shutil.copytree(lora_random_dir, tmp_path / "both"))
    shutil.copy(base_dir / "model.safetensors", both / "model.safetensors")
    pair = models.check_pair(str(base_dir), str(both), models.LoadOptions())
    assert pair.kind == "lora"
    assert [w for w in pair.warnings if "both a PEFT adapter" in w and "model.safetensors" in w]
    assert models.check_pair(str(base_dir), str(lora_random_dir), models.LoadOptions()).warnings == ()


def test_a_lent_tokenizer_gets_its_settings_back(base_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side, tokenizer.pad_token = "right", None
    template = tokenizer.chat_template
    with models.tokenizer_restored(tokenizer):
        models.prepare_tokenizer(tokenizer, "t", None)
        tokenizer.chat_template = "{{ messages }}"
        assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token
    assert (tokenizer.padding_side, tokenizer.pad_token, tokenizer.chat_template) == ("right", None, template)
