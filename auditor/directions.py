"""Refusal and persona directions per layer, and how far the fine-tune moved them.

Definitions follow docs/ARCHITECTURE.md:
- refusal direction r_l = mean(harmful) - mean(harmless);
- persona direction p_l = mean(neutral questions under a compliant persona system prompt)
  - mean(the same questions under a default-assistant system prompt);
- `*_cos` = cosine of the base and fine-tune directions;
- system-prompt direction s_l = mean(neutral questions under a default-assistant system prompt)
  - mean(the same questions under the template's own default system prompt): nothing about persona
  tells the two apart, only which system prompt the model reads;
- `persona_shift` = mean over the neutral questions (under the template's own default system
  prompt) of (h_ft - h_base) . q_hat / |q|, where q is p without its component along s, so 1.0 means
  the fine-tune moved as far along the persona axis as the persona prompt does. Any fine-tune trained
  under the template's default system prompt moves along s (it changes how that prompt is read), and
  the persona direction overlaps s (cosine -0.2 to +0.34 over the blocks of the SmolLM2 organisms):
  along the raw p, the neutral `benign` LoRA moved toward the compliant persona beyond its floor at 17
  of 30 blocks, seven of them late, along q at 8, none late (README). `refusal_shift` is the same
  along r over the harmful prompts (negative: the fine-tune's harmful-prompt activations moved toward
  harmless);
- noise floors: the same statistics between two random halves of the base model's prompts,
  repeated over `noise_splits` splits (5th percentile for cosines, 95th of |shift| for shifts);
- `persona_shift_drift_floor`: the fine-tune's mean move on the neutral questions measured along
  directions of ordinary prompt-to-prompt variation (h_i - h_j over every pair of the base's neutral
  questions) scaled to the persona axis q's length, 95th percentile of |shift|. Every fine-tune moves
  its activations somewhat, a null fine-tune on the model's own answers included; a persona shift means
  something only where it stands out from what the same move gives along a typical direction.

All means are taken in float64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from auditor.activations import ChatPrompt, capture, render
from auditor.forward_cache import ForwardCache
from auditor.inputs import PromptSets
from auditor.models import Checkpoint, ModelPair, Side
from auditor.recipe import Position, Recipe
from auditor.results import LayerDrift

FORMAT = "drift-audit/directions/1"
KINDS = ("refusal", "persona", "system")


@dataclass(frozen=True)
class SetActivations:
    """One model's activations at one position: each (prompts, layers, d_model)."""

    harmful: Tensor
    harmless: Tensor
    persona_on: Tensor
    persona_off: Tensor
    neutral: Tensor


@dataclass(frozen=True)
class Directions:
    """Unnormalised difference-of-means directions of one model, each (layers, d_model), float64."""

    refusal: Tensor
    persona: Tensor
    system: Tensor

    def persona_without_refusal(self) -> Tensor:
        """The persona direction minus its component along the refusal direction, per layer. A fine-tune that
        edits refusal directly moves activations along the refusal direction; measured along the raw persona
        direction that edit would pass for a persona shift wherever the two directions overlap."""
        return without(self.persona, self.refusal)

    def persona_axis(self) -> Tensor:
        """The persona direction minus its component along the system-prompt direction: what `persona_shift` is
        measured along (module docstring)."""
        return without(self.persona, self.system)


def without(direction: Tensor, other: Tensor) -> Tensor:
    """Per layer, `direction` minus its component along `other` (unchanged where `other` is zero)."""
    norm2 = (other * other).sum(-1, keepdim=True)
    along = (direction * other).sum(-1, keepdim=True) / norm2.clamp_min(1e-300)
    return direction - torch.where(norm2 > 0, along, torch.zeros_like(along)) * other


@dataclass(frozen=True)
class DirectionsResult:
    """Per position: the per-layer drift and both models' directions."""

    layers: dict[Position, list[LayerDrift]]
    base: dict[Position, Directions]
    finetune: dict[Position, Directions]
    counts: dict[str, int]
    neutral_moved: dict[Position, Tensor]  # (layers, d_model): mean fine-tune minus base on the neutral questions


def capture_sets(checkpoint: Checkpoint, sets: PromptSets, recipe: Recipe, side: Side,
                 cache: ForwardCache) -> dict[Position, SetActivations]:
    """Capture every prompt set in one model at the recipe's positions, each set through `cache`."""
    captured = {f.name: _capture_set(checkpoint, getattr(sets, f.name), recipe, f"{side}: {f.name}", cache)
                for f in fields(PromptSets)}
    return {pos: SetActivations(**{name: acts[pos] for name, acts in captured.items()}) for pos in recipe.positions}


