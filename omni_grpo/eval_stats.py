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
  resampling *questions* with replacement so both models' scores of a question stay together
  (`scipy.stats.bootstrap` of the per-question differences, `method="percentile"`); 10,000 resamples from
  `numpy.random.default_rng(seed)` (seed 0 by default), so an interval is reproducible and depends only on
  its own data and seed.
- `mcnemar_exact(b, c)`: McNemar's exact test (McNemar 1947; the conditional binomial form, Fagerland,
  Lydersen & Laake 2013): with b questions where A beats B and c where B beats A, the two-sided exact
  binomial test of b successes in b + c trials at p = 1/2 (`scipy.stats.binomtest`), i.e.
  p = min(1, 2 · P[X ≤ min(b, c)]); ties (both right, both wrong) carry no information. With K > 1
  "beats" compares the per-question means, which makes it the sign test on per-question differences,
  McNemar's test being its 0/1 special case. Counts may be Python or numpy integers.

The special functions (the t quantile, the binomial tail, the bootstrap) are SciPy's (`scipy.stats`);
the Wilson interval is closed-form algebra on the normal quantile.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from scipy import stats

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
    return float(stats.t.ppf(q, df))


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


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a − b), resampling the question pairs with replacement."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty sequences")
    d = x - y
    if d.size == 1 or np.all(d == d[0]):  # every resample has the same mean
        return float(d[0]), float(d[0])
    result = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=resamples,
        batch=max(1, _BOOTSTRAP_CHUNK // d.size),
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c (the reverse)."""
    try:
        b, c = operator.index(b), operator.index(c)
    except TypeError:
        raise ValueError(f"mcnemar_exact needs integer counts, got b={b!r}, c={c!r}") from None
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
