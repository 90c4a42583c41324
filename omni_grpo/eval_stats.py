"""Pure statistics for evaluation reports: intervals for accuracies and for a paired difference, McNemar's test.

The unit of every statistic is the *question*: with K completions per question a question's score is its
pass@1 estimate, the mean of its K scores, and questions are the independent draws (Miller 2024, "Adding
Error Bars to Evals: A Statistical Approach to Language Model Evaluations", arXiv:2411.00640, §2–3).

- `question_interval(values)`: a 95 % interval for the mean of per-question scores.
  * Every value 0 or 1 (greedy accuracy, a 0/1 format reward, or K samples that all agree per question):
    the **Wilson score interval** (Wilson 1927; Brown, Cai & DasGupta 2001, "Interval Estimation for a
    Binomial Proportion"), which keeps its coverage near 0 and 1 and for small n, where the normal
    ("Wald") interval collapses to zero width.
  * Otherwise (per-question means of K > 1 samples, graded rewards): the **Student-t interval** over
    questions, mean ± t(0.975, n − 1) · s / √n (s the sample standard deviation), clipped to [0, 1] when
    every score lies in it. It is the clustered standard error of Miller 2024 with a small-sample t
    quantile; when every question has the same score it has zero width.
- `paired_bootstrap(a, b)`: the **percentile bootstrap** (Efron & Tibshirani 1993, ch. 13) of mean(a − b),
  resampling *questions* with replacement so both models' scores of a question stay together; 10,000
  resamples from `numpy.random.default_rng(seed)` (seed 0 by default), so an interval is reproducible and
  depends only on its own data and seed.
- `mcnemar_exact(b, c)`: McNemar's exact test (McNemar 1947; the conditional binomial form, Fagerland,
  Lydersen & Laake 2013): with b questions where A beats B and c where B beats A, two-sided
  p = min(1, 2 · P[X ≤ min(b, c)]) for X ~ Binomial(b + c, 1/2); ties (both right, both wrong) carry no
  information. With K > 1 "beats" compares the per-question means, which makes it the sign test on
  per-question differences, McNemar's test being its 0/1 special case.

Pure Python and numpy (no scipy): the t quantile inverts the t CDF, written with the regularized incomplete
beta function (continued fraction, Press et al., "Numerical Recipes", 3rd ed., §6.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CHUNK = 4_000_000  # resampled values held in memory at once


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 / 1 there, not a rounding error
    return low, 1.0 if successes == n else min(1.0, centre + half)


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t distribution with df degrees of freedom (0.5 < q < 1)."""
    if not 0.5 < q < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < q < 1 and df > 0, got q={q}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """mean ± t(level, n − 1) · s / √n; a single value gives (value, value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean
    half = t_quantile(0.5 + level / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean - half, mean + half


def question_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, str]:
    """(low, high, method) for the mean of per-question scores: "wilson" when all are 0/1, else "t"."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("question_interval needs at least one value")
    if np.all((x == 0.0) | (x == 1.0)):
        return (*wilson_interval(int(x.sum()), int(x.size), level), "wilson")
    low, high = t_interval(x, level)
    if x.min() >= 0.0 and x.max() <= 1.0:  # rates: the mean cannot leave [0, 1]
        low, high = max(low, 0.0), min(high, 1.0)
    return low, high, "t"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a − b), resampling the question pairs with replacement."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty sequences")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK // d.size)
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(chunk, resamples - done), d.size))].mean(axis=1)
                            for done in range(0, resamples, chunk)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c (the reverse)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _t_cdf(t: float, df: float) -> float:
    """P[T <= t] for t >= 0."""
    return 1.0 - 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return tiny if abs(v) < tiny else v

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h
