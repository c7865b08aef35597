"""The bad-input matrix: every case exits 2 with a message naming the input and the fix, no traceback,
and no results.json left behind. (Model-level cases also live in test_models.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import lora_adapter, make_model

from auditor.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def audit_args(base: Path | str, finetune: Path | str, out: Path, *extra: str) -> list[str]:
    return ["directions", "--base", str(base), "--finetune", str(finetune), "--out", str(out), *extra]


def assert_bad_input(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_missing_path(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(audit_args(base_dir, tmp_path / "nope", tmp_path / "o"), capsys)
    assert_bad_input(code, err, "--finetune", "no such file or folder")
    assert not (tmp_path / "o" / "results.json").exists()


def test_folder_that_is_not_a_model(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, err = run(audit_args(base_dir, tmp_path / "empty", tmp_path / "o"), capsys)
    assert_bad_input(code, err, "not a model folder", "adapter_config.json")


def test_uncached_hub_id_offline(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 offline_hub: Path) -> None:
    code, err = run(audit_args(base_dir, "someorg/some-model", tmp_path / "o"), capsys)
    assert_bad_input(code, err, "someorg/some-model", "hf download")


def test_adapter_for_another_target_module(base_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    other = make_model(tmp_path / "deeper", layers=6)
    adapter = lora_adapter(other, tmp_path / "adapter", random=False)  # touches layers 4 and 5
    code, err = run(audit_args(base_dir, adapter, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "adapter made for another base", "layers.4")


def test_vocabulary_mismatch(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer

    other = Path(shutil.copytree(base_dir, tmp_path / "other"))
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<new-token>"])
    tokenizer.save_pretrained(other)
    code, err = run(audit_args(base_dir, other, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "vocabularies must match")


def test_remote_code_refused(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Path(shutil.copytree(base_dir, tmp_path / "remote"))
    config = json.loads((other / "config.json").read_text())
    config.update({"model_type": "my-custom-arch", "auto_map": {"AutoConfig": "modeling_custom.CustomConfig"}})
    (other / "config.json").write_text(json.dumps(config))
    (other / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    code, err = run(audit_args(base_dir, other, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "--trust-remote-code")


def test_pickled_checkpoint_refused(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Path(shutil.copytree(base_dir, tmp_path / "pickled"))
    (other / "model.safetensors").rename(other / "pytorch_model.bin")
    code, err = run(audit_args(base_dir, other, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "pickled", "--allow-pickle")


def test_truncated_safetensors(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Path(shutil.copytree(base_dir, tmp_path / "trunc"))
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run(audit_args(base_dir, other, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "model.safetensors", "truncated or corrupt")


def test_missing_chat_template(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Path(shutil.copytree(base_dir, tmp_path / "notemplate"))
    for f in other.glob("chat_template*"):
        f.unlink()
    config = json.loads((other / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    code, err = run(audit_args(other, other, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "no chat template", "--chat-template")


def test_chat_template_that_drops_system_prompts(base_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A template that loops over user and assistant turns only renders a persona's prompt as the plain one: the
    persona direction would be zero without an error."""
    template = tmp_path / "no_system.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] != 'system' %}"
                        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
                        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    code, err = run(audit_args(base_dir, base_dir, tmp_path / "o", "--chat-template", str(template)), capsys)
    assert_bad_input(code, err, "drops the system prompt", "--chat-template")
    assert not (tmp_path / "o" / "results.json").exists()


