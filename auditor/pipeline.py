"""One audit of a loaded model pair: directions, replay, attribution, verdict and the written files.

The CLI and the training callback both drive an `Audit`; each stage keeps what it measured as typed
results (`auditor/results.py`), so a command can stop after any stage (`directions`, `replay`) or run
them all, and `results` types whatever has run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

from auditor import attribution, behaviour, directions, judge, judge_eval, outputs, report, schema, verdict
from auditor.activations import render
from auditor.directions import DirectionsResult
from auditor.errors import AuditInputError
from auditor.inputs import Inputs, labelled_prompts
from auditor.models import ModelPair
from auditor.recipe import Recipe
from auditor.results import SCHEMA, Attribution, AuditResults, GeneralDrift, Replay

Stage = Literal["directions", "replay", "audit"]  # where a run stops: the commands of the same names


def check_prompt_lengths(pair: ModelPair, recipe: Recipe, inputs: Inputs) -> None:
    """Refuse a prompt longer than the recipe's `max_prompt_tokens` or than the model's positions (less the
    tokens to generate): the forward pass would fail, or allocate memory quadratic in the length (a 10 MB
    prompt asked for 36 TB). Only tokenizes; runs before any forward pass."""
    tokenizer, positions = pair.tokenizer_and_positions()
    room = 0 if inputs.suites is None else max(recipe.replay.max_new_tokens, recipe.attribution.max_new_tokens)
    limit = recipe.max_prompt_tokens
    if positions is not None and positions - room < limit:
        limit = positions - room
    for label, prompt in labelled_prompts(inputs):
        length = len(render(tokenizer, prompt).ids)
        if length > limit:
            raise AuditInputError(
                f"{label} is {length} tokens long as rendered for the model; at most {limit} fit (recipe "
                f"max_prompt_tokens {recipe.max_prompt_tokens}; the model has {positions} positions, {room} of them "
                "for the response). Shorten or drop that prompt.")


@dataclass
class Audit:
    """An audit in progress: each stage keeps what it measured, and `results` types whatever has run.
    `out` None writes no file; `cache_dir` None disables the cache of generations and forward passes."""

    pair: ModelPair
    recipe: Recipe
    inputs: Inputs
    out: Path | None
    cache_dir: Path | None
    timings: outputs.Timings = field(default_factory=outputs.Timings)
    started: float = field(default_factory=time.perf_counter)
    measured: DirectionsResult | None = None
    replayed: Replay | None = None
    drift: GeneralDrift | None = None
    attributed: Attribution | None = None
    decided: verdict.Verdict | None = None  # after a whole audit: every check, for a JUnit file

    def directions(self) -> DirectionsResult:
        """Measure the directions (kept for `results` and `write`)."""
        check_prompt_lengths(self.pair, self.recipe, self.inputs)
        with self.timings.stage("directions"):
            self.measured = directions.measure(self.pair, self.recipe, self.inputs.prompts, cache_dir=self.cache_dir)
        return self.measured

    @cached_property
    def judge_evaluation(self) -> judge_eval.Evaluation:
        """The recipe's judge, run over the recipe's labelled responses."""
        assert self.inputs.labelled is not None, "inputs loaded with replay=True"
        return judge_eval.evaluate(judge.make_judge(self.recipe.replay.judge, self.pair.options),
                                   self.inputs.labelled)

    @cached_property
    def judges(self) -> behaviour.Judges:
        """The recipe's judge with its measured errors, and the optional second judge model."""
        cfg = self.recipe.replay
        main = judge.make_judge(cfg.judge, self.pair.options)
        second = judge.load_judge(cfg.judge_model, self.pair.options) if cfg.judge_model else None
        return behaviour.Judges(main, self.judge_evaluation.error, second)

    def replay(self) -> Replay:
        """Replay the suites under both checkpoints (kept with the general drift for `results`)."""
        assert self.inputs.suites is not None, "inputs loaded with replay=True"
        with self.timings.stage("replay"):
            replayed, self.drift = behaviour.run(self.pair, self.recipe, self.inputs.suites,
                                                 self.inputs.prompts.harmless, cache_dir=self.cache_dir,
                                                 judges=self.judges)
        summary = judge_eval.judge_summary(self.judge_evaluation, self.recipe.replay.judge_labels.source)
        self.replayed = replace(replayed, judge=summary)
        return self.replayed

    def attribution(self) -> Attribution:
        assert self.measured is not None and self.inputs.suites is not None, "directions() and replay() run first"
        with self.timings.stage("attribution"):
            self.attributed = attribution.run(self.pair, self.recipe, self.measured, self.inputs.suites,
                                              cache_dir=self.cache_dir, refusal_judge=self.judges.main)
        return self.attributed

    def results(self, decided: verdict.Verdict | None = None) -> AuditResults:
        """Everything the stages run so far measured, with the verdict when one was decided."""
        assert self.measured is not None, "directions() runs first"
        base_info, finetune_info = self.pair.describe()
        self.timings["total"] = round(time.perf_counter() - self.started, 3)
        position = self.recipe.positions[0]
        return AuditResults(
            schema=SCHEMA, base=base_info, finetune=finetune_info, recipe=asdict(self.recipe),
            verdict=decided.verdict if decided else None, reasons=decided.reasons if decided else None,
            resolution=decided.resolution if decided else None,
            position=position, layers=self.measured.layers[position],
            layers_by_position={str(p): rows for p, rows in self.measured.layers.items()},
            prompt_counts=self.measured.counts, replay=self.replayed, general_drift=self.drift,
            attribution=self.attributed, warnings=list(self.pair.warnings), timings=dict(self.timings),
            environment=outputs.environment(self.pair.options.compute()),
        )

    def write(self, data: AuditResults, rendered: report.Rendered | None = None) -> None:
        """Write results.json, the directions and (for a whole audit) the report as one set (see
        outputs.write_outputs), so a failed run never leaves new files beside an earlier run's. The results
        are checked against the schema even when `out` is None."""
        written = data.to_json()
        broken = schema.problems(written)
        if broken:  # a bug in the auditor, not bad input: exit 3 with the traceback
            raise RuntimeError(f"drift-audit produced results that break its own schema: {'; '.join(broken[:5])}")
        if self.out is None:
            return
        files = {"results.json": outputs.json_bytes(written)}
        if self.measured is not None:
            files["directions.safetensors"] = directions.directions_file(
                self.measured, {"base": self.pair.base.name, "finetune": self.pair.finetune.name})
        if rendered is not None:
            files.update(rendered.files())
        outputs.write_outputs(self.out, files)

    def run(self, stage: Stage = "audit") -> AuditResults:
        """Run up to `stage` and write its files: results.json and the directions, and for a whole audit the
        verdict, report.html and summary.md. Returns the results."""
        self.directions()
        if stage == "directions":
            return self._finish(None)
        self.replay()
        if stage == "replay":
            return self._finish(None)
        self.attribution()
        assert self.measured is not None
        self.decided = verdict.decide(
            self.recipe.thresholds, layers=self.measured.layers[self.recipe.positions[0]], replay=self.replayed,
            general_drift=self.drift, attribution=self.attributed, identical=self.pair.identical)
        return self._finish(self.decided)

    def _finish(self, decided: verdict.Verdict | None) -> AuditResults:
        data = self.results(decided)
        self.write(data, report.render(data) if decided else None)
        return data