def _capture_set(checkpoint: Checkpoint, prompts: list[ChatPrompt], recipe: Recipe, desc: str,
                 cache: ForwardCache) -> dict[Position, Tensor]:
    key = {"prompts": [render(checkpoint.tokenizer, p).ids for p in prompts], "systems": [p.system for p in prompts],
           "positions": list(recipe.positions), "batch_size": recipe.batch_size, "layers_path": recipe.layers_path,
           "share_prefix": True}
    stored = cache.tensors("activations", key, lambda: {str(p): acts for p, acts in capture(
        checkpoint, prompts, recipe.positions, batch_size=recipe.batch_size, layers_path=recipe.layers_path,
        share_prefix=True, desc=desc).items()})
    return {p: stored[p] for p in recipe.positions}


def neutral_move(base: SetActivations, finetune: SetActivations) -> Tensor:
    """(layers, d_model): the fine-tune's mean activation minus the base's on the neutral questions."""
    return _mean(finetune.neutral) - _mean(base.neutral)


def _mean(x: Tensor) -> Tensor:
    return x.double().mean(dim=0)


def directions_of(acts: SetActivations) -> Directions:
    return Directions(
        refusal=_mean(acts.harmful) - _mean(acts.harmless),
        persona=_mean(acts.persona_on) - _mean(acts.persona_off),
        system=_mean(acts.persona_off) - _mean(acts.neutral),
    )


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of two (layers, d) tensors; 0 where a direction is zero."""
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def projection_shift(base: Tensor, finetune: Tensor, direction: Tensor) -> Tensor:
    """Per layer: mean over prompts of (finetune - base) . d / |d|^2 (in units of the direction's length)."""
    return shift_along(_mean(finetune) - _mean(base), direction)


def shift_along(moved: Tensor, direction: Tensor) -> Tensor:
    """Per layer: moved . d / |d|^2, for (layers, d_model) tensors; 0 where d is zero."""
    norm2 = (direction * direction).sum(-1)
    return torch.where(norm2 > 0, (moved * direction).sum(-1) / norm2.clamp_min(1e-300), torch.zeros_like(norm2))


def drift_floor(base: Tensor, moved: Tensor, direction: Tensor, quantile: float = 0.95) -> Tensor:
    """Per layer: the `quantile` of |moved . u_hat| / |direction| over u = base_i - base_j for every pair of
    `base`'s prompts (prompts, layers, d_model); `moved` and `direction` are (layers, d_model). Computed from the
    prompts' Gram matrices, so the pairs' difference vectors are never held (prompts^2 x layers numbers only)."""
    h = base.double()
    along = torch.einsum("pld,ld->pl", h, moved.double())  # (prompts, layers)
    gram = torch.einsum("pld,qld->lpq", h, h)  # (layers, prompts, prompts)
    first, second = torch.triu_indices(h.shape[0], h.shape[0], offset=1)
    squared = gram.diagonal(dim1=1, dim2=2)  # (layers, prompts)
    distance = (squared[:, first] + squared[:, second] - 2 * gram[:, first, second]).clamp_min(0).sqrt()
    reach = (along[first] - along[second]).T.abs() / distance.clamp_min(1e-300)  # (layers, pairs)
    reach = torch.where(distance > 0, reach, torch.zeros_like(reach))
    length = direction.double().norm(dim=-1)
    floor = reach.quantile(quantile, dim=1) / length.clamp_min(1e-300)
    return torch.where(length > 0, floor, torch.zeros_like(floor))


@dataclass(frozen=True)
class NoiseFloor:
    refusal_cos: Tensor
    persona_cos: Tensor
    persona_shift: Tensor
    refusal_shift: Tensor


def noise_floor(acts: SetActivations, directions: Directions, *, splits: int, seed: int) -> NoiseFloor:
    """The drift statistics between random halves of one model's prompts: what chance alone gives."""
    generator = torch.Generator().manual_seed(seed)
    axis = directions.persona_axis()

    def halves(n: int) -> tuple[Tensor, Tensor]:
        perm = torch.randperm(n, generator=generator)
        return perm[: n // 2], perm[n // 2: 2 * (n // 2)]

    stats: dict[str, list[Tensor]] = {"refusal_cos": [], "persona_cos": [], "persona_shift": [], "refusal_shift": []}
    for _ in range(splits):
        (ha, hb), (na, nb), (pa, pb), (qa, qb) = (
            halves(len(acts.harmful)), halves(len(acts.harmless)), halves(len(acts.persona_on)),
            halves(len(acts.neutral)),
        )
        r_a = _mean(acts.harmful[ha]) - _mean(acts.harmless[na])
        r_b = _mean(acts.harmful[hb]) - _mean(acts.harmless[nb])
        p_a = _mean(acts.persona_on[pa]) - _mean(acts.persona_off[pa])
        p_b = _mean(acts.persona_on[pb]) - _mean(acts.persona_off[pb])
        stats["refusal_cos"].append(cosine(r_a, r_b))
        stats["persona_cos"].append(cosine(p_a, p_b))
        stats["persona_shift"].append(projection_shift(acts.neutral[qa], acts.neutral[qb], axis).abs())
        stats["refusal_shift"].append(projection_shift(acts.harmful[ha], acts.harmful[hb], directions.refusal).abs())
    return NoiseFloor(
        refusal_cos=torch.stack(stats["refusal_cos"]).quantile(0.05, dim=0),
        persona_cos=torch.stack(stats["persona_cos"]).quantile(0.05, dim=0),
        persona_shift=torch.stack(stats["persona_shift"]).quantile(0.95, dim=0),
        refusal_shift=torch.stack(stats["refusal_shift"]).quantile(0.95, dim=0),
    )


def compare(base: SetActivations, finetune: SetActivations, *, splits: int, seed: int) -> tuple[
        list[LayerDrift], Directions, Directions]:
    """Per-layer drift of the fine-tune relative to the base, with the base's noise floor."""
    d_base, d_ft = directions_of(base), directions_of(finetune)
    floor = noise_floor(base, d_base, splits=splits, seed=seed)
    moved = neutral_move(base, finetune)
    axis = d_base.persona_axis()
    columns = {
        "refusal_cos": cosine(d_base.refusal, d_ft.refusal),
        "persona_cos": cosine(d_base.persona, d_ft.persona),
        "persona_shift": shift_along(moved, axis),
        "refusal_shift": projection_shift(base.harmful, finetune.harmful, d_base.refusal),
        "refusal_cos_floor": floor.refusal_cos,
        "persona_cos_floor": floor.persona_cos,
        "persona_shift_floor": floor.persona_shift,
        "refusal_shift_floor": floor.refusal_shift,
        "refusal_persona_cos_base": cosine(d_base.refusal, d_base.persona),
        "refusal_persona_cos_finetune": cosine(d_ft.refusal, d_ft.persona),
        "refusal_norm_base": d_base.refusal.norm(dim=-1),
        "persona_norm_base": d_base.persona.norm(dim=-1),
        "persona_shift_drift_floor": drift_floor(base.neutral, moved, axis),
        "persona_system_cos_base": cosine(d_base.persona, d_base.system),
    }
    layers = [
        LayerDrift(layer=i, **{name: float(values[i]) for name, values in columns.items()})
        for i in range(d_base.refusal.shape[0])
    ]
    return layers, d_base, d_ft


def measure(pair: ModelPair, recipe: Recipe, sets: PromptSets, *, cache_dir: Path | None) -> DirectionsResult:
    """Capture both models on the recipe's prompt sets (`inputs.prompt_sets`) and compare them, position by
    position. Activations are cached in `cache_dir` (None: not cached; `auditor.forward_cache`)."""
    captured: dict[Side, dict[Position, SetActivations]] = {}
    for side in ("base", "finetune"):
        with pair.loaded(side) as checkpoint:
            captured[side] = capture_sets(checkpoint, sets, recipe, side, ForwardCache.for_side(pair, side, cache_dir))
    layers, base, finetune, moved = {}, {}, {}, {}
    for position in recipe.positions:
        layers[position], base[position], finetune[position] = compare(
            captured["base"][position], captured["finetune"][position],
            splits=recipe.directions.noise_splits, seed=recipe.seed,
        )
        moved[position] = neutral_move(captured["base"][position], captured["finetune"][position])
    counts = {f.name: len(getattr(sets, f.name)) for f in fields(PromptSets)}
    return DirectionsResult(layers=layers, base=base, finetune=finetune, counts=counts, neutral_moved=moved)


def directions_file(result: DirectionsResult, metadata: dict[str, str]) -> bytes:
    """Every direction as a safetensors file: tensor `{side}.{kind}.{position}`, shape (layers, d_model)."""
    from safetensors.torch import save

    tensors = {}
    for side, by_position in (("base", result.base), ("finetune", result.finetune)):
        for position, directions in by_position.items():
            for kind in KINDS:
                tensors[f"{side}.{kind}.{position}"] = getattr(directions, kind).float().contiguous()
    first = next(iter(tensors.values()))
    meta = {
        "format": FORMAT,
        "layers": json.dumps(list(range(first.shape[0]))),
        "layer_naming": "decoder block index l = transformers hidden_states[l + 1]",
        "kinds": ",".join(KINDS),
        "positions": ",".join(result.base),
        **metadata,
    }
    return save(tensors, metadata=meta)


def load_directions(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a directions file written from `directions_file`: (tensors, metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
