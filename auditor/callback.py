"""`DriftAuditCallback`: the audit as a post-training gate inside a transformers / trl Trainer.

At the end of training (and optionally every N steps, usually with the quick recipe) it audits the
in-memory model against its base — for a peft model by toggling the adapter, with no reload from
disk — logs the key numbers, writes the report, and can stop training when the verdict fails.

    trainer = SFTTrainer(model=..., peft_config=LoraConfig(...), ...)
    DriftAuditCallback(recipe="default", every_n_steps=200).attach(trainer)
    trainer.train()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from auditor.api import audit_model
from auditor.inputs import Inputs, load_inputs
from auditor.models import LoadOptions
from auditor.recipe import Recipe, load_recipe
from auditor.results import AuditResults

logger = logging.getLogger(__name__)


class DriftAuditCallback(TrainerCallback):  # type: ignore[misc]
    """Audit the model being trained; see the module docstring.

    Args:
        base: the base model (folder or Hub id). Needed for a full fine-tune; for a peft model the
            adapter is switched off instead.
        recipe: the recipe for the audit at the end of training.
        every_n_steps: also audit every N optimizer steps (with `step_recipe`); None: only at the end.
        stop_on_fail: stop training when a periodic audit fails.
        out: where the reports go (`final/`, `step-N/`).
    """

    def __init__(self, *, base: str | None = None, recipe: str = "default", every_n_steps: int | None = None,
                 step_recipe: str = "quick", stop_on_fail: bool = True, out: str | Path = "reports/training-audit",
                 options: LoadOptions | None = None) -> None:
        self.base, self.every_n_steps, self.stop_on_fail = base, every_n_steps, stop_on_fail
        # Recipes and suites are read now, so a typo or a broken suite fails before training starts.
        self.recipe, self.step_recipe = load_recipe(recipe), load_recipe(step_recipe)
        self.inputs, self.step_inputs = (load_inputs(r, replay=True) for r in (self.recipe, self.step_recipe))
        self.out, self.options = Path(out), options or LoadOptions()
        self.trainer: Any = None
        self.results: list[AuditResults] = []

    def attach(self, trainer: Any) -> DriftAuditCallback:
        """Add to `trainer` and log through its loggers (wandb, tensorboard, ...)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0 and state.global_step < state.max_steps:
            data = self._audit(kwargs, self.step_recipe, self.step_inputs, f"step-{state.global_step}", state)
            if data.verdict == "fail" and self.stop_on_fail:
                logger.warning("drift audit failed at step %d; stopping training", state.global_step)
                control.should_training_stop = True
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl:
        self._audit(kwargs, self.recipe, self.inputs, "final", state)
        return control

    def _audit(self, kwargs: dict[str, Any], recipe: Recipe, inputs: Inputs, name: str,
               state: TrainerState) -> AuditResults:
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        data = audit_model(kwargs["model"], tokenizer, base=self.base, recipe=recipe, inputs=inputs,
                           out=self.out / name, options=self.options,
                           name=f"in-memory fine-tune ({name}, step {state.global_step})")
        assert data.replay is not None and data.general_drift is not None
        metrics = {
            "drift_audit/verdict_fail": float(data.verdict == "fail"),
            "drift_audit/verdict_inconclusive": float(data.verdict == "inconclusive"),
            "drift_audit/refusal_base": data.replay.refusal.base.rate,
            "drift_audit/refusal_finetune": data.replay.refusal.finetune.rate,
            "drift_audit/false_refusal_finetune": data.replay.false_refusal.finetune.rate,
            "drift_audit/max_persona_shift": max(abs(r.persona_shift) for r in data.layers),
            # what the verdict's persona-shift rule reads: the largest move toward the persona beyond its floor
            "drift_audit/persona_shift_beyond_floor": max(r.persona_excess() for r in data.layers),
            "drift_audit/general_drift_kl": data.general_drift.kl,
        }
        if data.attribution is not None and data.attribution.persona_fraction is not None:
            metrics["drift_audit/attributable_fraction"] = data.attribution.persona_fraction
        if self.trainer is not None:
            self.trainer.log(metrics)
        else:
            state.log_history.append({**metrics, "step": state.global_step})
        logger.info("drift audit %s: %s (%s)", name, data.verdict, self.out / name / "report.html")
        self.results.append(data)
        return data
