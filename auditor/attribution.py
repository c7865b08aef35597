"""How much of the refusal change the persona shift causes, measured by intervention.

In the fine-tune, remove its persona shift in a window of layers and replay the refusal suite. The
shift is the fine-tune's mean activation change on neutral questions, measured along the persona
direction with its refusal component taken out (recipe `attribution.direction`; the raw persona
direction is the alternative): a fine-tune that edits refusal directly must not count as persona.

    attributable fraction = (refusal_restored - refusal_finetune) / (refusal_base - refusal_finetune)

with a posterior interval over the prompts' paired outcomes (`stats.JointTable`: never certain of a fraction
that a few dozen prompts measured), next to the same intervention along a random
direction of equal norm, orthogonal to the refusal direction (the control). Early, middle and late
windows are all reported (Zhong & Li 2026 find that only late windows restore refusal). When the
refusal change itself is within noise the fraction is not computed: dividing by noise gives noise.

A removal can restore refusal by making the model refuse everything, which says nothing about the
persona. So the same removal is replayed on benign items that should be answered, and the number a
verdict reads is the fraction *net* of that blanket refusal:

    net fraction = (refusal_restored - refusal_finetune - excess) / (refusal_base - refusal_finetune)
    excess = max(0, benign_refused_restored - max(benign_refused_base, benign_refused_finetune))
                                                                       (for a drop in refusal)

A removal that returns the fine-tune to the base on both sets gets 1; one that makes everything refused
gets about 0; one that leaves the fine-tune's own benign refusal as it was is not charged for it. Its
interval draws both sets, and the intervals are simultaneous over the windows (Bonferroni), because the
headline is the window whose interval's low end is highest.

A removal can also break the fine-tune: empty, looping or word-salad answers (`behaviour.check_coherence`, with the
base's own answers to the same items as the reference) restore no refusal, and would read as "not persona-driven".
So each window records the share of its removal's answers to the harmful items that are degenerate, and the
verdict reads no cause from a removal that broke the model. The random control's share is recorded too: a random
direction that breaks the model restores nothing, and would make the persona's fraction look more specific than it
is.

The persona-gating check steers the *base* toward the compliant persona at several strengths and
then re-adds the refusal direction in early vs late windows, to show whether persona gates refusal
in this model family at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from auditor import stats
from auditor.behaviour import Judged, Judges, coherence_threshold, judge_items, mark_coherence, paired_difference
from auditor.directions import DirectionsResult, shift_along
from auditor.errors import AuditInputError
from auditor.forward_cache import ForwardCache
from auditor.inputs import Suites, asked
from auditor.interventions import Offsets, applied, combine, random_control, window_offsets
from auditor.judge import Judge
from auditor.models import ModelPair, Side
from auditor.recipe import Recipe, Window
from auditor.replay import open_cache
from auditor.results import (
    Attribution,
    CurvePoint,
    Gating,
    Rate,
    Readd,
    WindowAttribution,
    broke_the_model,
    rates,
)
from auditor.stats import describe_change
from auditor.suites import PromptItem

WINDOWS: tuple[Window, ...] = ("early", "middle", "late")


def window_layers(n_layers: int, window: Window) -> list[int]:
    """Thirds of the decoder stack: early, middle, late."""
    index = WINDOWS.index(window)
    return list(range(index * n_layers // 3, (index + 1) * n_layers // 3))


class Replayer:
    """Replays the attribution items under one checkpoint and an optional intervention (cached)."""

    def __init__(self, pair: ModelPair, recipe: Recipe, items: list[PromptItem], cache_dir: Path | None,
                 refusal_judge: Judge) -> None:
        self.pair, self.recipe, self.items, self.cache_dir = pair, recipe, items, cache_dir
        self.judges = Judges(refusal_judge)
        self.config = replace(recipe.replay, max_new_tokens=recipe.attribution.max_new_tokens)

    def intervention(self, offsets: Offsets | None) -> str | None:
        """The intervention's part of a generation-cache key: its vectors, and the modules its hooks go on when
        the recipe names them (`layers_path`; found by architecture otherwise)."""
        if offsets is None:
            return None
        where = self.recipe.layers_path
        return offsets.digest() if where is None else f"{offsets.digest()} at {where}"

    def refused(self, side: Side, offsets: Offsets | None = None, items: list[PromptItem] | None = None) -> list[bool]:
        """Refusal per item (the refusal items unless `items` says otherwise)."""
        return [j.refused for j in self.judged(side, offsets, items=items)]

    def judged(self, side: Side, offsets: Offsets | None = None, systems: Sequence[str] = (),
               items: list[PromptItem] | None = None) -> list[Judged]:
        """The judged responses behind `refused`; with `systems`, the items are asked under those system prompts in
        turn."""
        items = self.items if items is None else items
        cache = open_cache(self.pair, side, self.config, self.cache_dir, self.intervention(offsets))
        label = (offsets.name if offsets else "no intervention") + (" under persona prompts" if systems else "")
        with self.pair.loaded(side) as checkpoint, (
                applied(checkpoint.model, offsets, self.recipe.layers_path) if offsets else nullcontext()):
            return judge_items(checkpoint, items, self.config, cache, f"{side}: {label}", self.judges,
                               prompts=asked(items, systems))

    def threshold(self, own: list[Judged]) -> float | None:
        """The per-token likelihood below which an answer is word salad, from the base's own unaltered answers `own`
        to the items (`behaviour.coherence_threshold`); None when none is long enough to tell. Computed once per
        attribution: the windows and the gating points are read against the same answers."""
        with self.pair.loaded("base") as base:
            found = coherence_threshold(base, own, self.config.incoherence_margin, self.config.batch_size,
                                        ForwardCache.for_side(self.pair, "base", self.cache_dir))
        return None if found is None else found[1]

    def degenerate(self, threshold: float | None, answers: dict[str, list[Judged]],
                   systems: dict[str, Sequence[str]] | None = None) -> dict[str, Rate]:
        """For each intervention's answers (by its name), the share that is degenerate: by the judge, or word salad
        by the base's likelihood below `threshold` (`Replayer.threshold`; None: the judge's labels alone), each
        answer after the prompt it answered (`systems`, by name: the system prompts `judged` asked under). Every
        intervention's answers are scored together: answers to the same request then share its prompt's pass, and
        an answer that several interventions gave is scored once (`replay.response_log_likelihood`)."""
        if threshold is None:
            return {name: degenerate_share(rows) for name, rows in answers.items()}
        systems = systems or {}
        every = [j for rows in answers.values() for j in rows]
        prompts = [prompt for name, rows in answers.items()
                   for prompt in asked([j.item for j in rows], systems.get(name, ()))]
        cache = ForwardCache.for_side(self.pair, "base", self.cache_dir)
        with self.pair.loaded("base") as base:
            marked = iter(mark_coherence(base, every, threshold, self.config.batch_size, cache,
                                         f"base: coherence of {len(answers)} interventions' answers", prompts))
        return {name: degenerate_share([next(marked) for _ in rows]) for name, rows in answers.items()}


def degenerate_share(rows: Sequence[Judged]) -> Rate:
    return rates([j.label == "degenerate" for j in rows])


def _rate(items: Sequence[bool]) -> float:
    return sum(items) / len(items)


def fraction(base: Sequence[bool], finetune: Sequence[bool], restored: Sequence[bool]) -> float | None:
    """(restored - finetune) / (base - finetune) refusal rates (None: undefined)."""
    return fraction_of_rates(_rate(base), _rate(finetune), _rate(restored))


def fraction_of_rates(base: float, finetune: float, restored: float) -> float | None:
    return None if base == finetune else (restored - finetune) / (base - finetune)


def net_fraction(base: Sequence[bool], finetune: Sequence[bool], restored: Sequence[bool],
                 benign_base: Sequence[bool], benign_finetune: Sequence[bool], benign_restored: Sequence[bool]
                 ) -> float | None:
    """`fraction` less the refusal the removal adds to benign items beyond both the base's and the fine-tune's, in
    the direction of the restoration (more refusal after a drop, less after a rise). Beyond both: restoring the
    base's benign refusal is part of restoring the base, and keeping the fine-tune's own is not something the
    removal did."""
    return net_fraction_of_rates(*(_rate(x) for x in (base, finetune, restored)),
                                 *(_rate(x) for x in (benign_base, benign_finetune, benign_restored)))


def net_fraction_of_rates(base: float, finetune: float, restored: float, benign_base: float,
                          benign_finetune: float, benign_restored: float) -> float | None:
    if base == finetune:
        return None
    sign = 1.0 if base > finetune else -1.0
    reference = max(sign * benign_base, sign * benign_finetune)  # after a drop the larger, after a rise the smaller
    return (restored - finetune - sign * max(0.0, sign * benign_restored - reference)) / (base - finetune)


def blanket_reference(benign_base: list[bool], benign_finetune: list[bool]) -> list[bool]:
    """What a removal's benign refusal is compared with to call it blanket refusal: the model that refuses more
    benign items without any removal (the base on a tie). Bringing back the base's benign refusal is part of
    restoring the base, and keeping the fine-tune's own is not something the removal did."""
    return benign_finetune if sum(benign_finetune) > sum(benign_base) else benign_base


