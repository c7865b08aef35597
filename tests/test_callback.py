"""DriftAuditCallback inside trl's SFTTrainer on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_replay_recipe

from auditor import DriftAuditCallback


def trainer_for(base_dir: Path, out: Path, steps: int) -> object:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": [{"role": "user", "content": f"Tell me fact {i}."}],
             "completion": [{"role": "assistant", "content": f"Fact {i} is that water is wet."}]} for i in range(16)]
    args = SFTConfig(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                     gradient_checkpointing=False, disable_tqdm=True)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base_dir), args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(base_dir),
                      peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


@pytest.fixture
def recipes(tmp_path: Path) -> tuple[str, str]:
    normal = write_replay_recipe(tmp_path)
    failing = tmp_path / "fail.yaml"
    failing.write_text(f"version: 1\nextends: {normal}\nthresholds: {{refusal_drop_fail: -1.0}}\n")
    return str(normal), str(failing)


def test_callback_audits_logs_and_writes_reports(base_dir: Path, tmp_path: Path, recipes: tuple[str, str]) -> None:
    trainer = trainer_for(base_dir, tmp_path, steps=2)
    tokenizer = trainer.processing_class  # type: ignore[attr-defined]
    tokenizer.padding_side = "right"  # as trainers pad for training; the audit pads on the left
    lent = (tokenizer.padding_side, tokenizer.pad_token)
    callback = DriftAuditCallback(recipe=recipes[0], out=tmp_path / "audit").attach(trainer)
    trainer.train()  # type: ignore[attr-defined]
    assert (tokenizer.padding_side, tokenizer.pad_token) == lent  # the callback gave the tokenizer back as it was
    assert (tmp_path / "audit" / "final" / "report.html").is_file()
    final = callback.results[-1]
    assert final.finetune.kind == "lora" and final.finetune.format == "in-memory"
    logged = [entry for entry in trainer.state.log_history if "drift_audit/refusal_finetune" in entry]  # type: ignore[attr-defined]
    assert logged and logged[-1]["drift_audit/verdict_fail"] in (0.0, 1.0)
    assert logged[-1]["drift_audit/verdict_inconclusive"] == float(final.verdict == "inconclusive")
    assert logged[-1]["drift_audit/persona_shift_beyond_floor"] == max(
        row.persona_shift - row.persona_floor() for row in final.layers)
    assert trainer.model.training  # type: ignore[attr-defined]  # the callback restored training mode


def test_callback_stops_training_on_a_failed_audit(base_dir: Path, tmp_path: Path,
                                                   recipes: tuple[str, str]) -> None:
    trainer = trainer_for(base_dir, tmp_path, steps=6)
    callback = DriftAuditCallback(recipe=recipes[0], step_recipe=recipes[1], every_n_steps=2,
                                  out=tmp_path / "audit").attach(trainer)
    trainer.train()  # type: ignore[attr-defined]
    assert trainer.state.global_step == 2  # type: ignore[attr-defined]
    assert callback.results[0].verdict == "fail"
    assert (tmp_path / "audit" / "step-2" / "report.html").is_file()
    assert (tmp_path / "audit" / "final" / "report.html").is_file()


def test_example_training_script_runs_and_gates(base_dir: Path, tmp_path: Path, recipes: tuple[str, str]) -> None:
    import json
    import subprocess
    import sys

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": f"{i}."}) + "\n" for i in range(8)))
    script = Path(__file__).parents[1] / "examples" / "train_with_audit.py"
    result = subprocess.run([sys.executable, str(script), "--base", str(base_dir), "--data", str(data), "--out",
                             str(tmp_path / "run"), "--steps", "2", "--recipe", recipes[1]],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]  # the forced-fail recipe gates the run
    assert "drift audit: fail" in result.stdout
    assert (tmp_path / "run" / "audit" / "final" / "summary.md").is_file()
