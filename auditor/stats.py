"""Small, exact statistics: Wilson intervals, exact McNemar, bootstrap, variance shares.

Standard library plus torch only, so every number can be checked by hand in the tests.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    @property
    def half_width(self) -> float:
        low, high = self.ci
        return (high - low) / 2


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials ((0, 1) when n is 0).

    Example:
        >>> [round(x, 4) for x in wilson(8, 10)]
        [0.4902, 0.9433]
    """
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_base: int, only_finetune: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts (binomial test, p = 1/2)."""
    n = only_base + only_finetune
    if n == 0:
        return 1.0
    k = min(only_base, only_finetune)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_p_value(base: Sequence[bool], finetune: Sequence[bool]) -> float:
    """Exact McNemar test of two paired binary outcomes on the same prompts."""
    if len(base) != len(finetune):
        raise ValueError("paired outcomes need the same prompts on both sides")
    only_base = sum(1 for b, f in zip(base, finetune, strict=True) if b and not f)
    only_finetune = sum(1 for b, f in zip(base, finetune, strict=True) if f and not b)
    return mcnemar_exact(only_base, only_finetune)


def bootstrap_ci(statistic: Callable[[list[int]], float | None], n: int, *, reps: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap over n paired items: `statistic` gets resampled indices.

    Resamples where the statistic is undefined (None) are skipped; None if most are.
    """
    rng = random.Random(seed)
    values = []
    for _ in range(reps):
        value = statistic([rng.randrange(n) for _ in range(n)])
        if value is not None and math.isfinite(value):
            values.append(value)
    if len(values) < reps // 2:
        return None
    values.sort()
    low = values[int((1 - level) / 2 * (len(values) - 1))]
    high = values[int((1 + level) / 2 * (len(values) - 1))]
    return (low, high)


def variance_shares(outcomes: Sequence[float], factors: dict[str, Sequence[Hashable]]) -> dict[str, float]:
    """First-order variance shares: Var(E[Y | X]) / Var(Y) for each factor X.

    Each share is the fraction of the outcome's variance explained by that factor alone (its main
    effect), estimated from the sampled cells; shares need not sum to 1 (interactions, noise).
    All shares are 0 when the outcome does not vary.
    """
    n = len(outcomes)
    mean = sum(outcomes) / n if n else 0.0
    total = sum((y - mean) ** 2 for y in outcomes) / n if n else 0.0
    shares = {}
    for name, levels in factors.items():
        groups: dict[Hashable, list[float]] = defaultdict(list)
        for level, y in zip(levels, outcomes, strict=True):
            groups[level].append(y)
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values()) / n if n else 0.0
        shares[name] = between / total if total > 0 else 0.0
    return shares