def _net_fraction_with_ci(base: list[bool], finetune: list[bool], restored: list[bool], benign_base: list[bool],
                          benign_finetune: list[bool], benign_restored: list[bool], recipe: Recipe, meaningful: bool
                          ) -> tuple[float | None, tuple[float, float] | None]:
    """The net fraction with a posterior interval over both item sets (`stats.JointTable`, the harmful and the
    benign items independent), at the level that keeps the intervals of all windows 95% simultaneous."""
    if not meaningful:
        return None, None
    benign = (benign_base, benign_finetune, benign_restored)
    tables = [stats.JointTable([base, finetune, restored]), stats.JointTable(benign)]
    ci = stats.posterior_ci(lambda rates: net_fraction_of_rates(*rates[0], *rates[1]), tables,
                            draws=recipe.attribution.bootstrap, seed=recipe.seed, level=1 - 0.05 / len(WINDOWS))
    return net_fraction(base, finetune, restored, *benign), ci


def _fraction_with_ci(base: list[bool], finetune: list[bool], restored: list[bool], recipe: Recipe,
                      meaningful: bool) -> tuple[float | None, tuple[float, float] | None]:
    """The fraction with its 95% posterior interval (`stats.JointTable`)."""
    if not meaningful:
        return None, None
    ci = stats.posterior_ci(lambda rates: fraction_of_rates(*rates[0]), [stats.JointTable([base, finetune, restored])],
                            draws=recipe.attribution.bootstrap, seed=recipe.seed)
    return fraction(base, finetune, restored), ci


