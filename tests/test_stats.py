"""The study's statistics against hand-worked values (scripts/sweeps/stats.py)."""
import math

import pytest

from sweeps.stats import mcnemar, t_interval


def test_t_interval_of_three_seeds():
    # mean 0.8, sample std 0.02 exactly (values 0.78, 0.80, 0.82): half-width t(2) * 0.02 / sqrt(3)
    mean, half = t_interval([0.78, 0.80, 0.82])
    assert mean == pytest.approx(0.8, abs=1e-15) and half == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-12)
    assert t_interval([0.7]) == (0.7, None)


def test_mcnemar_pools_the_discordant_pairs_of_every_seed():
    """Seed 1: a alone right on 3 examples, b alone on 0; seed 2: 2 and 1. Pooled 5 against 1 of 6 discordant:
    two-sided exact p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14 / 64."""
    seed1 = ([1, 1, 1, 0, 1], [0, 0, 0, 0, 1])
    seed2 = ([1, 1, 0, 0], [0, 0, 1, 0])
    assert mcnemar([seed1, seed2]) == {"a_only": 5, "b_only": 1, "p": 14 / 64}
    assert mcnemar([([1, 0], [1, 0])])["p"] == 1.0  # no discordant pair: no evidence either way


def test_mcnemar_needs_paired_right_or_wrong_outcomes():
    with pytest.raises(ValueError, match="different numbers"):
        mcnemar([([1, 0], [1])])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        mcnemar([([0.5], [1])])
