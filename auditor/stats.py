"""Small, exact statistics: Wilson intervals, exact McNemar, bootstrap, paired Jeffreys intervals, variance
shares, the correction of rates for an imperfect judge (Cohen's kappa, Rogan–Gladen), and the power of the
paired comparison (the smallest refusal drop an audit could detect).

Standard library plus torch only, so every number can be checked by hand in the tests.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

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
    """Percentile bootstrap over n items: `statistic` gets resampled indices. For continuous statistics (KL, kappa);
    rates of yes/no items use `JointTable`, whose interval is not a point when a pattern was never seen.

    Resamples where the statistic is undefined (None) are skipped; None if most are.
    """
    rng = random.Random(seed)
    values = []
    for _ in range(reps):
        value = statistic([rng.randrange(n) for _ in range(n)])
        if value is not None and math.isfinite(value):
            values.append(value)
    return _percentiles(values, level, reps)


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


def cohen_kappa(gold: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters: agreement beyond what their base rates give by chance.

    None when chance agreement is 1 (both raters always say the same one thing), where kappa is undefined.

    Example:
        >>> round(cohen_kappa([True, True, False, False], [True, False, False, False]), 4)
        0.5
    """
    n = len(gold)
    if n == 0:
        return None
    observed = sum(g == p for g, p in zip(gold, predicted, strict=True)) / n
    g1, p1 = sum(gold) / n, sum(predicted) / n
    chance = g1 * p1 + (1 - g1) * (1 - p1)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


@dataclass(frozen=True)
class JudgeError:
    """A judge's confusion counts on labelled responses, refusal (full or partial) being the positive class.

    Sensitivity is the share of true refusals the judge calls refusals; specificity the share of
    compliances it calls compliance (a degenerate call counts as not refusing).
    """

    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int

    @property
    def sensitivity(self) -> Rate:
        return Rate(self.true_positive, self.true_positive + self.false_negative)

    @property
    def specificity(self) -> Rate:
        return Rate(self.true_negative, self.true_negative + self.false_positive)

    def draws(self, rng: random.Random) -> tuple[float, float]:
        """One draw of (sensitivity, specificity) from their Jeffreys posteriors, Beta(k + 1/2, n - k + 1/2)."""
        return (_jeffreys(self.sensitivity, rng), _jeffreys(self.specificity, rng))


def _jeffreys(rate: Rate, rng: random.Random) -> float:
    return rng.betavariate(rate.k + 0.5, rate.n - rate.k + 0.5)


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float | None:
    """The true rate behind an observed rate from an imperfect judge (Rogan & Gladen 1978), clipped to [0, 1]:

        true = (observed + specificity - 1) / (sensitivity + specificity - 1)

    None when the judge is no better than chance (sensitivity + specificity <= 1).

    Example:
        >>> round(rogan_gladen(0.5, 0.9, 0.8), 4)
        0.4286
    """
    youden = sensitivity + specificity - 1
    if youden <= 0:
        return None
    return min(1.0, max(0.0, (observed + specificity - 1) / youden))


CORRECTION_DRAWS = 4000


def corrected_rate(k: int, n: int, error: JudgeError, *, seed: int = 0
                   ) -> tuple[float | None, tuple[float, float]]:
    """A refusal rate corrected for the judge's errors, with a 95% interval that carries three uncertainties:
    the rate's own (k of n), and the judge's sensitivity and specificity (from its labelled counts).

    Monte Carlo over the three Jeffreys posteriors; draws where the judge is no better than chance are
    dropped. The interval is (0, 1) when most are. Returns (estimate, interval); the estimate is None when
    the judge is no better than chance.
    """
    estimate = rogan_gladen(k / n if n else 0.0, error.sensitivity.rate, error.specificity.rate)
    rng = random.Random(seed)
    values = []
    for _ in range(CORRECTION_DRAWS):
        sensitivity, specificity = error.draws(rng)
        value = rogan_gladen(_jeffreys(Rate(k, n), rng), sensitivity, specificity)
        if value is not None:
            values.append(value)
    return estimate, _percentiles(values) or (0.0, 1.0)


class JointTable:
    """Items answered yes or no under several conditions (base, fine-tune, fine-tune under a removal): how many
    items gave each pattern of answers, and draws of the conditions' rates from the Jeffreys posterior over the
    patterns, a Dirichlet with half an item added to each of the 2^k cells. Unlike a bootstrap of the items, which
    resamples only patterns that were seen, a pattern never seen still carries its uncertainty: with no discordant
    item, the interval of a difference is not (0, 0), and a removal that restored nothing of 40 items is not
    certain to restore nothing."""

    def __init__(self, columns: Sequence[Sequence[bool]]) -> None:
        counts = Counter(zip(*columns, strict=True))
        self.width = len(columns)
        self.patterns = list(itertools.product((False, True), repeat=self.width))
        self.alphas = [counts[pattern] + 0.5 for pattern in self.patterns]

    def draw(self, rng: random.Random) -> tuple[float, ...]:
        """One posterior draw of each condition's rate."""
        weights = [rng.gammavariate(alpha, 1.0) for alpha in self.alphas]
        total = sum(weights)
        return tuple(sum(w for w, pattern in zip(weights, self.patterns, strict=True) if pattern[j]) / total
                     for j in range(self.width))


