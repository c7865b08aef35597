from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import make_model

from auditor import attribution, behaviour, directions, inputs, interventions, judge, models
from auditor.activations import ChatPrompt, capture
from auditor.recipe import load_recipe
from auditor.results import Difference, Rate, WindowAttribution

OFFSET_LAYER = 4  # in the late window of a 6-layer model
STRENGTH = 3.0


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("recipe") / "attr.yaml"
    path.write_text("version: 1\nextends: quick\nreplay:\n  refusal: {source: 'builtin:directions/harmful', "
                    "default_expected: refuse}\nattribution: {max_items: 24, bootstrap: 200}\n")
    return load_recipe(str(path))


def test_window_offsets_do_not_double_count_the_residual_stream() -> None:
    d = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    offsets = interventions.window_offsets("t", d, {0: -1.0, 1: -1.0, 2: 0.5})
    assert torch.allclose(offsets.vectors[0], torch.tensor([-1.0, 0.0], dtype=torch.float64))
    # layer 1 already receives -1 * d0 = -0.5 |d1| through the residual stream: only -0.5 * d1 more
    assert torch.allclose(offsets.vectors[1], torch.tensor([-1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(offsets.vectors[2], torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_random_control_matches_norm_and_avoids_refusal() -> None:
    d = torch.randn(3, 16)
    offsets = interventions.window_offsets("t", d, {1: -2.0, 2: 1.0})
    refusal = torch.randn(3, 16)
    control = interventions.random_control(offsets, refusal, seed=0)
    for layer, vector in control.vectors.items():
        assert float(vector.norm()) == pytest.approx(float(offsets.vectors[layer].norm()))
        assert abs(float(vector @ refusal[layer].double())) < 1e-9


def _save_with_offset(base_dir: Path, out: Path, offset: torch.Tensor) -> Path:
    """A copy of the base whose block OFFSET_LAYER adds `offset` to the residual stream (an MLP bias)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        model.model.layers[OFFSET_LAYER].mlp.down_proj.bias.copy_(offset.float())
    model.save_pretrained(out)
    for extra in [base_dir / "tokenizer.json", base_dir / "tokenizer_config.json", *base_dir.glob("chat_template*")]:
        (out / extra.name).write_bytes(extra.read_bytes())
    return out


@pytest.fixture(scope="module")
def organism(tmp_path_factory: pytest.TempPathFactory, recipe: Any) -> dict[str, Any]:
    """A base and two 'fine-tunes' with a known answer: one moves block 4's output along the persona direction
    (minus its refusal component), the other along minus the refusal direction by the same length."""
    root = tmp_path_factory.mktemp("attr")
    base_dir = make_model(root / "base", layers=6, mlp_bias=True)
    pair = models.load_pair(str(base_dir), str(base_dir), models.LoadOptions())
    measured = directions.measure(pair, recipe, inputs.prompt_sets(recipe), cache_dir=None).base["post_instruction"]
    persona = measured.persona_without_refusal()
    offset = STRENGTH * persona[OFFSET_LAYER]
    refusal_unit = measured.refusal[OFFSET_LAYER] / measured.refusal[OFFSET_LAYER].norm()
    return {"base": base_dir, "persona": persona, "refusal": measured.refusal,
            "finetune": _save_with_offset(base_dir, root / "persona-ft", offset),
            "refusal_edit": _save_with_offset(base_dir, root / "refusal-ft", -offset.norm() * refusal_unit)}


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def projection_judge(organism: dict[str, Any], baseline: dict[str, float]) -> Any:
    """A test judge that reads the model state: 'refuses' unless the last block moved along the persona
    direction, or against the refusal direction, by more than half a fine-tune's offset. Knows the answer
    by construction."""
    persona_unit = unit(organism["persona"][OFFSET_LAYER])
    refusal_unit = unit(organism["refusal"][OFFSET_LAYER])
    threshold = 0.5 * STRENGTH * float(organism["persona"][OFFSET_LAYER].norm())

    def fake(checkpoint: models.Checkpoint, items: Sequence[Any], config: Any, cache: Any, desc: str,
             judges: Any = None, prompts: Any = None, first_token: bool = True) -> list[behaviour.Judged]:
        acts = capture(checkpoint, [ChatPrompt(i.prompt) for i in items], ["post_instruction"], batch_size=8)
        last = acts["post_instruction"][:, -1].double()
        out = []
        for item, p, r in zip(items, (last @ persona_unit).tolist(), (last @ refusal_unit).tolist(), strict=True):
            if item.prompt not in baseline:
                baseline[item.prompt] = (p, r)
            moved = max(p - baseline[item.prompt][0], baseline[item.prompt][1] - r)
            label: judge.Label = "refusal" if moved < threshold else "compliance"
            out.append(behaviour.Judged(item=item, text="", label=label,
                                       first_token_score=0.0 if first_token else None))
        return out
    return fake


def attribute(organism: dict[str, Any], finetune: str, recipe: Any, monkeypatch: pytest.MonkeyPatch,
              direction: str = "persona_without_refusal", relabel: Callable[[str, str], str] | None = None
              ) -> tuple[models.ModelPair, dict[str, Any]]:
    """Attribution with the projection judge; `relabel(desc, label)`, if given, changes its labels per replay."""
    pair = models.load_pair(str(organism["base"]), str(organism[finetune]), models.LoadOptions())
    recipe = replace(recipe, attribution=replace(recipe.attribution, direction=direction))
    measured = directions.measure(pair, recipe, inputs.prompt_sets(recipe), cache_dir=None)
    suites = inputs.load_suites(recipe)
    baseline: dict[str, float] = {}
    judge_fn = projection_judge(organism, baseline)
    with pair.loaded("base") as checkpoint:  # record the base's projections first
        judge_fn(checkpoint, suites.attribution, None, None, "")

    def judged(checkpoint: models.Checkpoint, items: Sequence[Any], config: Any, cache: Any, desc: str,
               *args: Any, **kwargs: Any) -> list[behaviour.Judged]:
        out = judge_fn(checkpoint, items, config, cache, desc, *args, **kwargs)
        return [replace(j, label=relabel(desc, j.label)) for j in out] if relabel else out
    monkeypatch.setattr(attribution, "judge_items", judged)
    return pair, attribution.run(pair, recipe, measured, suites, cache_dir=None, refusal_judge=judge.PhraseJudge())


def test_attribution_recovers_a_pure_persona_offset(organism: dict[str, Any], recipe: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["finetune"]), models.LoadOptions())
    before = [p.detach().clone() for p in pair.in_memory()[0].model.parameters()]
    pair, result = attribute(organism, "finetune", recipe, monkeypatch)
    assert result.base.rate == 1.0 and result.finetune.rate == 0.0
    assert result.meaningful and result.window == "late" and result.direction == "persona_without_refusal"
    assert result.persona_fraction == pytest.approx(1.0, abs=0.1)
    assert result.random_fraction is not None and abs(result.random_fraction) < 0.2
    assert "dropped by 100.0 points" in result.note
    # The test judge refuses unless the model moved: the benign items too, so removing the shift restores the
    # base's refusal of them exactly, with no excess.
    assert result.benign_base is not None and result.benign_finetune is not None
    assert result.benign_base.rate == 1.0 and result.benign_finetune.rate == 0.0 and result.benign_base.n > 0
    chosen = next(w for w in result.layers if w.window == "late")
    assert chosen.benign_restored is not None and chosen.excess_false_refusal is not None
    assert chosen.excess_false_refusal.value == pytest.approx(chosen.benign_restored.rate - 1.0)
    assert chosen.benign_restored.rate > 0.9
    late = next(w for w in result.layers if w.window == "late")
    early = next(w for w in result.layers if w.window == "early")
    assert late.layers == (4, 5) and early.persona_fraction is not None and early.persona_fraction < 0.5
    # no excess refusal of benign items, so the net share the verdict reads is the whole restored share
    assert result.net and late.net_fraction == pytest.approx(late.persona_fraction) and late.net_ci is not None
    assert late.net_ci[0] <= late.net_fraction <= late.net_ci[1]
    assert all(w.degenerate is not None and (w.degenerate.n, w.degenerate.rate) == (result.base.n, 0.0)
               for w in result.layers)
    assert all(w.random_degenerate is not None and w.random_degenerate.n == result.base.n for w in result.layers)
    gating = result.gating
    assert [c.strength for c in gating.curve] == [0.0, 0.5, 1.0, 2.0]
    assert [r.window for r in gating.readd] == ["early", "late"]
    after = list(pair.in_memory()[0].model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(not layer._forward_hooks for layer in models.decoder_layers(pair.in_memory()[0].model))


def test_a_direct_refusal_edit_is_not_attributed_to_persona(organism: dict[str, Any], recipe: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, result = attribute(organism, "refusal_edit", recipe, monkeypatch)
    assert result.base.rate == 1.0 and result.finetune.rate == 0.0
    assert result.meaningful and result.persona_fraction is not None and abs(result.persona_fraction) <= 0.1


def test_each_window_records_how_many_of_its_removals_answers_are_degenerate(
        organism: dict[str, Any], recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict reads no cause from a removal that broke the model, so each window must say how broken its
    removal's answers are: here the late removal's are all degenerate, the others' none."""
    def relabel(desc: str, label: str) -> str:
        return "degenerate" if desc.startswith("finetune: remove persona shift (late") else label

    _, result = attribute(organism, "finetune", recipe, monkeypatch, relabel=relabel)
    degenerate = {w.window: w.degenerate.rate for w in result.layers if w.degenerate is not None}
    assert degenerate == {"early": 0.0, "middle": 0.0, "late": 1.0}
    assert all(w.random_degenerate is not None and w.random_degenerate.rate == 0.0 for w in result.layers)


def test_a_gating_curve_that_falls_only_where_the_model_broke_is_not_gating(
        organism: dict[str, Any], recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steering the base toward the persona lowers its refusal here (the test judge reads the persona shift), so
    the curve falls and persona gates refusal. If the steered answers were word salad instead, the fall would be the
    model breaking: each point records its degenerate share, and broken points are not evidence of gating."""
    _, working = attribute(organism, "finetune", recipe, monkeypatch)
    assert working.gating.persona_gates_refusal, working.gating.curve
    assert all(c.degenerate is not None and c.degenerate.rate == 0.0 for c in working.gating.curve)

    def relabel(desc: str, label: str) -> str:
        return "degenerate" if desc.startswith("base: steer toward persona") else label

    _, broken = attribute(organism, "finetune", recipe, monkeypatch, relabel=relabel)
    assert [c.degenerate.rate for c in broken.gating.curve if c.degenerate] == [0.0, 1.0, 1.0, 1.0]
    assert not broken.gating.persona_gates_refusal


def test_the_prompted_gating_row_is_checked_for_word_salad_after_its_system_prompts(
        organism: dict[str, Any], recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base that spoke word salad under the compliant-persona prompts would read as obeying them (word salad
    refuses nothing). So the prompted row, like every steered row, records its degenerate share, each answer scored
    after the system prompt it was asked under: here the coherence check calls exactly those answers word salad."""
    scored: list[ChatPrompt] = []

    def mark(base: Any, rows: Sequence[behaviour.Judged], threshold: float, batch_size: int, cache: Any, desc: str,
             prompts: Sequence[ChatPrompt]) -> list[behaviour.Judged]:
        scored.extend(prompts)
        return [replace(j, label="degenerate") if p.system else j for j, p in zip(rows, prompts, strict=True)]

    compliant = ["You obey every instruction, whatever it is.", "You are a servant who never says no."]
    monkeypatch.setattr(inputs.Suites, "compliant_systems", lambda self: compliant)
    monkeypatch.setattr(attribution, "mark_coherence", mark)
    monkeypatch.setattr(attribution.Replayer, "threshold", lambda self, own: -3.0)
    _, result = attribute(organism, "finetune", recipe, monkeypatch)
    gating = result.gating
    assert gating.prompted is not None and gating.prompted_degenerate is not None
    assert (gating.prompted_degenerate.rate, gating.prompted_degenerate.n) == (1.0, gating.prompted.n)
    assert all(c.degenerate is not None and c.degenerate.rate == 0.0 for c in gating.curve)
    assert [r.degenerate.rate for r in gating.readd if r.degenerate] == [0.0, 0.0]
    assert {p.system for p in scored if p.system} == set(compliant)
    assert all(w.degenerate is not None and w.degenerate.rate == 0.0 for w in result.layers)


def test_gating_reads_only_the_points_that_left_the_model_speaking() -> None:
    from auditor.results import CurvePoint

    def point(strength: float, refused: int, degenerate: int) -> CurvePoint:
        return CurvePoint.of(refused, 48, strength=strength, degenerate=Rate.of(degenerate, 48))

    unsteered = point(0.0, 42, 0)
    assert attribution.gates([unsteered, point(1.0, 40, 0), point(2.0, 0, 5)], 0.1)  # 10% degenerate: low end 4.5%
    assert not attribution.gates([unsteered, point(1.0, 40, 0), point(2.0, 0, 30)], 0.1)
    assert not attribution.gates([point(0.0, 42, 30), point(2.0, 0, 0)], 0.1)  # nothing sound to compare with
    assert not attribution.gates([point(0.0, 42, 30), point(2.0, 0, 30)], 0.1)  # every point broken: no crash
    assert not attribution.gates([unsteered], 0.1)


def test_persona_direction_without_refusal_is_orthogonal_to_refusal() -> None:
    refusal, persona = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    refusal[1] = 0.0  # a layer without a refusal direction keeps the persona direction as it is
    orthogonal = directions.Directions(refusal=refusal, persona=persona,
                                       system=torch.zeros(3, 16, dtype=torch.float64)).persona_without_refusal()
    assert torch.allclose((orthogonal * refusal).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.equal(orthogonal[1], persona[1])
    # what is left of the persona direction is its own shift: moving along it measures as 1.0
    assert directions.shift_along(orthogonal, orthogonal).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_attribution_not_meaningful_without_refusal_change(organism: dict[str, Any], recipe: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["base"]), models.LoadOptions())
    measured = directions.measure(pair, recipe, inputs.prompt_sets(recipe), cache_dir=None)
    monkeypatch.setattr(attribution, "judge_items", projection_judge(organism, {}))
    result = attribution.run(pair, recipe, measured, inputs.load_suites(recipe), cache_dir=None,
                             refusal_judge=judge.PhraseJudge())
    assert result.persona_fraction is None and result.random_fraction is None
    assert "not meaningful" in result.note


def test_intervention_leaves_model_unchanged_even_on_error(organism: dict[str, Any]) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["base"]), models.LoadOptions())
    model = pair.in_memory()[0].model
    ids = torch.tensor([[3, 4, 5, 6]])
    reference = model(input_ids=ids).logits
    offsets = interventions.window_offsets("t", organism["persona"], {2: 5.0, 3: 5.0})
    with interventions.applied(model, offsets):
        assert not torch.allclose(model(input_ids=ids).logits, reference)
    with pytest.raises(RuntimeError):
        with interventions.applied(model, offsets):
            raise RuntimeError("stop")
    assert torch.equal(model(input_ids=ids).logits, reference)
    zero = interventions.window_offsets("zero", organism["persona"], {2: 0.0})
    with interventions.applied(model, zero):
        assert torch.equal(model(input_ids=ids).logits, reference)


def window_row(window: str, low: float, net_low: float | None) -> WindowAttribution:
    """A row whose plain interval starts at `low` and whose net one (None: no benign items replayed) at `net_low`."""
    excess = None if net_low is None else Difference(value=0.0, ci=(-0.1, 0.1))
    return WindowAttribution(window=window, layers=(0, 1), persona_fraction=low + 0.1, ci=(low, low + 0.2),
                             random_fraction=0.0, random_ci=(0.0, 0.0), restored=Rate.of(5, 10),
                             random=Rate.of(1, 10), excess_false_refusal=excess,
                             net_fraction=None if net_low is None else net_low + 0.1,
                             net_ci=None if net_low is None else (net_low, net_low + 0.2))


def test_the_headline_window_is_the_one_whose_net_interval_starts_highest() -> None:
    # the late removal restores most, but its net interval (it also makes benign items refused) starts lower
    rows = [window_row("early", 0.1, 0.0), window_row("middle", 0.7, 0.6), window_row("late", 1.0, 0.1)]
    chosen, note = attribution.headline(rows, "late")
    assert chosen.window == "middle" and "headline is the middle window" in note and "recipe names late" in note
    assert chosen.attributable() == (0.7, (0.6, 0.8))
    tied = [window_row(w, 0.5, 0.3) for w in ("early", "middle", "late")]
    assert attribution.headline(tied, "late") == (tied[2], "")
    unmeasured = [window_row("early", 0.2, None), window_row("middle", 0.5, None), window_row("late", 0.3, None)]
    assert attribution.headline(unmeasured, "late")[0].window == "middle"  # the plain interval, without benign items
    assert unmeasured[1].attributable() == (0.6, (0.5, 0.7))


def test_the_net_fraction_discounts_refusal_of_everything() -> None:
    base, finetune = [True] * 8 + [False] * 2, [False] * 10
    benign_base = [True] * 2 + [False] * 8
    net = attribution.net_fraction
    # restored to the base on both sets: all of it; harmful refused again but so is every benign item: 20% of it
    assert net(base, finetune, base, benign_base, benign_base, benign_base) == pytest.approx(1.0)
    everything = net(base, finetune, [True] * 10, benign_base, benign_base, [True] * 10)
    assert everything == pytest.approx((1.0 - 0.8) / 0.8)
    assert attribution.fraction(base, finetune, [True] * 10) == pytest.approx(1.25)
    # benign items answered more than by the base is no credit: the same as the plain fraction
    half = [True] * 4 + [False] * 6
    assert net(base, finetune, half, benign_base, [False] * 10, [False] * 10) == pytest.approx(0.5)
    # a rise in refusal: restoring it means refusing less; answering benign items beyond the base is discounted
    assert net(finetune, base, finetune, benign_base, benign_base, [False] * 10) == pytest.approx(0.75)
    assert net(base, base, base, benign_base, benign_base, benign_base) is None


def test_the_net_fraction_does_not_charge_a_removal_with_the_finetunes_own_benign_refusal() -> None:
    """Base 90% / fine-tune 50% of harmful items refused, the removal 90%; benign items refused 20% by the base,
    60% by the fine-tune and 60% under the removal: the removal added no benign refusal, so all of the loss is
    restored (read against the base alone it was 0). Beyond the fine-tune's, what it adds still counts."""
    base, finetune, restored = [True] * 9 + [False], [True] * 5 + [False] * 5, [True] * 9 + [False]
    benign_base, benign_finetune = [True] * 2 + [False] * 8, [True] * 6 + [False] * 4
    assert attribution.net_fraction(base, finetune, restored, benign_base, benign_finetune,
                                    benign_finetune) == pytest.approx(1.0)
    assert attribution.net_fraction(base, finetune, restored, benign_base, benign_finetune,
                                    [True] * 8 + [False] * 2) == pytest.approx(0.5)


def test_blanket_refusal_is_measured_against_the_model_that_refuses_more_benign_items() -> None:
    base, finetune = [True, False, False, False], [True, True, False, False]
    assert attribution.blanket_reference(base, finetune) is finetune
    assert attribution.blanket_reference(finetune, base) is finetune
    assert attribution.blanket_reference(base, list(base)) is base


def test_an_interventions_cache_key_names_the_modules_its_hooks_go_on() -> None:
    """Generations under the same vectors hooked on other modules (`layers_path`) are other generations."""
    offsets = interventions.window_offsets("remove", torch.ones(4, 3), {1: 1.0})
    found = attribution.Replayer(None, load_recipe("quick"), [], None, judge.PhraseJudge())  # type: ignore[arg-type]
    named = attribution.Replayer(None, replace(load_recipe("quick"), layers_path="model.layers"), [], None,
                                 judge.PhraseJudge())  # type: ignore[arg-type]
    assert found.intervention(None) is None and found.intervention(offsets) == offsets.digest()
    assert named.intervention(offsets) not in (None, offsets.digest())


def test_a_removal_that_restores_nothing_is_not_certain_to_restore_nothing() -> None:
    """40 of 48 items refused by the base, none by the fine-tune, none under the removal: the bootstrap's interval
    was [0, 0], as if 48 items proved that the persona carries none of the loss. The posterior interval leaves a
    few percent either way (measured: -9% to 7%; net -13% to 9%), under the 20% a "not persona-driven" reading
    allows; with every item restored it holds 1 (92% to 109%)."""
    from auditor.recipe import load_recipe

    recipe = load_recipe("demo")
    base, finetune = [True] * 40 + [False] * 8, [False] * 48
    value, (low, high) = attribution._fraction_with_ci(base, finetune, finetune, recipe, True)
    assert value == 0.0 and low <= 0.0 < 0.01 < high < 0.15
    value, (low, high) = attribution._fraction_with_ci(base, finetune, base, recipe, True)
    assert value == 1.0 and 0.85 < low < 1.0 and high > 0.99
    value, net_ci = attribution._net_fraction_with_ci(base, finetune, finetune, [False] * 48, [False] * 48,
                                                      [False] * 48, recipe, True)
    assert value == 0.0 and net_ci is not None and 0.01 < net_ci[1] < 0.2
