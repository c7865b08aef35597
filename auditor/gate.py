"""`drift-audit gate`: decide the verdict again from a saved results.json, under the thresholds it was audited
with or another recipe's, without loading a model.

A CI job can then audit once (slow, on a machine with the models) and gate anywhere (fast), or tighten the
thresholds of a release branch without re-running generation. The rules are the audit's own
(`verdict.decide`), so a gate under the recorded thresholds gives the verdict the audit gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditor import report
from auditor.errors import AuditInputError
from auditor.recipe import Thresholds, load_recipe, thresholds_from
from auditor.results import AuditResults
from auditor.verdict import IDENTICAL_WARNING, Verdict, decide


@dataclass(frozen=True)
class Gated:
    """The results read, the verdict decided again, and where its thresholds came from (for the terminal)."""

    data: AuditResults
    verdict: Verdict
    thresholds: str


def thresholds(data: AuditResults, recipe: str | None) -> tuple[Thresholds, str]:
    """A recipe's thresholds when one is named, else those recorded in results.json (keys an older file lacks
    take their defaults)."""
    if recipe:
        chosen = load_recipe(recipe)
        return chosen.thresholds, f"recipe {chosen.name} ({chosen.source})"
    return (thresholds_from(data.recipe.get("thresholds", {}), "results.json recipe.thresholds"),
            f"the thresholds recorded in results.json (recipe {data.recipe['name']})")


def identical_reason(data: AuditResults) -> str | None:
    """Why the fine-tune was found identical in function to its base, read back from the run's warnings."""
    if not data.finetune.identical_to_base:
        return None
    found = [w[len(IDENTICAL_WARNING):] for w in data.warnings if w.startswith(IDENTICAL_WARNING)]
    return found[0] if found else "recorded in results.json"


def gate(path: Path, recipe: str | None = None) -> Gated:
    data = report.load_results(path)  # checked against the schema
    if data.part != "audit":
        raise AuditInputError(f"{path} holds what `drift-audit {data.part}` writes, not a whole audit: "
                              "there is no verdict to decide again. Gate the results.json of `drift-audit audit`.")
    chosen, source = thresholds(data, recipe)
    decided = decide(chosen, layers=data.layers, replay=data.replay, general_drift=data.general_drift,
                     attribution=data.attribution, identical=identical_reason(data))
    return Gated(data, decided, source)
