"""Study statistics against values computed by hand (t interval, paired t-test, paired bootstrap)."""

import math

import numpy as np
import pytest

from alpaca_cot.evaluation.stats import bootstrap_interval, paired_bootstrap, paired_t, t_interval


def test_t_interval_known_values():
    # [1, 2, 3]: mean 2, sd 1, standard error 1/sqrt(3); t(0.975, 2 df) = 4.302653 (t table)
    mean, low, high = t_interval([1, 2, 3])
    half = 4.302653 / math.sqrt(3)
    assert mean == 2 and low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert t_interval([0.5]) == (0.5, None, None)  # one seed: a mean, no interval


def test_paired_t_known_values():
    # differences 1, 1, 2, 1: mean 1.25, sd 0.5, t = 1.25 / (0.5 / 2) = 5 with 3 df: p = 0.015392 (two-sided)
    diff, p = paired_t([1, 2, 3, 4], [0, 1, 1, 3])
    assert diff == 1.25 and p == pytest.approx(0.015392, abs=1e-6)
    assert paired_t([1, 2], [1, 2]) == (0.0, 1.0)  # identical runs
    assert paired_t([2, 3], [1, 2]) == (1.0, 0.0)  # a constant difference has no variance
    assert paired_t([1], [0])[1] is None  # one pair: no test


def test_paired_bootstrap_matches_the_normal_approximation():
    # One seed, 400 items: the cell is right where the reference is wrong on 60 items and wrong
    # where it is right on 30. The mean difference 30/400 has standard error
    # sqrt((90/400 - 0.075^2) / 400) = 0.02342, so z = 3.20 and p = 0.0014 (normal approximation).
    ref = np.zeros(400)
    cell = np.zeros(400)
    cell[:60] = 1
    ref[60:90] = 1
    result = paired_bootstrap([cell], [ref])
    se = math.sqrt((90 / 400 - 0.075 ** 2) / 400)
    assert result["diff"] == pytest.approx(0.075)
    assert result["low"] == pytest.approx(0.075 - 1.96 * se, abs=0.006)
    assert result["high"] == pytest.approx(0.075 + 1.96 * se, abs=0.006)
    assert 0.0002 < result["p"] < 0.004
    # no difference at all: p = 1; a difference on every item: the smallest p the resamples allow
    assert paired_bootstrap([cell], [cell])["p"] == 1.0
    assert paired_bootstrap([np.ones(50)], [np.zeros(50)])["p"] == pytest.approx(1 / 10001)


def test_bootstrap_over_seeds_and_items():
    scores = [[1, 0, 1, 1, None], [1, 1, 0, 1, 1]]  # the None item is dropped from every seed
    mean, low, high = bootstrap_interval(scores)
    assert mean == pytest.approx(6 / 8) and 0 <= low < mean < high <= 1
    # an untuned model scored once is paired with every seed of the other cell
    one = paired_bootstrap([[1, 1, 1, 1]], [[1, 0, 1, 0], [0, 0, 1, 1]])
    assert one["diff"] == pytest.approx(0.5) and one["seeds"] == 2
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([[1, 0]], [[1, 0, 1]])