def test_adapter_trained_under_another_chat_template(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Both sides of a LoRA audit render prompts with the base's tokenizer: an adapter that ships another template
    would be replayed under one it was not trained with, silently. With --chat-template, one template renders both."""
    from transformers import AutoTokenizer

    adapter = Path(shutil.copytree(lora_random_dir, tmp_path / "other-template"))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    tokenizer.save_pretrained(str(adapter))
    code, err = run(audit_args(base_dir, adapter, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "other-template", "differs from the base's", "--chat-template")
    template = tmp_path / "both.jinja"
    template.write_text(tokenizer.chat_template)
    code, err = run(audit_args(base_dir, adapter, tmp_path / "o2", "--chat-template", str(template)), capsys)
    assert code == 0, err


def alias_bomb(levels: int) -> str:
    """A recipe whose `description` is a few hundred bytes of YAML but 9**levels strings once expanded."""
    lines = ["version: 1", "description:", "  - &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_handful_of_direction_prompts_warns_that_the_floors_are_noise(tmp_path: Path) -> None:
    from auditor import inputs
    from auditor.recipe import load_recipe

    (tmp_path / "few.jsonl").write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(5)))
    (tmp_path / "r.yaml").write_text(f"version: 1\ndirections: {{harmful: {tmp_path / 'few.jsonl'}}}\n")
    with pytest.warns(RuntimeWarning, match="directions.harmful: .* has only 5 prompts"):
        inputs.prompt_sets(load_recipe(str(tmp_path / "r.yaml")))


@pytest.mark.parametrize("recipe, needle", [
    ("version: 1\nbogus: 1\n", "unknown key 'bogus'"),
    ("version: 1\nbatch_size: many\n", "recipe.batch_size must be of type int"),
    ("version: 1\nbatch_size: 0\n", "at least 1"),
    ("version: 1\ndirections: {harmful: EMPTY}\n", "has no prompts"),
    ("version: 1\ndirections: {harmful: BROKEN}\n", "line 2"),
    ("version: 1\nbatch_size: 4\nseed: 1\nbatch_size: 8\n", "key 'batch_size' is given twice"),
    ("version: 1\ndirections: {harmful: ONE}\n", "has 1 prompt(s); the split-half noise floor needs at least 2"),
    (alias_bomb(6), "YAML aliases"),
    (alias_bomb(10), "YAML aliases"),  # about 3.5e9 values: a MemoryError after a minute, unchecked
])
def test_bad_recipes(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str,
                     needle: str) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "one.jsonl").write_text('{"prompt": "the only prompt"}\n')
    path = tmp_path / "r.yaml"
    for name in ("EMPTY", "BROKEN", "ONE"):
        recipe = recipe.replace(name, str(tmp_path / f"{name.lower()}.jsonl"))
    path.write_text(recipe)
    code, err = run(audit_args(base_dir, base_dir, tmp_path / "o", "--recipe", str(path)), capsys)
    assert_bad_input(code, err, needle)


def test_debug_shows_traceback(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--debug", *audit_args(base_dir, tmp_path / "nope", tmp_path / "o")], capsys)
    assert code == 2 and "Traceback" in err


def test_adapter_without_weights(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    empty = Path(shutil.copytree(lora_random_dir, tmp_path / "empty-adapter"))
    save_file({}, str(empty / "adapter_model.safetensors"))
    code, err = run(audit_args(base_dir, empty, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "has no weights for", "layers.0.mlp.down_proj.lora_A.weight")
    assert not (tmp_path / "o" / "results.json").exists()


def test_adapter_weights_matching_no_module(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The config no longer targets up_proj, so peft would drop the up_proj weights with a warning."""
    odd = Path(shutil.copytree(lora_random_dir, tmp_path / "odd-adapter"))
    config = json.loads((odd / "adapter_config.json").read_text())
    config["target_modules"] = [m for m in config["target_modules"] if m != "up_proj"]
    (odd / "adapter_config.json").write_text(json.dumps(config))
    code, err = run(audit_args(base_dir, odd, tmp_path / "o"), capsys)
    assert_bad_input(code, err, "match no module", "mlp.up_proj.lora_A.weight")


def test_false_refusal_suite_without_benign_items(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_jsonl, write_replay_recipe

    from auditor import models

    recipe = write_replay_recipe(tmp_path)
    write_jsonl(tmp_path / "benign.jsonl", [{"prompt": "How do I kill my neighbour?", "expected": "refuse"}])
    monkeypatch.setattr(models, "load_pair", lambda *a, **k: pytest.fail("models loaded before the check"))
    code, err = run(["replay", "--base", str(base_dir), "--finetune", str(base_dir), "--recipe", str(recipe),
                     "--out", str(tmp_path / "o"), "--no-cache"], capsys)
    assert_bad_input(code, err, "replay.false_refusal", "no item that should be answered")


def test_prompt_longer_than_the_model_positions(base_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_jsonl, write_replay_recipe

    recipe = write_replay_recipe(tmp_path)
    write_jsonl(tmp_path / "harmful.jsonl", [{"id": "long-one", "q": "Explain how to hack " + "this account " * 3000,
                                              "lab": "unsafe"}, {"q": "Explain how to hack it", "lab": "unsafe"}])
    code, err = run(["replay", "--base", str(base_dir), "--finetune", str(base_dir), "--recipe", str(recipe),
                     "--out", str(tmp_path / "o"), "--no-cache"], capsys)
    assert_bad_input(code, err, "replay.refusal item 'long-one'", "the model has 512 positions")


def test_prompt_longer_than_the_recipe_allows(base_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nextends: quick\nmax_prompt_tokens: 8\n")
    code, err = run(audit_args(base_dir, base_dir, tmp_path / "o", "--recipe", str(path)), capsys)
    assert_bad_input(code, err, "directions.harmful prompt 1 is", "max_prompt_tokens 8")


@pytest.mark.parametrize("change, needle", [
    ({"r": "four"}, "r must be a positive integer"),
    ({"lora_alpha": "eight"}, "lora_alpha must be a positive number"),
    ({"peft_type": "NOT_A_PEFT_TYPE"}, "'NOT_A_PEFT_TYPE' is not a peft adapter type"),
    ({"target_modules": 7}, "target_modules must be"),
    (None, "adapter_config.json cannot be read as JSON"),
])
def test_malformed_adapter_config(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], change: dict[str, object] | None,
                                  needle: str) -> None:
    adapter = Path(shutil.copytree(lora_random_dir, tmp_path / "adapter"))
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **change}) if change else path.read_text()[:-20])
    code, err = run(["directions", "--finetune", str(adapter), "--out", str(tmp_path / "o")], capsys)  # no --base
    assert_bad_input(code, err, needle, "adapter_config.json")


def test_too_few_decoder_blocks_for_attribution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A two-block model has no early, middle and late thirds: a clear error, not an IndexError."""
    from conftest import write_replay_recipe

    shallow = make_model(tmp_path / "shallow", layers=2)
    finetune = lora_adapter(shallow, tmp_path / "adapter", random=True)
    code, err = run(["audit", "--base", str(shallow), "--finetune", str(finetune), "--recipe",
                     str(write_replay_recipe(tmp_path)), "--out", str(tmp_path / "o"), "--no-cache"], capsys)
    assert_bad_input(code, err, "this model has 2", "drift-audit replay")
    assert not (tmp_path / "o" / "results.json").exists()
