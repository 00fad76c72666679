"""Seed-to-seed statistics of a comparison: mean ± sample standard deviation, and Welch's
t-test for the difference between two settings' means (unequal variances, unequal n).

The p-value comes from scipy when it is installed; otherwise from the Student t distribution
computed here through the regularized incomplete beta function (its continued fraction,
evaluated to a relative precision of 1e-12; it agrees with scipy to ~1e-10, see the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05  # a difference with p below this is called larger than the seed-to-seed noise


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1 in the denominator; None when n < 2), n."""

    mean: float | None
    sd: float | None
    n: int


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if n == 0:
        return Spread(None, None, 0)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(mean, sd, n)


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float  # two-sided

    @property
    def beyond_noise(self) -> bool:
        return self.p < ALPHA


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's two-sided t-test of mean(a) == mean(b); None when a side has fewer than 2
    values (no estimate of its noise)."""
    sa, sb = spread(a), spread(b)
    if sa.n < 2 or sb.n < 2:
        return None
    va, vb = sa.sd**2 / sa.n, sb.sd**2 / sb.n
    difference = sa.mean - sb.mean
    if va + vb == 0:  # no spread at all: any difference is beyond it
        return WelchResult(
            difference,
            math.copysign(math.inf, difference),
            sa.n + sb.n - 2,
            1.0 if difference == 0 else 0.0,
        )
    t = difference / math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom.
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return WelchResult(difference, t, df, student_t_two_sided_p(t, df))


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return _t_two_sided_p(t, df)
    return float(2 * student_t.sf(abs(t), df))


def _t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) = I_x(df/2, 1/2) with x = df / (df + t^2) (Abramowitz & Stegun 26.7.1
    and 26.5.27)."""
    return regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), from its continued fraction (A&S 26.5.8) evaluated with the modified Lentz
    method; for x beyond the mean (a+1)/(a+b+2) through I_x(a,b) = 1 - I_{1-x}(b,a), where
    the fraction converges quickly."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    return math.exp(log_front) / a * _beta_continued_fraction(a, b, x)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))) with A&S 26.5.8's coefficients d_m."""
    tiny, eps = 1e-300, 1e-12
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for coefficient in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # d_{2m+1}
        ):
            d = 1.0 + coefficient * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coefficient / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result