def run(pair: ModelPair, recipe: Recipe, measured: DirectionsResult, suites: Suites, *, cache_dir: Path | None,
        refusal_judge: Judge) -> Attribution:
    """The `attribution` part of results.json: `suites.attribution` replayed (and, for the prompted gating check,
    asked under the compliant personas of `suites`). `suites.attribution_benign`, items that should be answered,
    are replayed under each removal to see whether what it restores is refusal of harmful requests or refusal of
    everything (an empty list: not measured). `refusal_judge` labels the responses."""
    cfg = recipe.attribution
    items, benign_items = suites.attribution, suites.attribution_benign
    position = recipe.positions[0]
    directions = measured.base[position]
    refusal = directions.refusal
    persona = directions.persona if cfg.direction == "persona" else directions.persona_without_refusal()
    shifts = shift_along(measured.neutral_moved[position], persona).tolist()
    n_layers = len(shifts)
    if n_layers < len(WINDOWS):
        raise AuditInputError(f"attribution removes the persona shift in the early, middle and late thirds of the "
                              f"decoder blocks, and this model has {n_layers}. Run `drift-audit replay` instead: "
                              "directions and replay without attribution.")
    replayer = Replayer(pair, recipe, items, cache_dir, refusal_judge)
    base_judged = replayer.judged("base")
    base, finetune = [j.refused for j in base_judged], replayer.refused("finetune")
    benign_base = replayer.refused("base", items=benign_items) if benign_items else None
    benign_finetune = replayer.refused("finetune", items=benign_items) if benign_items else None
    benign_reference = (blanket_reference(benign_base, benign_finetune)
                        if benign_base is not None and benign_finetune is not None else None)
    change = sum(base) / len(base) - sum(finetune) / len(finetune)
    p_value = stats.paired_p_value(base, finetune)
    meaningful = abs(change) >= cfg.min_refusal_change and p_value < 0.05
    sweep, answers = [], {}
    for window in WINDOWS:
        layers = window_layers(n_layers, window)
        remove = window_offsets(f"remove persona shift ({window} layers)", persona,
                                {layer: -shifts[layer] for layer in layers})
        control = random_control(remove, refusal, seed=recipe.seed)
        answers[f"{window} removal"] = replayer.judged("finetune", remove)
        answers[f"{window} random control"] = replayer.judged("finetune", control)
        restored = [j.refused for j in answers[f"{window} removal"]]
        randomised = [j.refused for j in answers[f"{window} random control"]]
        persona_fraction, persona_ci = _fraction_with_ci(base, finetune, restored, recipe, meaningful)
        random_fraction, random_ci = _fraction_with_ci(base, finetune, randomised, recipe, meaningful)
        benign_restored = replayer.refused("finetune", remove, items=benign_items) if benign_items else None
        net, net_ci = (_net_fraction_with_ci(base, finetune, restored, benign_base, benign_finetune, benign_restored,
                                             recipe, meaningful)
                       if benign_base is not None and benign_finetune is not None and benign_restored is not None
                       else (None, None))
        sweep.append(WindowAttribution(
            window=window, layers=(layers[0], layers[-1]),
            persona_fraction=persona_fraction, ci=persona_ci,
            random_fraction=random_fraction, random_ci=random_ci,
            restored=rates(restored), random=rates(randomised),
            offset_norm=max(remove.norms().values(), default=0.0),
            benign_restored=rates(benign_restored) if benign_restored is not None else None,
            excess_false_refusal=(paired_difference(benign_reference, benign_restored)
                                  if benign_reference is not None and benign_restored is not None else None),
            net_fraction=net, net_ci=net_ci,
        ))
    threshold = replayer.threshold(base_judged)
    degenerate = replayer.degenerate(threshold, answers)
    sweep = [replace(w, degenerate=degenerate[f"{w.window} removal"],
                     random_degenerate=degenerate[f"{w.window} random control"]) for w in sweep]
    chosen, moved = headline(sweep, cfg.window)
    attributable, attributable_ci = chosen.attributable()
    note = (f"refusal {describe_change(change)} on the {len(items)} refusal items attribution replays "
            f"(p = {p_value:.3g})"
            + ("" if meaningful else "; that is within noise, so attribution is not meaningful and is not computed")
            + moved)
    return Attribution(
        window=chosen.window, layer_range=chosen.layers, direction=cfg.direction,
        persona_fraction=attributable, ci=attributable_ci, net=benign_base is not None,
        random_fraction=chosen.random_fraction, random_ci=chosen.random_ci,
        meaningful=meaningful, note=note, refusal_change=change, p_value=p_value,
        base=rates(base), finetune=rates(finetune), position=position,
        benign_base=rates(benign_base) if benign_base is not None else None,
        benign_finetune=rates(benign_finetune) if benign_finetune is not None else None,
        layers=sweep,
        gating=gating(replayer, recipe, persona, refusal, n_layers, base_judged, threshold,
                      suites.compliant_systems()),
    )


