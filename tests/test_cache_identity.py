"""The generation cache never hands one model's outputs to another (issue 11, item 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_replay_recipe

from auditor import models, sources
from auditor.cli import main


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_lora_alpha_change_does_not_reuse_replays(base_dir: Path, lora_random_dir: Path, tmp_path: Path) -> None:
    """The issue's case: the same LoRA weights with another lora_alpha, audited with one --cache-dir."""
    recipe = write_replay_recipe(tmp_path)
    alpha = Path(shutil.copytree(lora_random_dir, tmp_path / "alpha-1"))
    edit_json(alpha / "adapter_config.json", lora_alpha=1)
    cache = tmp_path / "cache"

    def replay(finetune: Path, out: str, *cache_args: str) -> dict[str, Any]:
        assert main(["replay", "--base", str(base_dir), "--finetune", str(finetune), "--recipe", str(recipe),
                     "--out", str(tmp_path / out), *cache_args]) == 0
        return json.loads((tmp_path / out / "results.json").read_text())["replay"]

    original = replay(lora_random_dir, "original", "--cache-dir", str(cache))
    files_after_first = set((cache / "replay").glob("*.jsonl"))
    cached = replay(alpha, "cached", "--cache-dir", str(cache))
    fresh = replay(alpha, "fresh", "--no-cache")
    assert set((cache / "replay").glob("*.jsonl")) > files_after_first  # a cache file of its own
    assert cached == fresh
    assert cached["refusal"] != original["refusal"] or cached["false_refusal"] != original["false_refusal"]


def _change_lora_r_targets(folder: Path) -> None:
    edit_json(folder / "adapter_config.json", target_modules=["q_proj", "v_proj"])


def _change_config(folder: Path) -> None:
    edit_json(folder / "config.json", rms_norm_eps=0.5)


def _change_generation_config(folder: Path) -> None:
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.3}))


def _change_chat_template(folder: Path) -> None:
    edit_json(folder / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")


@pytest.mark.parametrize("change", [_change_lora_r_targets, _change_config, _change_generation_config,
                                    _change_chat_template])
def test_fingerprint_covers_every_file_that_changes_the_function(base_dir: Path, lora_random_dir: Path,
                                                                 tmp_path: Path,
                                                                 change: Callable[[Path], None]) -> None:
    base = Path(shutil.copytree(base_dir, tmp_path / "base"))
    adapter = Path(shutil.copytree(lora_random_dir, tmp_path / "adapter"))

    def fingerprints() -> tuple[str | None, str | None]:
        pair = models.ModelPair(base=sources.resolve_source(str(base), what="--base"),
                                finetune=sources.resolve_source(str(adapter), what="--finetune"),
                                options=models.LoadOptions(), kind="lora")
        return pair.fingerprint("base"), pair.fingerprint("finetune")

    before = fingerprints()
    change(adapter if change is _change_lora_r_targets else base)
    after = fingerprints()
    assert after[1] != before[1]
    assert (after[0] != before[0]) == (change is not _change_lora_r_targets)


def test_fingerprint_covers_dtype_and_chat_template_override(base_dir: Path, tmp_path: Path) -> None:
    source = sources.resolve_source(str(base_dir), what="--base")
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")

    def fingerprint(options: models.LoadOptions) -> str | None:
        return models.ModelPair.in_turn(source, source, options).fingerprint("base")

    plain = fingerprint(models.LoadOptions())
    assert plain == fingerprint(models.LoadOptions(dtype="float32"))  # auto on the CPU is float32
    assert plain != fingerprint(models.LoadOptions(dtype="bfloat16"))
    assert plain != fingerprint(models.LoadOptions(chat_template=str(template)))


def test_a_torch_or_transformers_upgrade_does_not_reuse_replays(
        base_dir: Path, lora_random_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their kernels and generation code can change the tokens: generations cached under other versions are misses."""
    import torch
    import transformers

    from auditor.recipe import ReplayConfig
    from auditor.replay import open_cache

    pair = models.ModelPair(base=sources.resolve_source(str(base_dir), what="--base"),
                            finetune=sources.resolve_source(str(lora_random_dir), what="--finetune"),
                            options=models.LoadOptions(), kind="lora")

    def cache_file() -> Path | None:
        return open_cache(pair, "base", ReplayConfig(), tmp_path).path

    paths = {cache_file()}
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    paths.add(cache_file())
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    paths.add(cache_file())
    assert None not in paths and len(paths) == 3
