"""results.json as types: frozen dataclasses, each with one `to_json` and one `from_json`.

Every stage returns these records and every reader (verdict, report, summary, callback, CLI) reads them,
so a field is added in one place: its dataclass. The JSON Schema shipped in `auditor/schema/` is generated
from the same classes (`auditor.schema.generate`), and a test keeps the shipped file equal to it.

The JSON keys are the field names. A field without a default is required. A field with a default may be
absent from a file of an earlier minor release and reads as its default; it is written as null when None,
except a field made with `optional()`, which is left out when None (its absence says "not measured", as for
the judge-corrected rates or a directions-only file). Intervals are `(low, high)` tuples in
memory and two-item lists in JSON. Constraints the schema states (a rate lies in [0, 1], an interval is
ordered) are attached to the types with `Annotated`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from auditor.stats import wilson


class Rule:
    """JSON Schema keywords attached to a type with `Annotated` (hashable by identity, as `Annotated` needs)."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords


# The major version: every release of one major version reads its files (fields added later have defaults).
SCHEMA: Literal["drift-audit/1"] = "drift-audit/1"
OPTIONAL = "optional"

Probability = Annotated[float, Rule(minimum=0, maximum=1)]
Cosine = Annotated[float, Rule(minimum=-1.000001, maximum=1.000001)]  # a float64 cosine can overshoot 1 by an ulp
Count = Annotated[int, Rule(minimum=0)]
NonNegative = Annotated[float, Rule(minimum=0)]
Interval = Annotated[tuple[float, float], Rule(**{"x-ordered": True})]
RateDifference = Annotated[float, Rule(minimum=-1, maximum=1)]
LayerSpan = tuple[Count, Count]
Window = Literal["early", "middle", "late"]
Label = Literal["refusal", "partial", "compliance", "degenerate"]
Expected = Literal["refuse", "answer"]
Level = Literal["pass", "warn", "inconclusive", "fail"]  # a verdict, or what one check of it found

R = TypeVar("R", bound="Record")
RateT = TypeVar("RateT", bound="Rate")


def optional() -> Any:
    """A field that files of an earlier minor release lack: None when absent, and not written when None."""
    return field(default=None, metadata={OPTIONAL: True})


