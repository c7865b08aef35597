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
