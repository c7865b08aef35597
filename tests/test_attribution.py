from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from tiny import make_model

from auditor import attribution, behaviour, directions, interventions, judge, models
from auditor.activations import ChatPrompt, capture
from auditor.recipe import load_recipe

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


@pytest.fixture(scope="module")
def organism(tmp_path_factory: pytest.TempPathFactory, recipe: Any) -> dict[str, Any]:
    """A base and a 'fine-tune' that differs only by a persona-direction offset after block 4."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("attr")
    base_dir = make_model(root / "base", layers=6, mlp_bias=True)
    pair = models.load_pair(str(base_dir), str(base_dir), models.LoadOptions())
    persona = directions.measure(pair, recipe).base["post_instruction"].persona
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        model.model.layers[OFFSET_LAYER].mlp.down_proj.bias.copy_(STRENGTH * persona[OFFSET_LAYER].float())
    model.save_pretrained(root / "finetune")
    (root / "finetune" / "tokenizer.json").write_bytes((base_dir / "tokenizer.json").read_bytes())
    (root / "finetune" / "tokenizer_config.json").write_bytes((base_dir / "tokenizer_config.json").read_bytes())
    for extra in base_dir.glob("chat_template*"):
        (root / "finetune" / extra.name).write_bytes(extra.read_bytes())
    return {"base": base_dir, "finetune": root / "finetune", "persona": persona}


def projection_judge(persona: torch.Tensor, baseline: dict[str, float]) -> Any:
    """A test judge that reads the model state: 'refuses' unless the last block moved along the persona
    direction by more than half the fine-tune's offset. Knows the answer by construction."""
    unit = persona[OFFSET_LAYER] / persona[OFFSET_LAYER].norm()
    threshold = 0.5 * STRENGTH * float(persona[OFFSET_LAYER].norm())

    def fake(checkpoint: models.Checkpoint, items: Sequence[Any], config: Any, cache: Any, desc: str,
             judges: Any = None, prompts: Any = None, first_token: bool = True) -> list[behaviour.Judged]:
        acts = capture(checkpoint, [ChatPrompt(i.prompt) for i in items], ["post_instruction"], batch_size=8)
        proj = acts["post_instruction"][:, -1].double() @ unit
        out = []
        for item, value in zip(items, proj.tolist(), strict=True):
            if item.prompt not in baseline:
                baseline[item.prompt] = value
            label: judge.Label = "refusal" if value - baseline[item.prompt] < threshold else "compliance"
            out.append(behaviour.Judged(item=item, text="", label=label,
                                       first_token_score=0.0 if first_token else None))
        return out
    return fake


def test_attribution_recovers_a_pure_persona_offset(organism: dict[str, Any], recipe: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["finetune"]), models.LoadOptions())
    measured = directions.measure(pair, recipe)
    shift = measured.layers["post_instruction"][OFFSET_LAYER].persona_shift
    assert shift == pytest.approx(STRENGTH, rel=0.02)  # the offset, measured in units of |p|
    baseline: dict[str, float] = {}
    judge_fn = projection_judge(organism["persona"], baseline)
    with pair.use("base") as checkpoint:  # record the base's projections first
        judge_fn(checkpoint, attribution.load_suite(recipe.replay.refusal, key="k", limit=24), None, None, "")
    monkeypatch.setattr(attribution, "judge_items", judge_fn)
    before = [p.detach().clone() for p in pair._base.model.parameters()]  # type: ignore[union-attr]
    result = attribution.run(pair, recipe, measured, cache_dir=None, refusal_judge=judge.PhraseJudge())
    assert result["base"]["rate"] == 1.0 and result["finetune"]["rate"] == 0.0
    assert result["meaningful"] and result["window"] == "late"
    assert result["persona_fraction"] == pytest.approx(1.0, abs=0.1)
    assert abs(result["random_fraction"]) < 0.2
    late = next(w for w in result["layers"] if w["window"] == "late")
    early = next(w for w in result["layers"] if w["window"] == "early")
    assert late["layers"] == [4, 5] and early["persona_fraction"] < 0.5  # the offset is not in early layers
    gating = result["gating"]
    assert [c["strength"] for c in gating["curve"]] == [0.0, 0.5, 1.0, 2.0]
    assert [r["window"] for r in gating["readd"]] == ["early", "late"]
    after = list(pair._base.model.parameters())  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(not layer._forward_hooks for layer in models.decoder_layers(pair._base.model))  # type: ignore[union-attr]


def test_attribution_not_meaningful_without_refusal_change(organism: dict[str, Any], recipe: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["base"]), models.LoadOptions())
    measured = directions.measure(pair, recipe)
    monkeypatch.setattr(attribution, "judge_items", projection_judge(organism["persona"], {}))
    result = attribution.run(pair, recipe, measured, cache_dir=None, refusal_judge=judge.PhraseJudge())
    assert result["persona_fraction"] is None and result["random_fraction"] is None
    assert "not meaningful" in result["note"]


def test_intervention_leaves_model_unchanged_even_on_error(organism: dict[str, Any]) -> None:
    pair = models.load_pair(str(organism["base"]), str(organism["base"]), models.LoadOptions())
    model = pair._base.model  # type: ignore[union-attr]
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
