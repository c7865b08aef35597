from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

from auditor.cli import main


def test_directions_command_writes_results_and_tensors(base_dir: Path, lora_random_dir: Path, tiny_recipe: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["directions", "--base", str(base_dir), "--finetune", str(lora_random_dir),
                 "--recipe", str(tiny_recipe), "--out", str(out)])
    assert code == 0
    assert (out / "directions.safetensors").is_file()
    data = json.loads((out / "results.json").read_text())
    assert data["finetune"]["kind"] == "lora" and len(data["layers"]) == 4
    assert set(data["layers_by_position"]) == {"post_instruction", "last"}
    assert data["timings"]["directions"] > 0
    assert "refusal_cos" in capsys.readouterr().out
    check = subprocess.run([sys.executable, str(SHARED / "check_results.py"), str(out / "results.json"),
                            "--part", "directions"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_mismatched_models_exit_2_naming_both(base_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tiny import make_model

    other = make_model(tmp_path / "wide", hidden=48)
    code = main(["directions", "--base", str(base_dir), "--finetune", str(other), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(base_dir) in err and str(other) in err and "Traceback" not in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_unwritable_out_is_bad_input(base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["directions", "--base", str(base_dir), "--finetune", str(base_dir), "--out", str(blocker / "sub")])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_help_explains_every_option() -> None:
    result = subprocess.run([sys.executable, "-m", "auditor", "directions", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--base", "--finetune", "--base-revision", "--finetune-revision", "--recipe", "--out", "--dtype",
                 "--device", "--low-memory", "--trust-remote-code", "--allow-pickle", "--chat-template"):
        assert flag in result.stdout