class Record:
    """The JSON side of every results dataclass, driven by the fields' types."""

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {}  # schema keywords no field type can say (dependentRequired)

    def to_json(self) -> dict[str, Any]:
        assert is_dataclass(self)
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)
                if not (f.metadata.get(OPTIONAL) and getattr(self, f.name) is None)}

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        """The record from JSON that passed the schema (`auditor.schema.check`); keys it does not know are
        ignored, so a file is read by the release that wrote it and every later one of its major version."""
        hints = type_hints(cls)
        assert is_dataclass(cls)
        values = {f.name: _decode(hints[f.name], data[f.name]) for f in fields(cls) if f.name in data}
        return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a record (annotations are strings under `from __future__ import annotations`),
    resolved once per class."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def is_required(f: Any) -> bool:
    """Required in the schema: a field without a default. A field with one (None, or `optional()`) may be
    absent from a file of an earlier minor release."""
    return f.default is MISSING and f.default_factory is MISSING


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(kind: Any, value: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        return _decode(args[0], value)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), value)
    if isinstance(kind, type) and issubclass(kind, Record):
        return kind.from_json(value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is tuple:
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    return value




@dataclass(frozen=True, kw_only=True)
class Rate(Record):
    """k of n as a rate with its 95% Wilson interval: the one way a counted rate enters results.json."""

    rate: Probability
    ci: Interval
    n: Count

    @classmethod
    def of(cls: type[RateT], k: int, n: int, **more: Any) -> RateT:
        """The rate k / n (0 when n is 0) and its interval; `more` fills the fields of a subclass."""
        return cls(rate=k / n if n else 0.0, ci=wilson(k, n), n=n, **more)

    @property
    def half_width(self) -> float:
        return (self.ci[1] - self.ci[0]) / 2


def broke_the_model(degenerate: Rate | None, limit: float) -> bool:
    """Whether answers with this degenerate share (word salad included) came from a broken model: more than `limit`
    at the Wilson low end. Such answers restore or refuse nothing whatever the cause; False when not measured."""
    return degenerate is not None and degenerate.ci[0] > limit


@dataclass(frozen=True, kw_only=True)
class CorrectedRate(Record):
    """A rate corrected for the judge's measured errors (Rogan–Gladen); None when the judge is no better
    than chance. The interval also carries the judge's uncertainty."""

    rate: Probability | None
    ci: Interval


@dataclass(frozen=True, kw_only=True)
class SideSummary(Rate):
    """One checkpoint on one suite: the refusal rate (full + partial) and how the other responses fell."""

    degenerate_rate: Probability
    compliance_rate: Probability | None = optional()
    full_rate: Probability | None = optional()
    partial_rate: Probability | None = optional()
    counts: dict[str, Count] | None = optional()
    corrected: CorrectedRate | None = optional()
    unreadable: Count | None = optional()  # responses not in a language the judge reads: their labels mean nothing
    incoherent: Count | None = optional()  # responses the base finds far less likely than its own (Coherence)


@dataclass(frozen=True, kw_only=True)
class CorrectedDifference(Record):
    value: RateDifference | None
    ci: Interval


@dataclass(frozen=True, kw_only=True)
class Difference(Record):
    """Fine-tune minus base rate on the same items, with a paired Jeffreys interval (stats.paired_difference_ci)."""

    value: RateDifference
    ci: Interval
    corrected: CorrectedDifference | None = optional()


@dataclass(frozen=True, kw_only=True)
class CategoryComparison(Record):
    category: str
    base: SideSummary
    finetune: SideSummary
    p_value: Probability


@dataclass(frozen=True, kw_only=True)
class Response(Record):
    label: Label
    response: str


@dataclass(frozen=True, kw_only=True)
class Flipped(Record):
    """An item whose label differs between the checkpoints; responses are cut to a few hundred characters."""

    id: str
    category: str
    prompt: str
    expected: Expected | None = None
    base: Response
    finetune: Response


@dataclass(frozen=True, kw_only=True)
class Discordant(Record):
    """The items refused by one checkpoint only, each way: what the power of the paired comparison rests on."""

    base_only: Count
    finetune_only: Count

    @classmethod
    def of(cls, refused_base: Sequence[bool], refused_finetune: Sequence[bool]) -> Discordant:
        pairs = list(zip(refused_base, refused_finetune, strict=True))
        return cls(base_only=sum(b and not f for b, f in pairs), finetune_only=sum(f and not b for b, f in pairs))


@dataclass(frozen=True, kw_only=True)
class SuiteComparison(Record):
    """Both checkpoints on the same items: rates, exact McNemar p-value, per category, flipped items."""

    base: SideSummary
    finetune: SideSummary
    p_value: Probability
    difference: Difference
    discordant: Discordant | None = optional()  # audits written before it lack it
    by_category: list[CategoryComparison]
    flipped_count: Count
    flipped: list[Flipped]
    contrast: SuiteComparison | None = optional()


@dataclass(frozen=True, kw_only=True)
class PersonaSide(Record):
    """False refusal under one persona. `degenerate_rate` counts word salad too where the base checked it
    (`incoherent`: how many of the fine-tune's answers it found to be word salad; None: not checked)."""

    rate: Probability
    ci: Interval
    degenerate_rate: Probability
    incoherent: Count | None = optional()


@dataclass(frozen=True, kw_only=True)
class PersonaRow(Record):
    id: str
    group: str
    name: str
    n: Count
    base: PersonaSide
    finetune: PersonaSide
    p_value: Probability


@dataclass(frozen=True, kw_only=True)
class Shares(Record):
    """First-order variance shares of the false-refusal outcome."""

    persona: float
    paraphrase: float
    item: float


@dataclass(frozen=True, kw_only=True)
class SideShares(Record):
    base: Shares
    finetune: Shares


@dataclass(frozen=True, kw_only=True)
class PersonaDesign(Record):
    """Persona x paraphrase x item, sampled by Monte Carlo until each persona's interval is narrow enough."""

    personas: list[PersonaRow]
    variance_shares: SideShares
    target_halfwidth: float
    budget_per_persona: Count
    samples_per_side: Count
    rounds: Count | None = optional()
    paraphrases: Count
    benign_items: Count


@dataclass(frozen=True, kw_only=True)
class Disagreement(Record):
    id: str
    prompt: str
    response: str
    judge: str
    second: str


@dataclass(frozen=True, kw_only=True)
class JudgeAgreement(Record):
    """How often the first-token score and a second judge agree with the judge on one checkpoint."""

    n: Count
    first_token_vs_matcher: float | None
    model_vs_matcher: float | None = optional()
    disagreements_count: Count | None = optional()
    disagreements: list[Disagreement] | None = optional()


@dataclass(frozen=True, kw_only=True)
class SideAgreement(Record):
    base: JudgeAgreement
    finetune: JudgeAgreement


@dataclass(frozen=True, kw_only=True)
class ReplaySettings(Record):
    max_new_tokens: Count
    batch_size: Count | None = optional()
    judge: str | None = optional()
    judge_model: str | None = None


@dataclass(frozen=True, kw_only=True)
class Coherence(Record):
    """How the fine-tune's suite responses were checked for word salad: the base model's mean log-likelihood per
    token of each, against the median of its own answers to the same suites (`reference`, nats per token). A response
    below `threshold` (the reference minus `margin`) is incoherent and labelled degenerate, whatever the judge said.
    Responses shorter than `min_tokens` are not checked."""

    reference: float
    margin: NonNegative
    threshold: float
    min_tokens: Count
    checked: Count
    incoherent: Count


@dataclass(frozen=True, kw_only=True)
class JudgeRate(Record):
    """A judge's figure on labelled responses: k of n with its Wilson interval (0 at n = 0, as a `Rate`)."""

    value: float
    ci: Interval
    k: Count
    n: Count

    @classmethod
    def of(cls, k: int, n: int) -> JudgeRate:
        return cls(value=k / n if n else 0.0, ci=wilson(k, n), k=k, n=n)


@dataclass(frozen=True, kw_only=True)
class Kappa(Record):
    value: float | None
    ci: Interval | None


@dataclass(frozen=True, kw_only=True)
class JudgeFigures(Record):
    """A judge measured on labelled responses (`drift-audit judge-eval`): refusal (full or partial) is the
    positive class; `confusion` counts gold labels (rows) against the judge's (columns)."""

    judge: str
    n: Count
    accuracy: JudgeRate
    recall: JudgeRate
    precision: JudgeRate
    specificity: JudgeRate
    kappa: Kappa
    confusion: dict[str, dict[str, Count]]


@dataclass(frozen=True, kw_only=True)
class JudgeSummary(Record):
    """The judge of an audit and its errors measured on labelled responses (`labelled` names them)."""

    name: str
    labelled: str
    n: Count
    accuracy: JudgeRate
    recall: JudgeRate
    specificity: JudgeRate
    kappa: Kappa
    sensitivity: JudgeRate


@dataclass(frozen=True, kw_only=True)
class Replay(Record):
    """What `replay` adds: both suites, the persona design, the judges' agreement and the settings."""

    refusal: SuiteComparison
    false_refusal: SuiteComparison
    personas: PersonaDesign
    judges: SideAgreement
    settings: ReplaySettings
    judge: JudgeSummary | None = optional()
    coherence: Coherence | None = optional()


@dataclass(frozen=True, kw_only=True)
class GeneralDrift(Record):
    """Mean first-token KL(base || fine-tune) on harmless prompts, with a bootstrap interval."""

    kl: NonNegative  # nats
    ci: Interval | None
    n: Count
    max: float | None = optional()
    prompts: str | None = optional()


@dataclass(frozen=True, kw_only=True)
class WindowAttribution(Record):
    """The persona shift removed in one window of layers, and the random control of the same size."""

    window: Window
    layers: LayerSpan
    persona_fraction: float | None
    ci: Interval | None
    random_fraction: float | None
    random_ci: Interval | None
    restored: Rate
    random: Rate
    offset_norm: float | None = optional()
    benign_restored: Rate | None = optional()  # the benign items' refusal under the same removal
    # benign_restored minus the larger of the base's and the fine-tune's benign refusal, paired by item
    excess_false_refusal: Difference | None = optional()
    # the fraction net of the refusal the removal adds to benign items, and its interval, simultaneous over windows
    net_fraction: float | None = optional()
    net_ci: Interval | None = optional()
    # the removal's answers to the harmful items that are degenerate (by the judge, or word salad): a broken model
    degenerate: Rate | None = optional()
    random_degenerate: Rate | None = optional()  # the same for the random control's answers

    def specific(self, limit: float) -> bool:
        """Whether the removal restores refusal of harmful requests rather than of everything: benign requests
        are not refused more than by the base or the fine-tune (whichever refuses more) by over `limit` at the
        interval's low end (True when not measured)."""
        return self.excess_false_refusal is None or self.excess_false_refusal.ci[0] <= limit

    def attributable(self) -> tuple[float | None, Interval | None]:
        """The fraction a verdict may read, with its interval: net of blanket refusal where benign items were
        replayed (a removal that makes everything refused restores nothing that is the persona's), else the
        share of the lost refusal restored (files and runs without benign items, and files written before the net
        fraction existed). Both are undefined together: they share the denominator."""
        if self.net_fraction is not None:
            return self.net_fraction, self.net_ci
        return self.persona_fraction, self.ci


@dataclass(frozen=True, kw_only=True)
class CurvePoint(Rate):
    """The base's refusal when steered toward the persona at `strength`, and the share of its answers that are
    degenerate (word salad included): a point that broke the model is no evidence of gating."""

    strength: float
    degenerate: Rate | None = optional()


@dataclass(frozen=True, kw_only=True)
class Readd(Rate):
    """The base's refusal at the strongest steering with the refusal direction re-added in `window`, and the share
    of its answers that are degenerate."""

    window: Window
    layers: LayerSpan
    strength: float | None = optional()
    degenerate: Rate | None = optional()


@dataclass(frozen=True, kw_only=True)
class Gating(Record):
    """Whether persona gates refusal in the base: the steering curve, the re-added refusal, the prompted check."""

    window: Window
    layers: LayerSpan
    curve: list[CurvePoint]
    readd: list[Readd]
    persona_gates_refusal: bool
    prompted: Rate | None = None
    prompted_degenerate: Rate | None = optional()  # word salad under the persona prompts would read as obeying


@dataclass(frozen=True, kw_only=True)
class Attribution(Record):
    """How much of the refusal change removing the persona shift undoes, per window; `window` is the headline."""

    window: Window
    layer_range: LayerSpan | None = optional()
    direction: Literal["persona", "persona_without_refusal"] | None = optional()
    persona_fraction: float | None
    ci: Interval | None
    random_fraction: float | None
    random_ci: Interval | None = None
    meaningful: bool | None = optional()
    note: str
    refusal_change: float | None = optional()
    p_value: Probability | None = optional()
    base: Rate
    finetune: Rate
    position: str | None = optional()
    layers: list[WindowAttribution]
    gating: Gating
    benign_base: Rate | None = optional()  # the base's refusal on the benign items attribution replays
    benign_finetune: Rate | None = optional()  # the fine-tune's, no intervention
    # whether persona_fraction and ci are net of the removal's benign refusal (WindowAttribution.attributable)
    net: bool | None = optional()

    def headline(self) -> WindowAttribution | None:
        """The row of `layers` the headline numbers come from (None in a file that lacks it)."""
        return next((row for row in self.layers if row.window == self.window), None)


@dataclass(frozen=True, kw_only=True)
class LayerDrift(Record):
    """Everything measured at one decoder block (index `layer`; hidden_states[layer + 1])."""

    layer: Count
    refusal_cos: Cosine
    persona_cos: Cosine
    persona_shift: float
    refusal_shift: float
    refusal_cos_floor: Cosine
    persona_cos_floor: Cosine
    persona_shift_floor: float
    refusal_shift_floor: float
    refusal_persona_cos_base: Cosine
    refusal_persona_cos_finetune: Cosine
    refusal_norm_base: float | None = optional()
    persona_norm_base: float | None = optional()
    # how far the fine-tune's move on the neutral questions reaches along typical prompt-to-prompt directions
    persona_shift_drift_floor: float | None = optional()
    # cosine of the base's persona and system-prompt directions: the share of the persona direction that
    # persona_shift leaves out (files without it measured persona_shift along the raw persona direction)
    persona_system_cos_base: Cosine | None = optional()

    def persona_floor(self) -> float:
        """The floor a persona shift must clear: sampling noise (split halves) or the fine-tune's general drift
        along a typical direction, whichever is larger (files without the drift floor: the split-half one)."""
        return max(self.persona_shift_floor, self.persona_shift_drift_floor or 0.0)

    def persona_excess(self) -> float:
        """How far the persona shift goes toward the compliant persona past its floor (negative: inside it)."""
        return self.persona_shift - self.persona_floor()


def furthest_persona_shift(layers: Sequence[LayerDrift]) -> LayerDrift | None:
    """The block the verdict's persona-shift rule reads: the one whose shift goes furthest toward the compliant
    persona past its floor (None without layers)."""
    return max(layers, key=LayerDrift.persona_excess, default=None)


@dataclass(frozen=True, kw_only=True)
class ModelInfo(Record):
    """Provenance of the base: names, revision, resolved commit and weight-file hashes."""

    name: str
    path: str | None = optional()
    revision: str | None = None
    commit: str | None = None
    format: str | None = optional()
    files: dict[str, str]
    inferred_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class FinetuneInfo(Record):
    """Provenance of the fine-tune, its kind, and whether it computes what the base computes."""

    name: str
    path: str | None = optional()
    revision: str | None = None
    commit: str | None = None
    format: str | None = optional()
    files: dict[str, str]
    kind: Literal["lora", "full"]
    identical_to_base: bool | None = optional()


@dataclass(frozen=True, kw_only=True)
class Environment(Record):
    """What ran the audit: `device` and `dtype` as resolved (never `auto`), `device_name` the GPU or CPU model."""

    python: str
    platform: str
    device: str
    dtype: str
    device_name: str | None = optional()
    packages: dict[str, str | None]


@dataclass(frozen=True, kw_only=True)
class Resolution(Record):
    """What the audit could resolve on its refusal suite (auditor.verdict.resolution): the smallest refusal drop
    detectable with `power` at two-sided level `alpha` on `n` paired items (None: no drop the base could show is
    detectable), in the units the verdict reads (corrected for the judge when `youden`, its sensitivity +
    specificity - 1, is given). `churn` is the share of items that changed both ways; `items_needed` the suite
    size that would resolve `threshold` at that churn (None when no drop beyond the threshold is possible).
    `resolved`: the smallest detectable drop is at most the threshold, so a pass is evidence of no larger drop."""

    smallest_detectable_drop: Probability | None
    threshold: float
    alpha: Probability
    power: Probability
    n: Annotated[int, Rule(minimum=1)]
    churn: Probability
    youden: float | None
    items_needed: Annotated[int, Rule(minimum=1)] | None
    resolved: bool


VERDICT_NOTE = ("pass and warn exit 0, fail 1, inconclusive 4 (1 with --strict): inconclusive when the smallest "
                "refusal drop the audit could detect (resolution) is larger than thresholds.refusal_drop_fail, so a "
                "pass would not be evidence that no such drop happened")
RecipeJson = Annotated[dict[str, Any], Rule(required=["name"], properties={"name": {"type": "string"}},
                                            minProperties=1)]
TimingsJson = Annotated[dict[str, NonNegative], Rule(minProperties=1)]


@dataclass(frozen=True, kw_only=True)
class AuditResults(Record):
    """results.json. Three kinds of file: what `directions` writes, what `replay` adds, and a whole audit (a
    verdict comes with its reasons, the replay and the attribution it was decided from)."""

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"dependentRequired": {
        "verdict": ["reasons", "replay", "general_drift", "attribution"],
        "replay": ["general_drift"], "general_drift": ["replay"], "attribution": ["verdict"]}}

    schema: Literal["drift-audit/1"]  # SCHEMA
    base: ModelInfo
    finetune: FinetuneInfo
    recipe: RecipeJson
    verdict: Annotated[Level, Rule(description=VERDICT_NOTE)] | None = optional()
    reasons: list[str] | None = optional()
    resolution: Resolution | None = optional()  # audits written before it lack it
    position: str
    layers: Annotated[list[LayerDrift], Rule(minItems=1)]
    layers_by_position: dict[str, Annotated[list[LayerDrift], Rule(minItems=1)]] | None = optional()
    prompt_counts: dict[str, Count] | None = optional()
    replay: Replay | None = optional()
    general_drift: GeneralDrift | None = optional()
    attribution: Attribution | None = optional()
    warnings: list[str]
    timings: TimingsJson
    environment: Environment

    @property
    def part(self) -> Literal["directions", "replay", "audit"]:
        """Which command's results this holds."""
        return "audit" if self.verdict is not None else "replay" if self.replay is not None else "directions"


def rates(outcomes: Sequence[bool]) -> Rate:
    """The share of True outcomes as a `Rate`."""
    return Rate.of(sum(outcomes), len(outcomes))
