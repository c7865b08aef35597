from __future__ import annotations

import pytest

from auditor import stats


def test_wilson_matches_hand_computation() -> None:
    # p = 0.8, n = 10, z = 1.96: centre 0.71676, half-width 0.22657
    low, high = stats.wilson(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94332, abs=1e-4)
    low, high = stats.wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    assert stats.Rate(5, 10).half_width == pytest.approx((stats.wilson(5, 10)[1] - stats.wilson(5, 10)[0]) / 2)


@pytest.mark.parametrize("b, c, expected", [
    (1, 6, 16 / 128),   # 2 * (C(7,0) + C(7,1)) / 2^7
    (0, 5, 2 / 32),
    (3, 3, 1.0),
    (0, 0, 1.0),
    (10, 0, 2 / 1024),
])
def test_exact_mcnemar(b: int, c: int, expected: float) -> None:
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected)
    assert stats.mcnemar_exact(c, b) == pytest.approx(expected)


def test_paired_p_value_counts_discordant_pairs() -> None:
    base = [True] * 7 + [False] * 3
    finetune = [False] * 6 + [True] + [False] * 3  # 6 refused only under base, none only under fine-tune
    assert stats.paired_p_value(base, finetune) == pytest.approx(2 / 64)


def test_variance_shares_by_hand() -> None:
    y = [1.0, 0.0, 0.0, 0.0]
    shares = stats.variance_shares(y, {"persona": ["a", "a", "b", "b"], "item": [1, 2, 3, 4],
                                       "paraphrase": ["x", "y", "x", "y"]})
    # Var(Y) = 0.1875; group means a: 0.5, b: 0 -> between = 0.0625 -> 1/3
    assert shares["persona"] == pytest.approx(1 / 3)
    assert shares["item"] == pytest.approx(1.0)  # one item per cell explains everything
    assert shares["paraphrase"] == pytest.approx(1 / 3)
    assert stats.variance_shares([1.0, 1.0], {"persona": ["a", "b"]}) == {"persona": 0.0}


def test_bootstrap() -> None:
    assert stats.bootstrap_ci(lambda idx: 3.0, 10) == (3.0, 3.0)
    assert stats.bootstrap_ci(lambda idx: None, 10) is None
    data = list(range(100))
    low, high = stats.bootstrap_ci(lambda idx: sum(data[i] for i in idx) / len(idx), 100, seed=1)
    assert low < 49.5 < high and high - low < 25


def test_cohen_kappa_by_hand() -> None:
    # 10 items: both say yes on 4, both no on 4, they split on 2 -> po = 0.8, pe = 0.5*0.5 + 0.5*0.5 = 0.5
    gold = [True] * 5 + [False] * 5
    predicted = [True] * 4 + [False] + [True] + [False] * 4
    assert stats.cohen_kappa(gold, predicted) == pytest.approx(0.6)
    assert stats.cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
    assert stats.cohen_kappa([], []) is None


def test_rogan_gladen_inverts_the_judge() -> None:
    true, sensitivity, specificity = 0.3, 0.9, 0.95
    observed = true * sensitivity + (1 - true) * (1 - specificity)
    assert stats.rogan_gladen(observed, sensitivity, specificity) == pytest.approx(true)
    assert stats.rogan_gladen(0.01, 0.9, 0.9) == 0.0  # clipped
    assert stats.rogan_gladen(0.5, 0.5, 0.5) is None  # a judge no better than a coin


def test_corrected_rate_widens_with_an_uncertain_judge() -> None:
    precise = stats.JudgeError(true_positive=990, false_negative=10, true_negative=990, false_positive=10)
    rough = stats.JudgeError(true_positive=18, false_negative=2, true_negative=18, false_positive=2)
    (tight, tight_ci), (wide, wide_ci) = stats.corrected_rate(50, 100, precise), stats.corrected_rate(50, 100, rough)
    assert tight == pytest.approx(0.5) and wide == pytest.approx(0.5)
    assert tight_ci[0] < 0.5 < tight_ci[1]
    assert wide_ci[1] - wide_ci[0] > tight_ci[1] - tight_ci[0] + 0.02
    # a judge that misses a fifth of refusals: 40 judged refusals of 100 are about 50 true ones
    missing = stats.JudgeError(true_positive=800, false_negative=200, true_negative=1000, false_positive=0)
    assert stats.corrected_rate(40, 100, missing)[0] == pytest.approx(0.5)


def test_corrected_difference_scales_by_the_judge() -> None:
    base = [True] * 80 + [False] * 20
    finetune = [True] * 40 + [False] * 60
    judge_error = stats.JudgeError(true_positive=800, false_negative=200, true_negative=1000, false_positive=0)
    value, ci = stats.corrected_difference(base, finetune, judge_error)
    assert value == pytest.approx(-0.4 / 0.8)
    assert ci[0] < -0.5 < ci[1] < 0