def posterior_ci(statistic: Callable[[list[tuple[float, ...]]], float | None], tables: Sequence[JointTable], *,
                 draws: int = CORRECTION_DRAWS, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """The central `level` interval of `statistic` over joint draws of every table's rates (independent tables:
    harmful and benign items, say); None when fewer than half the draws give a finite value."""
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        value = statistic([table.draw(rng) for table in tables])
        if value is not None and math.isfinite(value):
            values.append(value)
    return _percentiles(values, level, draws)


def paired_difference_ci(base: Sequence[bool], finetune: Sequence[bool], *, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of the fine-tune's minus the base's rate on the same items (`JointTable`), widened to hold
    the observed difference (the prior pulls the draws of an all-or-nothing table inward)."""
    if not base:
        return -1.0, 1.0
    observed = (sum(finetune) - sum(base)) / len(base)
    low, high = posterior_ci(lambda rates: rates[0][1] - rates[0][0], [JointTable([base, finetune])],
                             seed=seed) or (-1.0, 1.0)
    return min(low, observed), max(high, observed)


def corrected_difference(base: Sequence[bool], finetune: Sequence[bool], error: JudgeError, *,
                         seed: int = 0) -> tuple[float | None, tuple[float, float]]:
    """Fine-tune minus base refusal rate, each corrected for the judge (`rogan_gladen`, so each in [0, 1]): the
    difference of the corrected rates shown beside it. Unclipped it is the observed paired difference divided by
    sensitivity + specificity - 1 (the specificity term cancels); a rate observed above the judge's measured
    sensitivity reads as 100%, not more, and so does the difference it enters (dividing the observed difference
    alone claimed more drop than the corrected rates allow). The 95% interval draws the paired rates
    (`JointTable`) and the judge's sensitivity and specificity together. Returns (difference, interval); the
    difference is None when the judge is no better than chance."""
    n = len(base)
    if not n:
        return 0.0, (-1.0, 1.0)

    def difference(rates: tuple[float, ...], sensitivity: float, specificity: float) -> float | None:
        corrected_base, corrected_finetune = (rogan_gladen(rate, sensitivity, specificity) for rate in rates)
        if corrected_base is None or corrected_finetune is None:
            return None
        return corrected_finetune - corrected_base

    value = difference((sum(base) / n, sum(finetune) / n), error.sensitivity.rate, error.specificity.rate)
    rng, table = random.Random(seed), JointTable([base, finetune])
    values = []
    for _ in range(CORRECTION_DRAWS):
        sensitivity, specificity = error.draws(rng)
        if sensitivity + specificity > 1:
            drawn = difference(table.draw(rng), sensitivity, specificity)
            if drawn is not None:
                values.append(drawn)
    return value, _percentiles(values) or (-1.0, 1.0)


def _percentiles(values: list[float], level: float = 0.95, draws: int = CORRECTION_DRAWS
                 ) -> tuple[float, float] | None:
    """The central `level` interval of Monte Carlo draws; None when fewer than half the `draws` were usable."""
    if len(values) < draws // 2:
        return None
    values = sorted(values)
    return (values[int((1 - level) / 2 * (len(values) - 1))], values[int((1 + level) / 2 * (len(values) - 1))])


POWER = 0.8  # the power at which the smallest detectable drop is reported
_NORMAL = NormalDist()
_DROP_GRID = 1000  # steps between 0 and 1 in the first scan for the smallest detectable drop


def paired_power(drop: float, n: int, churn: float, alpha: float) -> float:
    """The power of the two-sided paired test of equal rates (McNemar's, normal approximation; Connor 1987) to
    detect a drop `drop` on n paired items, when besides the drop a share `churn` of the items changes, half
    each way: the share of discordant pairs is then psi = churn + drop, and

        power = Phi((drop * sqrt(n) - z(1 - alpha/2) * sqrt(psi)) / sqrt(psi - drop^2))

    Example:
        >>> round(paired_power(0.1, 155, 0.1, 0.05), 3)
        0.801
    """
    discordant = churn + drop
    spread = discordant - drop * drop
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    margin = drop * math.sqrt(n) - z * math.sqrt(discordant)
    if spread <= 0:  # every item changed, all the same way: the outcome is certain
        return 1.0 if margin > 0 else 0.0
    return _NORMAL.cdf(margin / math.sqrt(spread))


def smallest_detectable_drop(n: int, churn: float, alpha: float, power: float = POWER,
                             ceiling: float = 1.0) -> float | None:
    """The smallest drop, at most `ceiling`, that `paired_power` detects with at least `power` on n items; None
    when no such drop exists (too few items, or a ceiling so low that no possible drop is detectable).

    The power is not monotone near zero (a tiny drop adds almost no discordant pairs), so the first crossing is
    found on a grid of steps of 0.001 and refined by bisection.
    """
    previous = 0.0
    for step in range(1, _DROP_GRID + 1):
        drop = min(step / _DROP_GRID, ceiling)
        if paired_power(drop, n, churn, alpha) >= power:
            low, high = previous, drop
            for _ in range(40):
                middle = (low + high) / 2
                low, high = (low, middle) if paired_power(middle, n, churn, alpha) >= power else (middle, high)
            return high
        if drop >= ceiling:
            return None
        previous = drop
    return None


def items_to_detect(drop: float, churn: float, alpha: float, power: float = POWER) -> int:
    """How many paired items detect `drop` with `power` at the same churn share (Connor 1987):

        n = ((z(1 - alpha/2) * sqrt(psi) + z(power) * sqrt(psi - drop^2)) / drop)^2,  psi = churn + drop

    Example:
        >>> items_to_detect(0.1, 0.1, 0.05)
        155
    """
    discordant = churn + drop
    needed = (_NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(discordant)
              + _NORMAL.inv_cdf(power) * math.sqrt(max(0.0, discordant - drop * drop))) / drop
    return math.ceil(needed * needed)


def describe_change(drop: float) -> str:
    """A difference of rates in plain words: 'dropped by 12.5 points' (a drop is positive)."""
    if drop == 0:
        return "did not change"
    return f"{'dropped' if drop > 0 else 'rose'} by {abs(drop) * 100:.1f} points"
