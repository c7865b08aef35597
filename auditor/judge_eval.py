"""How often a judge is right: run it over responses labelled by people and count its errors.

Used by `drift-audit judge-eval FILE` and by every audit, whose refusal rates are corrected for the
judge's measured sensitivity and specificity (`stats.corrected_rate`). The default labelled set,
`auditor/judge_data/labelled.jsonl`, is written by the project in the styles real chat models use; a
user's own set (CSV or JSONL) maps its columns like a suite. Labels may be `refusal`, `partial`,
`compliance`, or XSTest's `final_label` values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor import stats
from auditor.errors import AuditInputError
from auditor.judge import LABELS, Judge, Label, Response, is_refusing
from auditor.recipe import LabelledSpec
from auditor.results import JudgeFigures, JudgeRate, JudgeSummary, Kappa
from auditor.suites import read_records

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parent / "judge_data" / "labelled.jsonl"
GOLD_LABELS: dict[str, Label] = {
    "refusal": "refusal", "full_refusal": "refusal", "2_full_refusal": "refusal",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
    "compliance": "compliance", "full_compliance": "compliance", "1_full_compliance": "compliance",
}
BOOTSTRAP_REPS = 1000


@dataclass(frozen=True)
class LabelledResponse:
    """A response with the label a person gave it."""

    prompt: str
    response: str
    label: Label


def load_labelled(spec: LabelledSpec) -> list[LabelledResponse]:
    """Labelled responses from `builtin` (the shipped set) or a CSV/JSONL file, naming any bad record."""
    path = BUILTIN_PATH if spec.source == BUILTIN else Path(spec.source)
    if not path.is_file():
        raise AuditInputError(f"labelled file {path} does not exist. Give a .csv or .jsonl file with a "
                              f"{spec.response_column!r} and a {spec.label_column!r} column, or `builtin`.")
    items = []
    for number, record in enumerate(read_records(path), start=1):
        response, label = record.get(spec.response_column), str(record.get(spec.label_column, "")).strip().lower()
        if not isinstance(response, str):
            raise AuditInputError(f"{path}, record {number}: column {spec.response_column!r} must be text, got "
                                  f"{response!r:.60}. Name the response column with --response-column.")
        if label not in GOLD_LABELS:
            raise AuditInputError(f"{path}, record {number}: column {spec.label_column!r} is {label!r}; use one of "
                                  f"{', '.join(GOLD_LABELS)} (name the label column with --label-column).")
        items.append(LabelledResponse(str(record.get(spec.prompt_column) or ""), response, GOLD_LABELS[label]))
    if not items:
        raise AuditInputError(f"labelled file {path} has no records.")
    return items


@dataclass(frozen=True)
class Evaluation:
    """A judge's calls on labelled responses: the confusion table, its error counts and the summary figures."""

    judge: str
    gold: list[Label]
    predicted: list[Label]

    @property
    def error(self) -> stats.JudgeError:
        pairs = Counter((is_refusing(g), is_refusing(p)) for g, p in zip(self.gold, self.predicted, strict=True))
        return stats.JudgeError(true_positive=pairs[True, True], false_negative=pairs[True, False],
                                true_negative=pairs[False, False], false_positive=pairs[False, True])

    def confusion(self) -> dict[str, dict[str, int]]:
        """Counts by gold label (rows) and judge label (columns)."""
        counts = Counter(zip(self.gold, self.predicted, strict=True))
        return {gold: {label: counts[gold, label] for label in LABELS} for gold in LABELS[:3]}

    def figures(self, seed: int = 0) -> JudgeFigures:
        """Accuracy, refusal recall and precision (Wilson 95% intervals) and Cohen's kappa (bootstrap 95%)."""
        gold = [is_refusing(g) for g in self.gold]
        predicted = [is_refusing(p) for p in self.predicted]
        error = self.error
        n = len(gold)

        def kappa(idx: list[int]) -> float | None:
            return stats.cohen_kappa([gold[i] for i in idx], [predicted[i] for i in idx])

        kappa_ci = stats.bootstrap_ci(kappa, n, reps=BOOTSTRAP_REPS, seed=seed)
        return JudgeFigures(
            judge=self.judge, n=n,
            accuracy=JudgeRate.of(error.true_positive + error.true_negative, n),
            recall=JudgeRate.of(error.sensitivity.k, error.sensitivity.n),
            precision=JudgeRate.of(error.true_positive, error.true_positive + error.false_positive),
            specificity=JudgeRate.of(error.specificity.k, error.specificity.n),
            kappa=Kappa(value=stats.cohen_kappa(gold, predicted), ci=kappa_ci),
            confusion=self.confusion(),
        )


def evaluate(judge: Judge, items: Sequence[LabelledResponse]) -> Evaluation:
    return Evaluation(judge.name, [item.label for item in items],
                      [judge.label(item.prompt, Response(item.response)) for item in items])


def judge_summary(evaluation: Evaluation, source: str) -> JudgeSummary:
    """What results.json records about the judge of an audit: its name and its measured error rates."""
    figures = evaluation.figures()
    return JudgeSummary(name=evaluation.judge, labelled=source, n=figures.n, accuracy=figures.accuracy,
                        recall=figures.recall, specificity=figures.specificity, kappa=figures.kappa,
                        sensitivity=figures.recall)


def format_figures(figures: JudgeFigures) -> str:
    """The figures as a terminal table."""
    def line(name: str, part: JudgeRate | Kappa) -> str:
        if part.value is None:
            return f"{name:<12} undefined"
        span = f"[{part.ci[0]:.3f}, {part.ci[1]:.3f}]" if part.ci else "[undefined]"
        return f"{name:<12} {part.value:.3f}  95% CI {span}"

    lines = [f"judge {figures.judge} on {figures.n} labelled responses (refusal = full + partial)"]
    lines += [line(key, getattr(figures, key)) for key in ("accuracy", "recall", "precision", "specificity", "kappa")]
    corner = "gold \\ judge"
    lines += ["", f"{corner:<14}" + "".join(f"{label:>12}" for label in LABELS)]
    for gold, row in figures.confusion.items():
        lines.append(f"{gold:<14}" + "".join(f"{row[label]:>12}" for label in LABELS))
    return "\n".join(lines)
