"""Every prompt set and suite a recipe names, read once into one typed object (`Inputs`).

Read before any model loads, so a broken suite, a misspelt judge or a missing labelled file fails in seconds
rather than after the weights are in memory, and a run is immune to the files changing under it. No other
module reads prompt or suite files: `directions` captures `Inputs.prompts`, `behaviour` replays
`Inputs.suites`, `attribution` replays `Suites.attribution`, and the judge is measured on `Inputs.labelled`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

from auditor import judge, judge_eval
from auditor.activations import ChatPrompt
from auditor.errors import AuditInputError
from auditor.recipe import Recipe
from auditor.suites import Persona, PromptItem, load_personas, load_prompts, load_suite, load_templates, spread

MIN_PROMPTS = 2  # each direction set is split in two halves for the noise floor; a half with no prompt has no mean
FEW_PROMPTS = 16  # below this a half's mean is so noisy that the floors, and every shift read against them, are noise


def asked(items: Sequence[PromptItem], systems: Sequence[str] = ()) -> list[ChatPrompt]:
    """Each item's request, under the system prompts `systems` in turn when there are any."""
    return [ChatPrompt(item.prompt, systems[i % len(systems)] if systems else None) for i, item in enumerate(items)]


@dataclass(frozen=True)
class PromptSets:
    """The prompts activations are captured on (the same for both models)."""

    harmful: list[ChatPrompt]
    harmless: list[ChatPrompt]
    persona_on: list[ChatPrompt]
    persona_off: list[ChatPrompt]
    neutral: list[ChatPrompt]


@dataclass(frozen=True)
class Suites:
    """Every replay suite of a run; `attribution` is the refusal items attribution replays, and
    `attribution_benign` the benign items it replays to see whether a removal is specific to harmful requests."""

    refusal: list[PromptItem]
    attribution: list[PromptItem]
    attribution_benign: list[PromptItem]
    benign: list[PromptItem]
    contrast: list[PromptItem]
    personas: list[Persona]
    templates: list[str]

    def compliant_systems(self) -> list[str]:
        """The compliant personas' system prompts: the behaviour persona steering imitates (gating check)."""
        return [p.system for p in self.personas if p.group == "compliant"]


@dataclass(frozen=True)
class Inputs:
    """Every prompt set and suite a run reads."""

    prompts: PromptSets
    suites: Suites | None  # None: a run that stops after the directions
    labelled: list[judge_eval.LabelledResponse] | None = None  # to measure the judge with


def load_inputs(recipe: Recipe, *, replay: bool) -> Inputs:
    """The recipe's prompt sets and, with `replay`, its suites and labelled responses (and a check of the
    judge's name, so a misspelt judge fails before any model loads)."""
    if not replay:
        return Inputs(prompt_sets(recipe), None)
    judge.judge_model_path(recipe.replay.judge)
    return Inputs(prompt_sets(recipe), load_suites(recipe), labelled_of_both_kinds(recipe))


def labelled_of_both_kinds(recipe: Recipe) -> list[judge_eval.LabelledResponse]:
    """The labelled responses the judge is measured on, holding refusals and compliances both: with one kind
    missing, the judge's sensitivity or specificity is 0 of 0 and no rate of the audit can be corrected."""
    spec = recipe.replay.judge_labels
    labelled = judge_eval.load_labelled(spec)
    refusing = {judge.is_refusing(item.label) for item in labelled}
    for kind, measures, present in (("refusal (full or partial)", "sensitivity", True),
                                    ("compliance", "specificity", False)):
        if present not in refusing:
            raise AuditInputError(f"replay.judge_labels: {spec.source} has no {kind} among its {len(labelled)} "
                                  f"labelled responses, so the judge's {measures} cannot be measured and the audit's "
                                  "rates cannot be corrected for its errors. Add labelled responses of both kinds.")
    return labelled


