"""`drift-audit gate`: decide the verdict again from a saved results.json, under the thresholds it was audited
with or another recipe's, without loading a model.

A CI job can then audit once (slow, on a machine with the models) and gate anywhere (fast), or tighten the
thresholds of a release branch without re-running generation. The rules are the audit's own
(`verdict.decide`), so a gate under the recorded thresholds gives the verdict the audit gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor import report, schema
from auditor.errors import AuditInputError
from auditor.recipe import Thresholds, load_recipe, thresholds_from
from auditor.verdict import IDENTICAL_WARNING, Verdict, decide


@dataclass(frozen=True)
class Gated:
    """The results read, the verdict decided again, and where its thresholds came from (for the terminal)."""

    data: dict[str, Any]
    verdict: Verdict
    thresholds: str


def thresholds(data: dict[str, Any], recipe: str | None) -> tuple[Thresholds, str]:
    """A recipe's thresholds when one is named, else those recorded in results.json (keys an older file lacks
    take their defaults)."""
    if recipe:
        chosen = load_recipe(recipe)
        return chosen.thresholds, f"recipe {chosen.name} ({chosen.source})"
    return (thresholds_from(data["recipe"].get("thresholds", {}), "results.json recipe.thresholds"),
            f"the thresholds recorded in results.json (recipe {data['recipe']['name']})")


def identical_reason(data: dict[str, Any]) -> str | None:
    """Why the fine-tune was found identical in function to its base, read back from the run's warnings."""
    if not data["finetune"].get("identical_to_base"):
        return None
    found = [w[len(IDENTICAL_WARNING):] for w in data["warnings"] if w.startswith(IDENTICAL_WARNING)]
    return found[0] if found else "recorded in results.json"


def gate(path: Path, recipe: str | None = None) -> Gated:
    data = report.load_results(path)  # checked against the schema
    if schema.part(data) != "audit":
        raise AuditInputError(f"{path} holds what `drift-audit {schema.part(data)}` writes, not a whole audit: "
                              "there is no verdict to decide again. Gate the results.json of `drift-audit audit`.")
    chosen, source = thresholds(data, recipe)
    return Gated(data, decide(data, chosen, identical_reason(data)), source)
