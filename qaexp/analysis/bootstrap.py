"""Bootstrap statistics over questions: an interval for a mean score, and the paired test of
two runs on the same questions (their score differences), with the flip counts.

The bootstrap draws n of the n questions with replacement, B times. It is computed exactly,
but without drawing every question: a resample's sum depends only on how many draws hit
each distinct value. The frequent values (0 and 1 for EM and F1, common partial F1s such as
0.5 or 0.67; 0, +1 and -1 for a difference of two runs) are counted with one multinomial
draw per resample, and only the draws that hit the remaining values are drawn one by one. The resampled means have exactly
the distribution of the textbook loop (`values[rng.integers(0, n, n)].mean()`, B times), at
a fraction of the cost: 10,000 resamples of the 10,570 SQuAD dev questions take well under
a second (benchmarks/bench_analysis.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000  # the paired test's resamples
INTERVAL_RESAMPLES = 2_000  # per-slice intervals: many slices, each needs less precision
LEVEL = 0.95
SEED = 0  # fixed: the same answers give the same report
# A value held by at least this many questions is counted by the multinomial draw (one
# binomial draw costs about as much as drawing ten questions one by one), up to this many.
FREQUENT_COUNT = 16
MAX_FREQUENT_VALUES = 32


def resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap means of `values` (see the module doc for the method)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return np.full(resamples, np.nan)
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    frequent = np.argsort(-counts, kind="stable")[:MAX_FREQUENT_VALUES]
    frequent = frequent[counts[frequent] >= min(FREQUENT_COUNT, counts.max())]
    rare = np.ones(len(distinct), dtype=bool)
    rare[frequent] = False
    rare_values = values[rare[inverse]]
    probabilities = np.append(counts[frequent], len(rare_values)) / n
    hits = rng.multinomial(n, probabilities / probabilities.sum(), size=resamples)
    sums = hits[:, :-1] @ distinct[frequent]
    rare_hits = hits[:, -1]
    total = int(rare_hits.sum())
    if total:
        drawn = rare_values[rng.integers(0, len(rare_values), total, dtype=np.int32)]
        ends = np.cumsum(rare_hits)
        nonempty = rare_hits > 0
        sums[nonempty] += np.add.reduceat(drawn, (ends - rare_hits)[nonempty])
    return sums / n


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile bootstrap interval (same units as the mean)."""

    mean: float
    low: float
    high: float


def interval(
    values: np.ndarray,
    resamples: int = INTERVAL_RESAMPLES,
    rng: np.random.Generator | None = None,
    scale: float = 100.0,
) -> Interval:
    """Mean of `values` x `scale` with its 95% percentile bootstrap interval."""
    rng = rng if rng is not None else np.random.default_rng(SEED)
    means = resampled_means(values, resamples, rng) * scale
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
    return Interval(float(np.mean(values) * scale) if len(values) else np.nan, low, high)


@dataclass(frozen=True)
class Flips:
    """How two runs' answers to the same questions differ, question by question."""

    right_to_wrong: int  # EM 1 in run A, 0 in run B
    wrong_to_right: int  # EM 0 in run A, 1 in run B
    both_right: int
    both_wrong: int
    f1_gained: float  # sum of F1 increases from A to B (in F1 points, as the metrics)
    f1_lost: float  # sum of F1 decreases (positive)
    f1_changed: int  # questions whose F1 differs


def flips(exact_a: np.ndarray, exact_b: np.ndarray, f1_a: np.ndarray, f1_b: np.ndarray) -> Flips:
    """Flip counts from run A to run B (EM as 0/1, F1 as 0-1 per question)."""
    a, b = np.asarray(exact_a) > 0, np.asarray(exact_b) > 0
    change = np.asarray(f1_b, dtype=np.float64) - np.asarray(f1_a, dtype=np.float64)
    n = max(len(change), 1)
    return Flips(
        right_to_wrong=int((a & ~b).sum()),
        wrong_to_right=int((~a & b).sum()),
        both_right=int((a & b).sum()),
        both_wrong=int((~a & ~b).sum()),
        f1_gained=float(change[change > 0].sum() * 100 / n),
        f1_lost=float(-change[change < 0].sum() * 100 / n) + 0.0,  # never -0.0
        f1_changed=int((change != 0).sum()),
    )


@dataclass(frozen=True)
class PairedTest:
    """Run B minus run A on the same questions: the mean difference (points), its 95%
    bootstrap interval, and the two-sided bootstrap p-value of "no difference"."""

    difference: float
    low: float
    high: float
    p: float
    resamples: int


def paired_test(
    score_a: np.ndarray,
    score_b: np.ndarray,
    resamples: int = RESAMPLES,
    rng: np.random.Generator | None = None,
    scale: float = 100.0,
) -> PairedTest:
    """Paired bootstrap over questions of mean(score_b - score_a).

    The p-value is that of the shifted bootstrap (Efron & Tibshirani 1993, 16.4): the share
    of resampled differences that lie at least as far from the observed one as the observed
    one lies from zero, (1 + count) / (1 + resamples)."""
    rng = rng if rng is not None else np.random.default_rng(SEED)
    d = np.asarray(score_b, dtype=np.float64) - np.asarray(score_a, dtype=np.float64)
    if len(d) == 0:
        return PairedTest(np.nan, np.nan, np.nan, np.nan, resamples)
    observed = float(d.mean())
    means = resampled_means(d, resamples, rng)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    far = int(np.count_nonzero(np.abs(means - observed) >= abs(observed)))
    p = (1 + far) / (1 + resamples)
    return PairedTest(observed * scale, low * scale, high * scale, p, resamples)
