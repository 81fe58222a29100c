"""Verdicts over many seeds of a reinforcement-learning comparison: the interquartile mean of how
soon runs solve, and an exact paired permutation test over seeds (unsolved runs tie at the worst)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from twinbench.experiments.verdicts import LEVEL, Estimate

BOOTSTRAP_SAMPLES = 4000  # the per-arm summaries' intervals; no verdict rests on a bootstrap
EXACT_PAIRS = 12  # up to this many pairs a permutation test takes every one of the 2^n swaps
SAMPLED_SWAPS = 4096  # beyond, a seeded sample of swaps


def iqm(values: ArrayLike) -> float:
    """The interquartile mean: the mean of the middle half of the sorted values (the 25% at
    each end trimmed, as scipy's trim_mean), robust to the few seeds that an RL result always
    has at either extreme (Agarwal et al., 2021). Unsolved runs enter as infinity: censored at
    the top, they make the IQM infinite only when they reach into the middle half."""
    v = np.sort(np.asarray(values, float))
    if not len(v):
        raise ValueError("iqm needs at least one value")
    cut = int(len(v) * 0.25)
    return float(v[cut : len(v) - cut].mean())


def bootstrap_interval(
    values: ArrayLike,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic, low, high): a percentile bootstrap over the values (seeds, one per run), for
    one arm's summary (verdicts between arms rest on paired tests, not on this).
    The quantiles take sample values, never interpolate, so infinite samples stay meaningful."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    samples = np.array(
        [statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(BOOTSTRAP_SAMPLES)]
    )
    alpha = (1 - level) / 2
    low = float(np.quantile(samples, alpha, method="lower"))
    high = float(np.quantile(samples, 1 - alpha, method="higher"))
    return float(statistic(v)), low, high


def _swaps(n: int, seed: int) -> tuple[np.ndarray, bool]:
    """Which pairs trade sides, one row per rearrangement, the first row none: every one of the
    2^n (exact), or a seeded sample of them beyond EXACT_PAIRS."""
    if n <= EXACT_PAIRS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        return bits.astype(bool), True
    rows = np.random.default_rng(seed).random((SAMPLED_SWAPS, n)) < 0.5
    rows[0] = False
    return rows, False


def _permutation(a: np.ndarray, b: np.ndarray, swaps: np.ndarray) -> tuple[np.ndarray, ...]:
    """(p, smallest attainable p, statistic) of the paired permutation test for each row of
    a and b (shape (..., n)). The statistic is the sum over pairs of the first's rank minus the
    second's, ranked among all 2n figures: robust to the extreme seeds an RL result always has,
    unsolved runs (inf) tie at the top (censored at the one budget both sides had), and a swap
    only flips the sign of its pair's difference, so the figures are ranked once."""
    n = a.shape[-1]
    pooled = np.concatenate([a, b], axis=-1)
    # Mid-ranks, ties (unsolved runs) sharing the mean of their places, for every row at once.
    below = (pooled[..., None, :] < pooled[..., :, None]).sum(axis=-1)
    ties = (pooled[..., None, :] == pooled[..., :, None]).sum(axis=-1)
    ranks = below + (ties + 1) / 2
    differences = ranks[..., :n] - ranks[..., n:]
    statistic = differences @ (1 - 2 * swaps.astype(float)).T
    size = np.abs(statistic)
    tolerance = 1e-9 * np.maximum(1.0, size.max(axis=-1, keepdims=True))
    p = np.mean(size >= size[..., :1] - tolerance, axis=-1)
    smallest = np.mean(size >= size.max(axis=-1, keepdims=True) - tolerance, axis=-1)
    return p, smallest, statistic[..., 0]


def paired_iqm_ratio(
    first: Sequence[float], second: Sequence[float], level: float = LEVEL, seed: int = 0
) -> Estimate:
    """IQM of first over second (e.g. episodes to solve, inf for a run that never solved),
    seeds paired, judged by a paired permutation test: under no difference, each seed's two
    runs could have come from either side, so all 2^n swaps (exact up to EXACT_PAIRS seeds)
    are equally likely. Its smallest attainable p is 2 / 2^n: five seeds (1/16) can never
    reach 5%, and the method says so. The interval inverts the same test (every ratio c for
    which the first and c times the second pass as exchangeable); where an infinite IQM (too
    many unsolved runs) leaves no ratio, the estimate says so and has no interval, but its
    test still counts."""
    a, b = np.asarray(first, float), np.asarray(second, float)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired_iqm_ratio needs the same number (at least one) of runs per side")
    n = len(a)
    swaps, exact = _swaps(n, seed)
    p, smallest, statistic = (float(x) for x in _permutation(a, b, swaps))
    how = f"all {len(swaps)} swaps" if exact else f"{len(swaps)} sampled swaps of {2**n}"
    method = f"paired permutation test over {n} seeds ({how}) on ranks"
    direction = int(np.sign(round(statistic, 9)))
    point_a, point_b = iqm(a), iqm(b)
    if not (math.isfinite(point_a) and math.isfinite(point_b)) or point_b <= 0:
        return Estimate(
            math.nan, 0.0, math.inf, p, n, method + "; an IQM is unsolved: no ratio",
            min_p=smallest, direction=direction,
        )  # fmt: skip
    low, high = _inverted_interval(a, b, swaps, 1 - level)
    return Estimate(point_a / point_b, low, high, p, n, method, min_p=smallest, direction=direction)


def _inverted_interval(
    a: np.ndarray, b: np.ndarray, swaps: np.ndarray, alpha: float
) -> tuple[float, float]:
    """The ratios c at which the test keeps (a, c b) as exchangeable. The test's p changes only
    where c crosses a ratio a_i / b_j, so it is taken at each of those and once between each
    two of them: probe 2k lies below cut k, probe 2k + 1 on it."""
    finite_a, finite_b = a[np.isfinite(a)], b[np.isfinite(b)]
    cuts = np.unique((finite_a[:, None] / finite_b[None, :]).ravel())
    if not len(cuts):
        return 0.0, math.inf
    below = np.concatenate([[cuts[0] / 2], np.sqrt(cuts[1:] * cuts[:-1]), [cuts[-1] * 2]])
    probes = np.empty(2 * len(cuts) + 1)
    probes[0::2], probes[1::2] = below, cuts
    kept = np.zeros(len(probes), bool)
    chunk = max(1, 2_000_000 // (len(swaps) * len(a)))
    for start in range(0, len(probes), chunk):
        c = probes[start : start + chunk, None]
        p, _, _ = _permutation(np.broadcast_to(a, (len(c), len(a))), c * b, swaps)
        kept[start : start + chunk] = p > alpha
    if not kept.any():
        return 0.0, math.inf
    inside = np.flatnonzero(kept)
    first, last = int(inside[0]), int(inside[-1])
    low = 0.0 if first == 0 else float(cuts[(first - 1) // 2])
    high = math.inf if last == len(probes) - 1 else float(cuts[last // 2])
    return low, high