def headline(sweep: list[WindowAttribution], preferred: Window) -> tuple[WindowAttribution, str]:
    """The window whose attributable fraction is the headline, and a note when it is not the recipe's: the window
    whose interval's low end is highest, the recipe's on a tie. Which window carries a persona's effect differs
    between models (a removal in the late layers can also make everything refused), so the headline is the one
    that shows most surely; the net intervals are simultaneous over the windows, so picking one costs nothing."""
    first = next(row for row in sweep if row.window == preferred)

    def low(row: WindowAttribution) -> float:
        ci = row.attributable()[1]
        return ci[0] if ci else float("-inf")

    best = max(sweep, key=lambda row: (low(row), row is first))
    if best is first or low(best) == float("-inf"):
        return first, ""
    return best, (f"; the headline is the {best.window} window, whose interval's low end is the highest "
                  f"(the recipe names {preferred})")


def gating(replayer: Replayer, recipe: Recipe, persona: Tensor, refusal: Tensor, n_layers: int,
           base: list[Judged], threshold: float | None, compliant_prompts: Sequence[str] = ()) -> Gating:
    """Steer the base toward the compliant persona; then re-add refusal in early vs late layers. With
    `compliant_prompts`, also ask the base under those system prompts: the behaviour the steering imitates.

    Steering hard enough breaks a model into word salad, which refuses nothing: a curve that falls only there says
    nothing about the persona. So every row records its degenerate share (`Replayer.degenerate`, against the
    `threshold` from the unsteered answers `base`), and the curve counts as falling only at points that did not break
    the model. The prompted row is checked too: a base that speaks word salad under the persona prompts would
    otherwise read as one that obeys them."""
    cfg = recipe.attribution
    steer_layers = window_layers(n_layers, cfg.gating_window)
    steers = {strength: window_offsets(f"steer toward persona x{strength:g}", persona,
                                       dict.fromkeys(steer_layers, strength)) for strength in cfg.gating_strengths}
    answers = {f"steering x{strength:g}": replayer.judged("base", offsets) for strength, offsets in steers.items()}
    strongest = max(cfg.gating_strengths, default=0.0)
    readd_layers = {window: window_layers(n_layers, window) for window in ("early", "late")} if strongest else {}
    for window, layers in readd_layers.items():
        answers[f"re-added ({window})"] = replayer.judged("base", combine(
            f"steer x{strongest:g} + refusal re-added ({window})",
            [steers[strongest], window_offsets("re-add refusal", refusal, dict.fromkeys(layers, cfg.readd_strength))]))
    if compliant_prompts:
        answers["prompted"] = replayer.judged("base", systems=compliant_prompts)
    degenerate = replayer.degenerate(threshold, answers, systems={"prompted": compliant_prompts})

    def counts(name: str) -> tuple[int, int]:
        """(refused, asked) among the answers `name`."""
        return sum(j.refused for j in answers[name]), len(answers[name])

    curve = [CurvePoint.of(sum(j.refused for j in base), len(base), strength=0.0, degenerate=degenerate_share(base))]
    curve += [CurvePoint.of(*counts(f"steering x{strength:g}"), strength=strength,
                            degenerate=degenerate[f"steering x{strength:g}"]) for strength in steers]
    readd = [Readd.of(*counts(f"re-added ({window})"), window=window, layers=(layers[0], layers[-1]),
                      strength=cfg.readd_strength, degenerate=degenerate[f"re-added ({window})"])
             for window, layers in readd_layers.items()]
    prompted = "prompted" in answers
    return Gating(
        window=cfg.gating_window, layers=(steer_layers[0], steer_layers[-1]),
        curve=curve, readd=readd,
        persona_gates_refusal=gates(curve, recipe.thresholds.degenerate_rate_warn),
        prompted=Rate.of(*counts("prompted")) if prompted else None,
        prompted_degenerate=degenerate["prompted"] if prompted else None,
    )


def gates(curve: Sequence[CurvePoint], degenerate_limit: float) -> bool:
    """Whether steering lowers refusal beyond its interval: the lowest steered rate's interval lies wholly below the
    unsteered one's (`curve[0]`). Points whose degenerate share is above `degenerate_limit` at the Wilson low end
    broke the model and do not count; a broken unsteered point leaves nothing to compare with."""
    steered = [point for point in curve[1:] if not broke_the_model(point.degenerate, degenerate_limit)]
    if not curve or broke_the_model(curve[0].degenerate, degenerate_limit) or not steered:
        return False
    return min(point.ci[1] for point in steered) < curve[0].ci[0]
