"""The statistics a study reports, standard library only: a seed-level mean with its t interval, and the exact
McNemar test between two arms on the same evaluation examples (paired by seed, then pooled)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Student's t at 0.975 (a two-sided 95 % interval) by degrees of freedom; beyond 30, the normal quantile's 1.960
# is within 0.02 of it.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and the half-width of its 95 % t interval (None with fewer than two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    df = len(values) - 1
    return mean, T_975.get(df, 1.960) * statistics.stdev(values) / math.sqrt(len(values))


def discordant(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """On paired examples scored 1 (right) or 0 (wrong) by two runs: (right in a only, right in b only)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs score different numbers of examples ({len(a)} and {len(b)})")
    if any(x not in (0, 1) for x in (*a, *b)):
        raise ValueError("McNemar's test pairs right/wrong outcomes: scores must be 0 or 1 (accuracy)")
    return sum(1 for x, y in zip(a, b) if x > y), sum(1 for x, y in zip(a, b) if y > x)


def mcnemar(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """The exact (binomial) McNemar test of arm a against arm b, pooled over ``pairs`` (one pair of per-example
    scores per seed): the discordant counts summed over seeds, and the two-sided p value of as uneven a split
    under equal chances, ``min(1, 2 * P[X <= min(n_a, n_b)])`` with X ~ Binomial(n_a + n_b, 1/2)."""
    only_a = only_b = 0
    for a, b in pairs:
        x, y = discordant(a, b)
        only_a, only_b = only_a + x, only_b + y
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return {"a_only": only_a, "b_only": only_b, "p": min(1.0, 2 * tail)}
