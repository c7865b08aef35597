"""Activation interventions for attribution and the persona-gating curve.

Every intervention adds a fixed vector to the output of chosen decoder blocks, at all token
positions, through `forward_hooks`: the model is exactly as before once the block exits.

Offsets in a window are planned so that the *total* correction at each layer is what was asked
for: a vector added at block l also flows through the residual stream into block l + 1, so adding
`target_l * d_l` at every layer would count earlier layers' corrections again. `window_offsets`
subtracts what earlier layers of the window already contribute along each layer's direction (for a
one-layer window it is exactly `target * d`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from auditor.hooks import ForwardHook, block_output, forward_hooks
from auditor.models import decoder_layers


@dataclass(frozen=True)
class Offsets:
    """Vectors to add to decoder-block outputs: layer index -> (d_model,) tensor."""

    name: str
    vectors: dict[int, Tensor]

    def digest(self) -> str:
        """Identifies the intervention in generation-cache keys."""
        h = hashlib.sha256(self.name.encode())
        for layer in sorted(self.vectors):
            h.update(str(layer).encode())
            h.update(self.vectors[layer].double().numpy().tobytes())
        return h.hexdigest()

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.vectors.items()}


def window_offsets(name: str, directions: Tensor, targets: dict[int, float]) -> Offsets:
    """Offsets that move each layer l of the window by `targets[l]` times its direction `directions[l]`.

    Args:
        directions: (layers, d_model) unnormalised directions (the unit of each target is |d_l|).
        targets: layer -> wanted total shift along d_l, in units of |d_l| (negative removes).
    """
    applied = torch.zeros(directions.shape[1], dtype=torch.float64)
    vectors = {}
    for layer in sorted(targets):
        d = directions[layer].double()
        norm2 = float(d @ d)
        if norm2 == 0:
            continue
        already = float(applied @ d) / norm2
        vectors[layer] = (targets[layer] - already) * d
        applied += vectors[layer]
    return Offsets(name, vectors)


def random_control(offsets: Offsets, avoid: Tensor, *, seed: int) -> Offsets:
    """Random vectors with the same norm per layer, orthogonal to `avoid[l]` (the refusal direction)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = {}
    for layer, vector in offsets.vectors.items():
        noise = torch.randn(vector.shape[0], generator=generator, dtype=torch.float64)
        a = avoid[layer].double()
        if float(a @ a) > 0:
            noise -= (noise @ a) / (a @ a) * a
        vectors[layer] = noise / noise.norm() * vector.norm()
    return Offsets(f"random control for {offsets.name}", vectors)


def combine(name: str, parts: Sequence[Offsets]) -> Offsets:
    vectors: dict[int, Tensor] = {}
    for part in parts:
        for layer, vector in part.vectors.items():
            vectors[layer] = vectors.get(layer, torch.zeros_like(vector)) + vector
    return Offsets(name, vectors)


@contextmanager
def applied(model: nn.Module, offsets: Offsets, layers_path: str | None = None) -> Iterator[None]:
    """Add `offsets` to the chosen block outputs for the duration of the block."""
    layers = decoder_layers(model, layers_path)

    def add(vector: Tensor) -> ForwardHook:
        def hook(module: nn.Module, args: object, output: object) -> object:
            hidden = block_output(output)
            shifted = hidden + vector.to(device=hidden.device, dtype=hidden.dtype)
            return (shifted, *output[1:]) if isinstance(output, tuple) else shifted
        return hook

    with forward_hooks([(layers[layer], add(vector)) for layer, vector in offsets.vectors.items()]):
        yield
