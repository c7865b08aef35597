"""One audit of a loaded model pair: directions, replay, attribution, verdict and the written files.

The CLI and the training callback both drive an `Audit`; each stage returns the results.json
fields it fills, so a command can stop after any stage (`directions`, `replay`) or run them all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor import attribution, behaviour, directions, judge, report, results, verdict
from auditor.directions import DirectionsResult
from auditor.models import ModelPair
from auditor.recipe import Recipe


@dataclass(frozen=True)
class Inputs:
    """Every prompt set and suite a run reads. Loaded once, before any model, so a broken suite fails
    early and a run is immune to the files changing under it."""

    prompts: directions.PromptSets
    suites: behaviour.Suites | None  # None: a run that stops after the directions


def load_inputs(recipe: Recipe, *, replay: bool) -> Inputs:
    return Inputs(directions.prompt_sets(recipe), behaviour.load_suites(recipe) if replay else None)


@dataclass
class Audit:
    """An audit in progress. `cache_dir` None disables the generation cache."""

    pair: ModelPair
    recipe: Recipe
    inputs: Inputs
    out: Path
    cache_dir: Path | None
    timings: results.Timings = field(default_factory=results.Timings)
    started: float = field(default_factory=time.perf_counter)
    measured: DirectionsResult | None = None

    def directions(self) -> dict[str, Any]:
        """Measure the directions (kept for `write`) and return the results.json fields they fill."""
        with self.timings.stage("directions"):
            self.measured = directions.measure(self.pair, self.recipe, self.inputs.prompts)
        by_position = directions.layers_json(self.measured)
        return {
            "position": self.recipe.positions[0],
            "layers": by_position[self.recipe.positions[0]],
            "layers_by_position": by_position,
            "prompt_counts": self.measured.counts,
        }

    def replay(self) -> dict[str, Any]:
        assert self.inputs.suites is not None, "inputs loaded with replay=True"
        model_judge = (judge.load_judge(self.recipe.replay.judge_model, self.pair.options)
                       if self.recipe.replay.judge_model else None)
        with self.timings.stage("replay"):
            replayed, drift = behaviour.run(self.pair, self.recipe, self.inputs.suites, self.inputs.prompts.harmless,
                                            cache_dir=self.cache_dir, model_judge=model_judge)
        return {"replay": replayed, "general_drift": drift}

    def attribution(self) -> dict[str, Any]:
        assert self.measured is not None and self.inputs.suites is not None, "directions() and replay() run first"
        with self.timings.stage("attribution"):
            return {"attribution": attribution.run(self.pair, self.recipe, self.measured, cache_dir=self.cache_dir,
                                                   items=self.inputs.suites.attribution)}

    def results(self, parts: dict[str, Any]) -> dict[str, Any]:
        base_info, finetune_info = self.pair.describe()
        self.timings["total"] = round(time.perf_counter() - self.started, 3)
        return {
            "schema": results.SCHEMA,
            "base": base_info,
            "finetune": finetune_info,
            "recipe": asdict(self.recipe),
            **parts,
            "warnings": self.pair.warnings,
            "timings": dict(self.timings),
            "environment": results.environment(self.pair.options.device, self.pair.options.dtype),
        }

    def write(self, data: dict[str, Any], rendered: report.Rendered | None = None) -> None:
        """Write results.json, the directions and (for a whole audit) the report as one set (see
        results.write_outputs), so a failed run never leaves new files beside an earlier run's."""
        files = {"results.json": results.json_bytes(data)}
        if self.measured is not None:
            files["directions.safetensors"] = directions.directions_file(
                self.measured, {"base": self.pair.base.name, "finetune": self.pair.finetune.name})
        if rendered is not None:
            files.update(rendered.files())
        results.write_outputs(self.out, files)

    def run(self) -> dict[str, Any]:
        """The whole audit; writes results.json, report.html and summary.md and returns the results."""
        parts = {**self.directions(), **self.replay()}
        parts.update(self.attribution())
        decided = verdict.decide(parts, self.recipe.thresholds, identical=self.pair.identical)
        data = self.results({"verdict": decided.verdict, "reasons": decided.reasons, **parts})
        self.write(data, report.render(data))
        return data
