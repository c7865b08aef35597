from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor import directions, inputs, models
from auditor.recipe import load_recipe


def measure(base: Path, finetune: Path, recipe_path: Path) -> directions.DirectionsResult:
    pair = models.load_pair(str(base), str(finetune), models.LoadOptions())
    recipe = load_recipe(str(recipe_path))
    return directions.measure(pair, recipe, inputs.prompt_sets(recipe), cache_dir=None)


def assert_no_drift(result: directions.DirectionsResult) -> None:
    for drift in result.layers.values():
        for row in drift:
            assert row.refusal_cos == pytest.approx(1.0, abs=1e-5)
            assert row.persona_cos == pytest.approx(1.0, abs=1e-5)
            assert row.persona_shift == pytest.approx(0.0, abs=1e-6)
            assert row.refusal_shift == pytest.approx(0.0, abs=1e-6)


def mean_abs_shift(result: directions.DirectionsResult) -> float:
    rows = result.layers["post_instruction"]
    return sum(abs(r.persona_shift) + abs(r.refusal_shift) for r in rows) / len(rows)


def test_identical_models_do_not_drift(base_dir: Path, same_dir: Path, tiny_recipe: Path) -> None:
    result = measure(base_dir, same_dir, tiny_recipe)
    assert set(result.layers) == {"post_instruction", "last"}
    assert len(result.layers["last"]) == 4
    assert_no_drift(result)


def test_fresh_lora_does_not_drift(base_dir: Path, lora_zero_dir: Path, tiny_recipe: Path) -> None:
    assert_no_drift(measure(base_dir, lora_zero_dir, tiny_recipe))


def test_random_lora_drifts(base_dir: Path, lora_random_dir: Path, tiny_recipe: Path) -> None:
    result = measure(base_dir, lora_random_dir, tiny_recipe)
    rows = result.layers["post_instruction"]
    assert max(r.refusal_cos for r in rows) < 1 - 1e-4
    assert all(abs(r.persona_shift) > 1e-6 and abs(r.refusal_shift) > 1e-6 for r in rows)


def test_larger_perturbation_larger_shift(base_dir: Path, full_small_dir: Path, full_large_dir: Path,
                                          tiny_recipe: Path) -> None:
    small = measure(base_dir, full_small_dir, tiny_recipe)
    large = measure(base_dir, full_large_dir, tiny_recipe)
    assert all(r.refusal_cos < 1 - 1e-6 for r in small.layers["post_instruction"])
    assert mean_abs_shift(small) > 1e-6
    assert mean_abs_shift(large) > mean_abs_shift(small)
    assert min(r.persona_cos for r in large.layers["post_instruction"]) < min(
        r.persona_cos for r in small.layers["post_instruction"])


def test_projection_shift_measures_offset_in_direction_units() -> None:
    torch.manual_seed(0)
    base = torch.randn(10, 3, 8)
    direction = torch.randn(3, 8).double()
    moved = base + 0.5 * direction.float()  # every prompt moved by half the direction
    shift = directions.projection_shift(base, moved, direction)
    assert torch.allclose(shift, torch.full((3,), 0.5, dtype=torch.float64), atol=1e-5)


def test_noise_floor_is_zero_for_identical_prompts() -> None:
    same = torch.ones(8, 2, 4)
    acts = directions.SetActivations(harmful=same * 2, harmless=same, persona_on=same * 3, persona_off=same,
                                     neutral=same)
    floor = directions.noise_floor(acts, directions.directions_of(acts), splits=3, seed=0)
    assert torch.allclose(floor.persona_shift, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(floor.refusal_cos, torch.ones(2, dtype=torch.float64))


def test_drift_floor_is_the_move_along_pairwise_prompt_differences() -> None:
    """The Gram-matrix computation equals the plain one over every pair's difference vector."""
    torch.manual_seed(1)
    base, moved, direction = torch.randn(7, 2, 5), torch.randn(2, 5).double(), torch.randn(2, 5).double()
    reach = []
    for i in range(7):
        for j in range(i + 1, 7):
            u = (base[i] - base[j]).double()
            reach.append((moved * u).sum(-1).abs() / u.norm(dim=-1) / direction.norm(dim=-1))
    expected = torch.stack(reach).quantile(0.95, dim=0)
    assert torch.allclose(directions.drift_floor(base, moved, direction), expected)


def test_a_general_move_stays_under_the_drift_floor_and_a_persona_move_clears_it() -> None:
    """A fine-tune that moves activations along one arbitrary direction shifts them along the persona direction
    only as much as along a typical direction: within the drift floor. Moving them along the persona direction
    itself, by the same length, clears it."""
    torch.manual_seed(2)
    d_model, layers = 64, 1
    base = torch.randn(32, layers, d_model)
    persona = torch.zeros(layers, d_model, dtype=torch.float64)
    persona[:, 0] = 1.0
    general = torch.randn(layers, d_model, dtype=torch.float64)
    general = 3.0 * general / general.norm(dim=-1, keepdim=True)
    toward = 3.0 * persona
    for moved, within in ((general, True), (toward, False)):
        shift = directions.shift_along(moved, persona).abs()
        assert bool((shift <= directions.drift_floor(base, moved, persona)).all()) is within


def test_a_move_along_the_system_prompt_direction_is_no_persona_shift() -> None:
    """A fine-tune trained under the template's default system prompt moves along the system-prompt direction s
    (default-assistant prompt minus the template's own, same questions). The persona direction overlaps s, so along
    it that move would read as a persona shift; along the persona axis (p without s) it reads zero, while the
    persona prompt's own move still reads 1.0."""
    torch.manual_seed(3)
    layers, d_model = 2, 16
    questions = torch.randn(12, layers, d_model)
    system = torch.randn(layers, d_model)
    persona = torch.randn(layers, d_model) + 0.8 * system  # overlaps the system-prompt direction
    harmful, harmless = torch.randn(12, layers, d_model), torch.randn(12, layers, d_model)
    base = directions.SetActivations(harmful=harmful, harmless=harmless, persona_on=questions + system + persona,
                                     persona_off=questions + system, neutral=questions)

    def persona_shift(move: torch.Tensor) -> list[float]:
        finetune = directions.SetActivations(**{**vars(base), "neutral": questions + move})
        rows, d_base, _ = directions.compare(base, finetune, splits=2, seed=0)
        assert torch.allclose(d_base.system, system.double(), atol=1e-5)
        assert all(abs(row.persona_system_cos_base) > 0.2 for row in rows)  # the overlap is real
        return [row.persona_shift for row in rows]

    raw = directions.shift_along(2 * system.double(), persona.double())  # what the raw persona direction reads
    assert raw.abs().min() > 0.2
    assert persona_shift(2 * system) == pytest.approx([0.0, 0.0], abs=1e-5)
    assert persona_shift(persona) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_directions_file_round_trip(base_dir: Path, lora_random_dir: Path, tiny_recipe: Path,
                                    tmp_path: Path) -> None:
    result = measure(base_dir, lora_random_dir, tiny_recipe)
    path = tmp_path / "directions.safetensors"
    path.write_bytes(directions.directions_file(result, {"base": "b", "finetune": "f"}))
    tensors, meta = directions.load_directions(path)
    assert meta["format"] == directions.FORMAT and meta["base"] == "b" and meta["positions"] == "post_instruction,last"
    assert sorted(tensors) == sorted(f"{s}.{k}.{p}" for s in ("base", "finetune")
                                     for k in ("refusal", "persona", "system") for p in ("post_instruction", "last"))
    assert torch.allclose(tensors["finetune.persona.last"], result.finetune["last"].persona.float())
