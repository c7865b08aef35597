"""`--device auto` / `--dtype auto` resolution (no GPU needed: CUDA's presence is monkeypatched), and the resolved
device and dtype in results.json, the report, summary.md and on the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auditor import devices, models
from auditor.cli import build_parser, main
from auditor.errors import AuditInputError


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU 141GB")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_takes_cuda_in_bfloat16_when_present(fake_cuda: None) -> None:
    compute = devices.resolve("auto", "auto")
    assert (compute.device, compute.dtype, compute.name) == ("cuda", torch.bfloat16, "Fake GPU 141GB")
    assert compute.describe() == "cuda (Fake GPU 141GB), bfloat16"
    assert models.LoadOptions().compute() == compute  # auto is the default of the library too
    assert devices.resolve("cpu", "auto").dtype == torch.float32  # the CPU stays float32 beside a GPU


def test_auto_falls_back_to_the_cpu_in_float32(no_cuda: None) -> None:
    compute = devices.resolve("auto", "auto")
    assert (compute.device, compute.dtype_name) == ("cpu", "float32")
    assert compute.name.endswith(f"{torch.get_num_threads()} threads")


def test_an_explicit_dtype_wins_over_auto(fake_cuda: None) -> None:
    assert devices.resolve("auto", "float32").dtype == torch.float32
    assert devices.resolve("cuda", "float16").dtype == torch.float16


def test_cuda_without_a_gpu_is_bad_input_naming_the_fix(no_cuda: None) -> None:
    with pytest.raises(AuditInputError, match="--device cuda.*--device auto or --device cpu"):
        devices.resolve("cuda", "auto")


def test_the_cli_defaults_to_auto() -> None:
    parser = build_parser()
    assert parser.parse_args(["audit", "--finetune", "F"]).device == "auto"
    assert parser.parse_args(["judge-eval", "builtin"]).device == "auto"


def test_results_report_and_summary_say_what_ran(audit_dir: Path) -> None:
    environment = json.loads((audit_dir / "results.json").read_text())["environment"]
    expected = devices.resolve("auto", "auto")
    assert (environment["device"], environment["dtype"]) == (expected.device, expected.dtype_name)
    assert environment["device_name"] == expected.name
    assert f"device {expected.device} ({expected.name}), dtype {expected.dtype_name}" in \
        (audit_dir / "report.html").read_text()
    assert f"on {expected.device}, {expected.dtype_name}" in (audit_dir / "summary.md").read_text()


def test_the_terminal_says_what_runs(base_dir: Path, tmp_path: Path, tiny_recipe: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["directions", "--base", str(base_dir), "--finetune", str(base_dir), "--recipe", str(tiny_recipe),
                 "--out", str(tmp_path), "--dtype", "bfloat16"]) == 0
    assert f"running on cpu ({devices.hardware_name('cpu')}), bfloat16" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["environment"]["dtype"] == "bfloat16"
