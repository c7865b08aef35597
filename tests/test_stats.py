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


def test_corrected_difference_is_that_of_the_corrected_rates_shown() -> None:
    """98 of 100 judged refusals with a judge that finds 90% of them reads as 100%, not 109%: the difference
    to 88 of 100 is 100% minus 97.8%, not the observed 10 points divided by 0.9."""
    base, finetune = [True] * 98 + [False] * 2, [True] * 88 + [False] * 12
    judge_error = stats.JudgeError(true_positive=900, false_negative=100, true_negative=1000, false_positive=0)
    value, ci = stats.corrected_difference(base, finetune, judge_error)
    rates = [stats.corrected_rate(k, 100, judge_error)[0] for k in (98, 88)]
    assert rates[0] == 1.0 and value == pytest.approx(rates[1] - rates[0]) == pytest.approx(0.88 / 0.9 - 1.0)
    assert ci[0] < value < ci[1] <= 0


def test_a_paired_interval_without_discordant_pairs_is_not_a_point() -> None:
    """96 items refused by both: the bootstrap's interval was (0, 0), claiming a precision 96 items do not have.
    The paired Jeffreys interval spans about two points either way (measured: -2.2 to 2.3)."""
    same = [True] * 90 + [False] * 6
    low, high = stats.paired_difference_ci(same, same)
    assert -0.06 < low < -0.005 and 0.005 < high < 0.06 and low == pytest.approx(-high, abs=0.01)
    value, ci = stats.corrected_difference(same, same, stats.JudgeError(900, 100, 1000, 0))
    assert value == 0.0 and ci[0] < -0.005 and ci[1] > 0.005


def test_a_paired_interval_holds_the_observed_difference_and_narrows_with_items() -> None:
    for n in (10, 100, 1000):
        base, finetune = [True] * n, [True] * (n // 2) + [False] * (n - n // 2)
        low, high = stats.paired_difference_ci(base, finetune)
        assert low <= -0.5 <= high
    wide = stats.paired_difference_ci([True] * 20, [True] * 10 + [False] * 10)
    narrow = stats.paired_difference_ci([True] * 2000, [True] * 1000 + [False] * 1000)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5
    assert stats.paired_difference_ci([True] * 10, [False] * 10)[0] == -1.0  # all lost: the interval reaches it


def test_smallest_detectable_drop_matches_hand_computation() -> None:
    # churn 0, so psi = drop and the power condition reads sqrt(n * drop) = z(0.975) + z(0.8) * sqrt(1 - drop);
    # by hand for n = 100: 0.0765 gives 2.7659 < 2.7687, 0.0767 gives 2.7695 > 2.7687
    assert stats.smallest_detectable_drop(100, 0.0, 0.05) == pytest.approx(0.0766, abs=2e-4)
    # churn 0.1, n = 96: by hand 0.137 gives 1.342 < 1.346, 0.138 gives 1.352 > 1.350
    assert stats.smallest_detectable_drop(96, 0.1, 0.05) == pytest.approx(0.1375, abs=1e-3)
    # Connor's sample size for drop 0.1, churn 0.1: ((1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.19)) / 0.1)^2 = 154.6
    assert stats.items_to_detect(0.1, 0.1, 0.05) == 155
    assert stats.paired_power(0.1, 155, 0.1, 0.05) >= 0.8 > stats.paired_power(0.1, 154, 0.1, 0.05)


def test_smallest_detectable_drop_grows_with_churn_and_alpha_and_has_a_ceiling() -> None:
    assert stats.smallest_detectable_drop(100, 0.2, 0.05) > stats.smallest_detectable_drop(100, 0.0, 0.05)
    assert stats.smallest_detectable_drop(100, 0.0, 0.01) > stats.smallest_detectable_drop(100, 0.0, 0.05)
    assert stats.smallest_detectable_drop(400, 0.0, 0.05) < stats.smallest_detectable_drop(100, 0.0, 0.05)
    assert stats.smallest_detectable_drop(100, 0.0, 0.05, ceiling=0.05) is None  # the base refuses only 5%
    assert stats.smallest_detectable_drop(2, 0.5, 0.05, ceiling=0.5) is None  # two items resolve nothing


@pytest.mark.parametrize(("n", "churn"), [(200, 0.1), (400, 0.2)])
def test_smallest_detectable_drop_has_power_in_simulation(n: int, churn: float) -> None:
    """Paired items where `churn` of them change half each way and `drop` of them lose refusal: the exact McNemar
    test the audit reports finds the drop about 80% of the time (a little less: the exact test is conservative)."""
    import random

    drop = stats.smallest_detectable_drop(n, churn, 0.05)
    assert drop is not None
    rng, found, reps = random.Random(7), 0, 3000
    for _ in range(reps):
        draws = [rng.random() for _ in range(n)]
        only_base = sum(u < drop + churn / 2 for u in draws)
        only_finetune = sum(drop + churn / 2 <= u < drop + churn for u in draws)
        found += stats.mcnemar_exact(only_base, only_finetune) < 0.05
    assert 0.74 <= found / reps <= 0.84


def test_changes_of_rates_read_in_points() -> None:
    assert stats.describe_change(0.896) == "dropped by 89.6 points"
    assert stats.describe_change(-0.05) == "rose by 5.0 points"
    assert stats.describe_change(0.0) == "did not change"
