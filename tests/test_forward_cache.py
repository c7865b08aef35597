from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_replay_recipe

from auditor import behaviour, directions
from auditor.cli import main
from auditor.forward_cache import ForwardCache


def _results(out: Path) -> dict[str, Any]:
    data = json.loads((out / "results.json").read_text())
    data.pop("timings")
    return data


def test_a_rerun_reads_every_forward_pass_from_the_cache(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The second audit of the same pair runs no capture and no first-token pass, and writes the same
    results as the first (which computed them)."""
    passes: list[str] = []
    real_capture, real_first = directions.capture, behaviour.first_token_log_probs

    def capture(*args: Any, **kwargs: Any) -> Any:
        passes.append("capture")
        return real_capture(*args, **kwargs)

    def first_token(*args: Any, **kwargs: Any) -> Any:
        passes.append("first token")
        return real_first(*args, **kwargs)

    monkeypatch.setattr(directions, "capture", capture)
    monkeypatch.setattr(behaviour, "first_token_log_probs", first_token)
    recipe = write_replay_recipe(tmp_path)
    command = ["audit", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe", str(recipe),
               "--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--out", str(tmp_path / "first")]) in (1, 4)
    # 5 prompt sets and the harmless prompts' first token, 2 sides (the suites' first tokens come from generation)
    assert passes.count("capture") == 10 and passes.count("first token") == 2
    passes.clear()
    assert main([*command, "--out", str(tmp_path / "second")]) in (1, 4)
    assert passes == []
    assert _results(tmp_path / "second") == _results(tmp_path / "first")
    assert len(list((tmp_path / "cache" / "replay").glob("*-activations-*.safetensors"))) == 10


def test_the_key_holds_every_setting_and_a_model_in_memory_is_not_cached(tmp_path: Path) -> None:
    cache = ForwardCache(tmp_path, "fingerprint")
    key = {"prompts": [[1, 2, 3]], "batch_size": 8}
    assert cache.path("activations", key) != cache.path("activations", {**key, "batch_size": 4})
    assert cache.path("activations", key) != cache.path("first-token", key)
    assert ForwardCache(tmp_path, "other").path("activations", key) != cache.path("activations", key)
    in_memory = ForwardCache(tmp_path, None)
    assert in_memory.path("activations", key) is None
    assert torch.equal(in_memory.tensors("activations", key, lambda: {"x": torch.ones(2)})["x"], torch.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_file_is_computed_again_and_an_interrupted_one_never_written(tmp_path: Path) -> None:
    cache = ForwardCache(tmp_path, "fingerprint")
    key = {"prompts": [[1, 2, 3]]}
    computed = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    assert torch.equal(cache.tensors("activations", key, lambda: computed)["x"], computed["x"])
    assert torch.equal(cache.tensors("activations", key, lambda: {"x": torch.zeros(1)})["x"], computed["x"])
    path = cache.path("activations", key)
    assert path is not None
    path.write_bytes(path.read_bytes()[:20])  # torn
    with pytest.warns(RuntimeWarning, match="could not be read"):
        assert torch.equal(cache.tensors("activations", key, lambda: computed)["x"], computed["x"])

    def interrupted() -> dict[str, torch.Tensor]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.tensors("activations", {"prompts": [[4]]}, interrupted)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_change_to_the_code_that_computes_the_tensors_is_a_miss(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor import forward_cache

    key = {"prompts": [[1, 2, 3]]}
    before = ForwardCache(tmp_path, "fingerprint").path("activations", key)
    monkeypatch.setattr(forward_cache, "code_digest", lambda: "edited")
    assert ForwardCache(tmp_path, "fingerprint").path("activations", key) != before
    assert all((Path(forward_cache.__file__).parent / f"{name}.py").is_file() for name in forward_cache.CODE)
