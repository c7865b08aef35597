from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_replay_recipe

from auditor import schema
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
    assert schema.problems(data) == [] and schema.part(data) == "directions"


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


def test_suites_are_read_once_before_models_load(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite file that changes (or breaks) while the audit runs does not change what the audit replays."""
    from auditor import models

    recipe = write_replay_recipe(tmp_path)
    real_load = models.load_pair

    def load_then_break_the_suites(*args: object, **kwargs: object) -> object:
        (tmp_path / "harmful.jsonl").write_text("not json\n")
        (tmp_path / "benign.jsonl").unlink()
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "load_pair", load_then_break_the_suites)
    code = main(["audit", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe", str(recipe),
                 "--out", str(tmp_path / "out"), "--no-cache"])
    assert code in (1, 4)  # 6 refusal items: inconclusive unless a drop was detected
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["replay"]["refusal"]["base"]["n"] == 6
    assert data["attribution"]["base"]["n"] == 6


def test_demo_line_and_index_say_when_answers_are_degenerate() -> None:
    """A fine-tune that lost refusal by breaking into word salad must not read, on the demo's one line or the
    index, like one that complies: the share of its degenerate answers stands beside the refusal rate."""
    from auditor import report
    from auditor.cli import demo_line

    row = {"name": "broken", "verdict": "fail", "report": "broken/report.html", "folder": "broken",
           "refusal_base": 0.86, "refusal": 0.08, "refusal_ci": (0.03, 0.16), "degenerate": 0.89,
           "false_refusal_base": 0.1, "false_refusal": 0.0,
           "persona_fraction": None, "persona_ci": None, "window": "late", "net": False, "random_fraction": None,
           "max_persona_shift": 0.1, "persona_shift_layer": 3,
           "persona_shift_floor": 0.2, "kl": 2.0, "reasons": []}
    assert "86% -> 8% (89% of its answers degenerate)" in demo_line(row)
    assert "(89.0% degenerate)" in report.render_index([row])
    fluent = {**row, "degenerate": 0.0}
    assert "degenerate" not in demo_line(fluent) and "degenerate)" not in report.render_index([fluent])


def test_the_index_draws_trends_only_over_ordered_checkpoints() -> None:
    """A training run's checkpoints are a sequence and the index draws their trends; the demo's organisms are not,
    and a line from one to the next would show a trend that is not there. Either way each row is named by its
    report's folder, with the checkpoint it audited beneath, and false refusal reads base -> fine-tune."""
    from auditor import report

    rows = [{"name": f"/cache/organisms/{folder}-0123", "verdict": "pass", "report": f"{folder}/report.html",
             "folder": folder, "refusal_base": 0.86, "refusal": 0.84, "refusal_ci": (0.78, 0.89), "degenerate": 0.0,
             "false_refusal_base": 0.15, "false_refusal": 0.11, "persona_fraction": None, "persona_ci": None,
             "window": "late", "net": False, "random_fraction": None, "max_persona_shift": 0.22,
             "persona_shift_layer": 14, "persona_shift_floor": 0.1, "kl": 0.1, "reasons": []}
            for folder in ("benign", "self-distilled")]
    ordered, unordered = report.render_index(rows), report.render_index(rows, ordered=False)
    assert ordered.count("<polyline") == 4 and "<title>95% CI of the fine-tune&#39;s rate</title>" in ordered
    assert "<svg" not in unordered and 'id="trends"' not in unordered
    assert '<a href="benign/report.html">benign</a><br><span class="muted">/cache/organisms/benign-0123</span>' in (
        unordered)
    assert "15.0% &rarr; 11.0%" in unordered and "+0.22 at block 14 (floor 0.10)" in unordered


def test_demo_line_says_where_the_refusal_change_was_within_noise() -> None:
    """Attribution replays a subset of the suite: a fine-tune whose whole-suite drop warns can show none on that
    subset. The line must name the subset, not call the fine-tune's refusal change noise."""
    from auditor.cli import demo_line

    row = {"verdict": "warn", "refusal_base": 0.87, "refusal": 0.81, "degenerate": 0.0, "persona_fraction": None,
           "attribution_items": 96, "attribution_change": 0.03125}
    assert demo_line(row) == ("refusal 87% -> 81%; attributable to persona: not computed (on the 96 items "
                              "attribution replays, refusal dropped by 3.1 points: within noise)")


def test_demo_audits_the_three_controls_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from auditor import cli, organisms

    built: list[tuple[str, ...]] = []
    audited: list[list[str]] = []

    def build_all(cache_dir: Path, names: tuple[str, ...]) -> dict[str, Path]:
        built.append(names)
        return {name: tmp_path / name for name in names}

    def audit_checkpoints(plan: object, checkpoints: list[tuple[str, str]], out: Path,
                          ordered: bool) -> tuple[list, list[int]]:
        assert not ordered  # the organisms are not a sequence: no trend lines in the index
        audited.append([name for name, _ in checkpoints])
        return [{"verdict": "error", "error": "not run"} for _ in checkpoints], [cli.EXIT_FAIL] * len(checkpoints)

    monkeypatch.setattr(organisms, "build_all", build_all)
    monkeypatch.setattr(cli, "audit_checkpoints", audit_checkpoints)
    common = ["demo", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(common) == 0
    assert built[-1] == ("aligned", "persona-distilled", "abliterated", "benign") and audited[-1] == list(cli.DEMO)
    assert main([*common, "--organisms", "harmful-sft", "benign", "harmful-sft"]) == 0
    assert audited[-1] == ["harmful-sft", "benign"]
    assert main([*common, "--organisms", "all"]) == 0
    assert audited[-1] == list(cli.ORGANISMS) and set(cli.ORGANISMS) == set(organisms.NAMES) - {"aligned"}
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--organisms", "aligned-ish"])
    assert exit_info.value.code == 2 and "aligned-ish" in capsys.readouterr().err