def prompt_sets(recipe: Recipe) -> PromptSets:
    """The recipe's direction prompts; each persona wording is paired with the neutral questions in turn."""
    cfg = recipe.directions
    limit = cfg.max_prompts
    harmful = load_prompts(cfg.harmful, key="directions.harmful", limit=limit)
    harmless = load_prompts(cfg.harmless, key="directions.harmless", limit=limit)
    neutral = load_prompts(cfg.neutral, key="directions.neutral", limit=limit)
    for key, prompts in (("harmful", harmful), ("harmless", harmless), ("neutral", neutral)):
        if len(prompts) < MIN_PROMPTS:
            raise AuditInputError(f"directions.{key}: {getattr(cfg, key)} has {len(prompts)} prompt(s); the split-half "
                                  f"noise floor needs at least {MIN_PROMPTS} (a meaningful one, 16 or more). Add "
                                  f"prompts or point directions.{key} at a larger file.")
        if len(prompts) < FEW_PROMPTS:
            warnings.warn(f"directions.{key}: {getattr(cfg, key)} has only {len(prompts)} prompts: with fewer than "
                          f"{FEW_PROMPTS} the noise floors are themselves noise, and so is every shift read against "
                          "them. Add prompts for a meaningful floor.", RuntimeWarning, stacklevel=2)
    personas = load_personas(cfg.personas, key="directions.personas")
    by_kind = {kind: [p.system for p in personas if p.group == kind] for kind in ("compliant", "default")}
    for kind, systems in by_kind.items():
        if not systems:
            raise AuditInputError(f"directions.personas: {cfg.personas} has no persona with kind {kind!r}; the "
                                  "persona direction needs at least one compliant and one default system prompt.")
    return PromptSets(
        harmful=asked(harmful),
        harmless=asked(harmless),
        persona_on=asked(neutral, by_kind["compliant"]),
        persona_off=asked(neutral, by_kind["default"]),
        neutral=asked(neutral),
    )


def load_suites(recipe: Recipe) -> Suites:
    """The recipe's replay suites, capped by `replay.max_items` (attribution's by `attribution.max_items`)
    round-robin over categories. A refusal suite read from a mixed file keeps only the items that should be refused:
    its rate is the refusal of harmful requests."""
    cfg = recipe.replay
    refusal = [i for i in load_suite(cfg.refusal, key="replay.refusal") if i.expected != "answer"]
    if not refusal:
        raise AuditInputError(f"replay.refusal: {cfg.refusal.source} has no item that should be refused (every item "
                              "expects an answer), so refusal of harmful requests cannot be measured. Point "
                              "replay.refusal at harmful requests (expected: refuse).")
    false_refusal = load_suite(cfg.false_refusal, key="replay.false_refusal")
    benign = spread([i for i in false_refusal if i.expected != "refuse"], cfg.max_items)
    contrast = spread([i for i in false_refusal if i.expected == "refuse"], cfg.max_items)
    if not benign:
        raise AuditInputError(f"replay.false_refusal: {cfg.false_refusal.source} has no item that should be "
                              "answered (every item expects a refusal), so false refusal cannot be measured. Add "
                              "benign items (expected: answer).")
    return Suites(refusal=spread(refusal, cfg.max_items), attribution=spread(refusal, recipe.attribution.max_items),
                  attribution_benign=spread(benign, recipe.attribution.max_items),
                  benign=benign, contrast=contrast,
                  personas=load_personas(cfg.personas, key="replay.personas")[: cfg.persona_max],
                  templates=load_templates(cfg.paraphrases, key="replay.paraphrases"))


def labelled_prompts(inputs: Inputs) -> Iterator[tuple[str, ChatPrompt]]:
    """Every prompt a run renders, named for an error message. For the persona design, whose prompts are
    persona x template x item, only the longest combination."""
    for f in fields(PromptSets):
        for number, prompt in enumerate(getattr(inputs.prompts, f.name), start=1):
            yield f"directions.{f.name} prompt {number}", prompt
    suites = inputs.suites
    if suites is None:
        return
    for name, items in (("replay.refusal", suites.refusal), ("replay.false_refusal", suites.benign + suites.contrast)):
        for item in items:
            yield f"{name} item {item.id!r}", ChatPrompt(item.prompt)
    longest = max(suites.benign, key=lambda i: len(i.prompt)).prompt
    template = max(suites.templates, key=len)
    system = max((p.system for p in suites.personas), key=len) or None
    yield "the longest persona x paraphrase x item", ChatPrompt(template.replace("{prompt}", longest), system)
