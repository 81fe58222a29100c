"""Verdicts with stated uncertainty: paired ratios, exact tests, Holm's correction, three outcomes.

Every comparison twinbench prints goes through here (compare, the benchmarks, sweeps, the DQN
comparison), so one set of rules decides when a difference is named (docs/verdicts.md):
- a ratio is always first over second, never winner over loser;
- the paired unit is the repeat (a process pair, a seed, a pair of exports), never a window,
  a request or a test image: speed is a t test on per-repeat log ratios; accuracy a t test on
  the per-seed differences (each seed's accuracy already carries its per-image noise); DQN an
  exact paired permutation test over seeds; figures that failed, diverged or never reached a
  target an exact sign test over the pairs whose order is known;
- fewer than two paired units never decide anything;
- lines whose test cannot reach the level (an exact test on a few pairs) stay out of Holm's
  family (Tarone) and say so; the others are corrected together (Holm);
- "equivalent" when the interval lies inside the stated margin (two one-sided tests, each at
  half of 1 - level), which comes before naming a winner; a winner when the Holm-adjusted p is
  under 1 - level; "inconclusive" otherwise;
- "detectable" is the smallest true difference the line would name with 80% power at the level
  Holm asks of it (the noncentral t).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

LEVEL = 0.95
POWER = 0.80  # for the smallest difference a run could have detected
SPEED_MARGIN = 0.05  # "equivalent" speed: the ratio's interval inside [1/1.05, 1.05]
ACCURACY_MARGIN_POINTS = 1.0  # "equivalent" accuracy: the difference inside +-1 point
MIN_PAIRS = 2  # below two paired units nothing is decided: one pair has no spread to judge by


@dataclass
class Estimate:
    """A ratio, first over second, with its interval and what it rests on."""

    ratio: float
    low: float
    high: float
    p_value: float  # two-sided, against no difference
    repeats: int  # the paired units: repeats, seeds, or pairs of exports
    method: str
    # The smallest ratio change (as a fraction, 0.08 = 8%) that this line would have detected
    # with 80% power; None when it cannot be told. decide() states it at the level Holm asks.
    detectable: float | None = None
    # Accuracy also as a difference in points, first minus second, with its interval, and the
    # smallest difference in points the run would have detected.
    difference_points: tuple[float, float, float] | None = None
    detectable_points: float | None = None
    # What a power statement needs: the standard error of the mean log ratio (and of the mean
    # difference in points) and the t distribution's degrees of freedom. None for exact tests.
    log_se: float | None = None
    points_se: float | None = None
    df: float | None = None
    # The smallest p the test can give with these pairs: 0 for a t test, 2 / 2^n for an exact
    # paired test over n pairs (which on a few pairs cannot reach the level at all), 1 for a
    # single pair.
    min_p: float = 0.0
    # Whose figure is larger: +1 first, -1 second, 0 neither. Tests without a ratio to read it
    # from (sign and permutation tests) set it; None: read it from the ratio.
    direction: int | None = None
    # The per-pair values the t test rests on, in pair order (log ratios, or differences in
    # points for accuracy), and for accuracy the points that make a ratio change of 1: what an
    # anytime-valid test (sequential.py) needs when pairs are added until a line is decided.
    pairs: tuple[float, ...] | None = None
    points_scale: float | None = None


def _t(df: float, q: float) -> float:
    return float(scipy_stats.t.ppf(q, df)) if math.isfinite(df) else float(scipy_stats.norm.ppf(q))


def _power(ncp: float, df: float, critical: float) -> float:
    """The chance a two-sided t test with this critical value rejects at this noncentrality."""
    if math.isfinite(df):
        dist = scipy_stats.nct(df, ncp)
        # The far tail is negligible, and scipy returns nan for it at large noncentralities.
        return float(np.nan_to_num(dist.sf(critical)) + np.nan_to_num(dist.cdf(-critical)))
    return float(scipy_stats.norm.sf(critical - ncp) + scipy_stats.norm.cdf(-critical - ncp))


def detectable_effect(se: float, df: float, alpha: float, power: float = POWER) -> float | None:
    """The smallest true effect, on the scale of `se`, that a two-sided t test at `alpha` finds
    with probability `power`: the noncentral t's noncentrality times the standard error.

    (The sum of two central quantiles, t(1 - alpha/2) + t(power), understates it on a few
    pairs: at its effect the power is 73-79% with 2-5 pairs.)"""
    if not (se > 0 and math.isfinite(se)) or not 0 < alpha < 1:
        return None
    return _noncentrality(float(df), alpha, power) * se


@functools.lru_cache(maxsize=1024)
def _noncentrality(df: float, alpha: float, power: float) -> float:
    """The noncentrality at which a two-sided t test at `alpha` rejects with `power`."""
    critical = _t(df, 1 - alpha / 2)
    high = critical + 4.0
    while _power(high, df, critical) < power:
        high *= 2
    return float(optimize.brentq(lambda x: _power(x, df, critical) - power, 0.0, high, xtol=1e-10))


def _from_log_scale(
    center: float, se: float, df: float, repeats: int, method: str, level: float
) -> Estimate:
    if not se > 0 or not math.isfinite(se):
        # Pairs with no spread at all (identical runs): no interval can be stated.
        return Estimate(math.exp(center), 0.0, math.inf, 1.0, repeats, method + "; no spread")
    half = _t(df, 0.5 + level / 2) * se
    statistic = abs(center) / se
    tail = scipy_stats.t.sf(statistic, df) if math.isfinite(df) else scipy_stats.norm.sf(statistic)
    effect = detectable_effect(se, df, 1 - level)
    return Estimate(
        math.exp(center), math.exp(center - half), math.exp(center + half), float(2 * tail),
        repeats, method, math.expm1(effect) if effect is not None else None,
        log_se=se, df=df,
    )  # fmt: skip


def paired_ratio(
    first: Sequence[float],
    second: Sequence[float],
    first_windows: Sequence[Sequence[float]] | None = None,
    second_windows: Sequence[Sequence[float]] | None = None,
    level: float = LEVEL,
) -> Estimate:
    """Ratio of the geometric means of paired positive figures (one pair per repeat or round).

    The interval is a t interval on the per-pair log ratios, with n - 1 degrees of freedom, so
    it carries the run-to-run spread. With windows (each job's steady throughput in equal
    slices), it is never narrower than the spread within the jobs. A single pair still gets an
    interval from its windows, which covers the noise within that run only and says so; it
    decides nothing (drift between two jobs minutes apart is invisible within them).
    """
    a, b = np.asarray(first, float), np.asarray(second, float)
    if len(a) != len(b) or not len(a):
        raise ValueError(
            "paired_ratio needs the same number (at least one) of figures on each side"
        )
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("paired_ratio takes positive figures")
    d = np.log(a) - np.log(b)
    n = len(d)
    within_var: float | None = None
    if first_windows is not None and second_windows is not None:
        per_pair = [
            (_log_mean_var(wa), _log_mean_var(wb))
            for wa, wb in zip(first_windows, second_windows, strict=True)
        ]
        sums = [va + vb for va, vb in per_pair if va is not None and vb is not None]
        if len(sums) == len(per_pair):
            within_var = float(np.mean(sums))
    if n >= MIN_PAIRS:
        between = float(np.var(d, ddof=1))
        variance = max(between, within_var or 0.0) / n
        method = f"paired t on log ratios, {n} pairs"
        out = _from_log_scale(float(d.mean()), math.sqrt(variance), n - 1, n, method, level)
        out.pairs = tuple(float(x) for x in d)
        return out
    if within_var is None or first_windows is None or second_windows is None:
        return Estimate(
            float(math.exp(d[0])), 0.0, math.inf, 1.0, 1, "one pair: no interval", min_p=1.0
        )
    windows = len(first_windows[0]) + len(second_windows[0])
    one = _from_log_scale(
        float(d[0]), math.sqrt(within_var), windows - 2, 1,
        "one repeat: the interval covers the spread within that run only", level,
    )  # fmt: skip
    one.min_p, one.detectable, one.log_se = 1.0, None, None
    return one


def _log_mean_var(windows: Sequence[float]) -> float | None:
    """The variance of the mean of log window throughputs; None with fewer than two windows."""
    w = np.log(np.asarray([x for x in windows if x > 0], float))
    return float(np.var(w, ddof=1) / len(w)) if len(w) >= 2 else None


def accuracy_ratio(
    first_correct: np.ndarray, second_correct: np.ndarray, level: float = LEVEL
) -> Estimate:
    """Accuracy of first over second, from per-image correctness (repeats x test images).

    Rows are repeats, paired by seed; columns are the same test images for both. The unit is
    the seed: each seed's accuracy difference already carries the per-image noise of its two
    models (which of the images each happens to get right), so the interval is a t interval
    on the per-seed differences with n - 1 degrees of freedom, and resampling the images on
    top would count that noise twice (an interval 1.7 times too wide). It speaks of this test
    set. The ratio's interval is the difference's, over the second's mean accuracy.

    One seed is two trained models, not two frameworks: it gets an exact McNemar test and an
    interval over its images, and decides nothing.
    """
    a, b = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if a.shape != b.shape or a.ndim != 2 or not a.size:
        raise ValueError("accuracy_ratio needs two equal repeats x images arrays")
    repeats, images = a.shape
    per_seed = (a.mean(axis=1) - b.mean(axis=1)) * 100
    mean_a, mean_b = float(a.mean()), float(b.mean())
    diff = float(per_seed.mean())
    ratio = mean_a / mean_b if mean_b > 0 else math.inf
    if repeats < MIN_PAIRS:
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        p = scipy_stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        se = float((a[0].astype(float) - b[0]).std(ddof=1)) / math.sqrt(images) * 100
        df: float = images - 1
        method = (
            f"one seed: exact McNemar over {images} test images; two trained models, not two"
            " frameworks: no verdict below two seeds"
        )
        min_p = 1.0
    else:
        se = float(per_seed.std(ddof=1)) / math.sqrt(repeats)
        df = repeats - 1
        p = 2 * float(scipy_stats.t.sf(abs(diff) / se, df)) if se > 0 else 1.0
        method = f"paired t on the per-seed accuracy differences, {repeats} seeds x {images} images"
        min_p = 0.0
    if not se > 0 or mean_b <= 0:
        estimate = Estimate(ratio, 0.0, math.inf, 1.0, repeats, method + "; no spread")
        estimate.difference_points = (diff, diff, diff)
        estimate.min_p = min_p
        return estimate
    half = _t(df, 0.5 + level / 2) * se
    scale = 100 * mean_b  # points -> a change of the ratio
    effect = detectable_effect(se, df, 1 - level)
    return Estimate(
        ratio, 1 + (diff - half) / scale, 1 + (diff + half) / scale, float(p), repeats, method,
        effect / scale if effect is not None and repeats >= MIN_PAIRS else None,
        (diff, diff - half, diff + half),
        effect if repeats >= MIN_PAIRS else None,
        log_se=se / scale if repeats >= MIN_PAIRS else None,
        points_se=se if repeats >= MIN_PAIRS else None, df=df, min_p=min_p,
        pairs=tuple(float(x) for x in per_seed) if repeats >= MIN_PAIRS else None,
        points_scale=scale,
    )  # fmt: skip


# --- figures that may be missing: failed, diverged, never reached ---


def paired_with_failures(
    first: Sequence[float],
    second: Sequence[float],
    first_censored: Sequence[bool] | None = None,
    second_censored: Sequence[bool] | None = None,
    level: float = LEVEL,
) -> Estimate:
    """Paired positive figures where lower or higher is better, some of which are not figures:
    `inf` is the worst (a run that diverged or failed), and a censored figure is a run's end
    that it passed without getting there (a target never reached: the true figure lies beyond).

    With every figure there, this is `paired_ratio`. Otherwise no pair is dropped: an exact
    sign test counts every pair whose order is known (both there: the smaller; one diverged:
    the other; one reached the target before the other's end: it), and says how many were not
    ordered. Its ratio is of the geometric means over the pairs with two finite figures
    (censored ones at their end), for reading only; it has no interval.
    """
    a, b = np.asarray(first, float), np.asarray(second, float)
    n = len(a)
    ca = np.zeros(n, bool) if first_censored is None else np.asarray(first_censored, bool)
    cb = np.zeros(n, bool) if second_censored is None else np.asarray(second_censored, bool)
    if len(b) != n or len(ca) != n or len(cb) != n or not n:
        raise ValueError("paired_with_failures needs the same number of figures on each side")
    if np.any(np.isnan(a)) or np.any(np.isnan(b)) or np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("paired_with_failures takes positive figures or inf")
    if not (ca.any() or cb.any() or np.isinf(a).any() or np.isinf(b).any()):
        return paired_ratio(a.tolist(), b.tolist(), level=level)
    first_lower = first_higher = 0
    for x, y, cx, cy in zip(a, b, ca, cb, strict=True):
        if not cx and not cy:
            first_lower += bool(x < y)
            first_higher += bool(x > y)
        elif not cx and x < y:  # first got there before the second's end
            first_lower += 1
        elif not cy and y < x:
            first_higher += 1
    ordered = first_lower + first_higher
    p, min_p = _sign_test(first_lower, first_higher)
    finite = np.isfinite(a) & np.isfinite(b)
    ratio = float(np.exp(np.mean(np.log(a[finite] / b[finite])))) if finite.any() else math.nan
    worst = int(np.isinf(a).sum() + np.isinf(b).sum())
    censored = int(ca.sum() + cb.sum())
    method = (
        f"exact sign test over {ordered} of {n} pairs whose order is known (first lower in"
        f" {first_lower}, higher in {first_higher}); {worst} failed or diverged counted as the"
        f" worst, {censored} censored at their end; the ratio over the {int(finite.sum())} pairs"
        " with two finite figures, no interval"
    )
    return Estimate(
        ratio, 0.0, math.inf, p, n, method, min_p=min_p,
        direction=int(np.sign(first_higher - first_lower)),
    )  # fmt: skip


def failed_runs(
    first_failed: Sequence[bool], second_failed: Sequence[bool], level: float = LEVEL
) -> Estimate:
    """Runs that crashed, as a result of their own: the share of runs that finished, first over
    second, with an exact sign test over the pairs in which exactly one side failed."""
    fa, fb = np.asarray(first_failed, bool), np.asarray(second_failed, bool)
    if len(fa) != len(fb) or not len(fa):
        raise ValueError("failed_runs needs the same number of runs on each side")
    n = len(fa)
    done_a, done_b = 1 - fa.mean(), 1 - fb.mean()
    ratio = float(done_a / done_b) if done_b else (math.inf if done_a else math.nan)
    only_a, only_b = int((fa & ~fb).sum()), int((fb & ~fa).sum())
    # first finishes more often when the second alone fails more often
    p, min_p = _sign_test(only_a, only_b)
    method = (
        f"exact sign test over the {only_a + only_b} of {n} pairs in which one side alone"
        f" failed (first in {only_a}, second in {only_b})"
    )
    return Estimate(
        ratio, 0.0, math.inf, p, n, method, min_p=min_p, direction=int(np.sign(only_b - only_a))
    )


def _sign_test(k: int, other: int) -> tuple[float, float]:
    """(p, the smallest p possible) of the exact two-sided sign test, k against other."""
    m = k + other
    if not m:
        return 1.0, 1.0
    return float(scipy_stats.binomtest(k, m).pvalue), min(1.0, 2 * 0.5**m)


# --- Holm's family and the three outcomes ---


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the family-wise error rate stays at the level."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def tarone(min_p_values: Sequence[float], alpha: float) -> list[bool]:
    """Which lines count in the corrected family: Tarone's rule, the smallest k for which at
    most k lines could reach alpha / k at all. A line left out (an exact test on a few pairs,
    a single pair) could never be a winner, and counting it would only make every other line
    pay for it. The choice rests on what each test can give, never on the p it gave, so Holm
    over the family keeps the family-wise error at alpha."""
    m = len(min_p_values)
    for k in range(1, m + 1):
        chosen = [q <= alpha / k for q in min_p_values]
        if sum(chosen) <= k:
            return chosen
    return [False] * m


@dataclass
class Line:
    """One question of a report, answered by an estimate."""

    question: str
    first: str
    second: str
    estimate: Estimate
    higher_is_better: bool
    detail: str = ""
    margin: float = SPEED_MARGIN  # ratio margin for "equivalent"; accuracy uses points instead
    extra: dict = field(default_factory=dict)


def decide(lines: Sequence[Line], hardware: str, level: float = LEVEL) -> list[dict]:
    """The report's verdict entries, corrected together (Holm) and given one of three outcomes.

    The lines' estimates must have been made at the same `level`."""
    alpha = 1 - level
    reachable = [
        line.estimate.min_p if line.estimate.repeats >= MIN_PAIRS else 1.0 for line in lines
    ]
    family = tarone(reachable, alpha)
    size = sum(family)
    adjusted = iter(
        holm([line.estimate.p_value for line, f in zip(lines, family, strict=True) if f])
    )
    out = []
    for line, in_family in zip(lines, family, strict=True):
        e = line.estimate
        p_holm = next(adjusted) if in_family else 1.0
        detectable, detectable_points = _detectable(e, alpha / size if in_family else None)
        if e.repeats < MIN_PAIRS:
            outcome, winner = "inconclusive", None
        elif _equivalent(line):
            outcome, winner = "equivalent", None
        elif in_family and p_holm < alpha and _direction(e):
            outcome = "winner"
            first_better = (_direction(e) > 0) == line.higher_is_better
            winner = line.first if first_better else line.second
        else:
            outcome, winner = "inconclusive", None
        notes = [line.detail] if line.detail else []
        if e.repeats < MIN_PAIRS:
            notes.append(f"{e.repeats} pair: no verdict below {MIN_PAIRS}")
        elif not in_family:
            notes.append(
                f"outside Holm's family (Tarone): smallest attainable p {e.min_p:.3g} cannot"
                f" reach {alpha / max(size, 1):.3g}"
            )
        elif e.min_p > 0:
            notes.append(f"smallest attainable p {e.min_p:.3g}")
        entry = {
            "question": line.question,
            "first": line.first,
            "second": line.second,
            "outcome": outcome,
            "winner": winner,
            "ratio": e.ratio,
            "interval": [e.low, e.high if math.isfinite(e.high) else None],
            "repeats": e.repeats,
            "p_value": e.p_value,
            "p_holm": p_holm,
            "detectable": detectable,
            "power": POWER if detectable is not None else None,
            "family": in_family,
            "family_size": size,
            "min_p": e.min_p,
            "method": e.method,
            "margin": _margin_text(line),
            "level": level,
            "hardware": hardware,
            "detail": "; ".join(notes),
            **line.extra,
        }
        if e.difference_points is not None:
            entry["difference_points"] = list(e.difference_points)
            entry["detectable_points"] = detectable_points
        out.append(entry)
    return out


def _direction(e: Estimate) -> int:
    if e.direction is not None:
        return e.direction
    return 0 if not math.isfinite(e.ratio) or e.ratio == 1 else (1 if e.ratio > 1 else -1)


def _detectable(e: Estimate, alpha: float | None) -> tuple[float | None, float | None]:
    """The line's smallest detectable change (a ratio's fraction, and points for accuracy) at
    the level Holm asks of it: alpha over the family's size, which a line must reach when no
    other line is decided (with 4 lines on 3 pairs, t = 8.86 rather than 4.30)."""
    if alpha is None or e.df is None or e.repeats < MIN_PAIRS:
        return None, None
    change = None
    if e.log_se is not None:
        effect = detectable_effect(e.log_se, e.df, alpha)
        if effect is not None:
            change = effect if e.points_se is not None else math.expm1(effect)
    points = detectable_effect(e.points_se, e.df, alpha) if e.points_se is not None else None
    return change, points


def _equivalent(line: Line) -> bool:
    """Two one-sided tests, each at half of 1 - level: the level's interval inside the margin.
    Judged per line, never corrected over the report's lines."""
    e = line.estimate
    if not math.isfinite(e.high):
        return False
    if e.difference_points is not None:
        _, low, high = e.difference_points
        return -ACCURACY_MARGIN_POINTS < low and high < ACCURACY_MARGIN_POINTS
    return 1 / (1 + line.margin) < e.low and e.high < 1 + line.margin


def _margin_text(line: Line) -> str:
    if line.estimate.difference_points is not None:
        return f"+-{ACCURACY_MARGIN_POINTS:g} point"
    return f"+-{line.margin:.0%}"


def family_note(entries: Sequence[dict]) -> str:
    """How the lines were corrected, for a report's heading: 'Holm-corrected over 3 lines' and
    how many stood outside the family because they could not reach the level."""
    size = sum(1 for e in entries if e.get("family", True))
    text = f"Holm-corrected over {size} line{'s' if size != 1 else ''}"
    outside = len(entries) - size
    if outside:
        text += f"; {outside} outside the family: {'it' if outside == 1 else 'they'} cannot reach"
        text += " the level"
    return text


def describe(entry: dict) -> str:
    """One verdict as a line of text: the outcome, the ratio first over second, the interval."""
    low, high = entry["interval"]
    alpha = 1 - entry["level"]
    interval = f"[{low:.3f}, {high:.3f}]" if high is not None else "[no interval]"
    after_holm = False
    if entry["outcome"] == "winner":
        outcome = f"{entry['winner']}"
    elif entry["outcome"] == "equivalent":
        outcome = f"equivalent within {entry['margin']} (two one-sided tests, {alpha / 2:.1%} each)"
    elif entry["repeats"] < MIN_PAIRS:
        outcome = f"inconclusive (no verdict below {MIN_PAIRS} pairs)"
    elif not entry.get("family", True):
        outcome = "inconclusive (cannot reach the level: outside Holm's family)"
    elif entry["p_value"] < alpha:
        # The line alone would decide, but not once every line of the report is counted.
        outcome, after_holm = "inconclusive after Holm's correction", True
    else:
        outcome = entry["outcome"]
    ratio = entry["ratio"]
    shown = f"{ratio:.3f}x" if ratio is not None and math.isfinite(ratio) else "no finite ratio"
    text = (
        f"{entry['question']}: {outcome} ({entry['first']}/{entry['second']} "
        f"{shown}, {entry['level']:.0%} {interval}, {entry['repeats']} pair"
        f"{'s' if entry['repeats'] != 1 else ''}"
    )
    power = entry.get("power") or POWER
    if entry.get("difference_points"):
        d, dl, dh = entry["difference_points"]
        text += f"; {d:+.2f} points [{dl:+.2f}, {dh:+.2f}]"
        if entry.get("detectable_points") is not None:
            text += f"; detectable {entry['detectable_points']:.2f} points at {power:.0%} power"
    elif entry["detectable"] is not None:
        text += f"; detectable {entry['detectable']:.1%} at {power:.0%} power"
    if entry.get("min_p") and entry["repeats"] >= MIN_PAIRS:
        text += f"; p {entry['p_value']:.3g}, smallest attainable {entry['min_p']:.3g}"
    if after_holm:
        text += f"; p {entry['p_value']:.3g}, {entry['p_holm']:.3g} after Holm"
    return text + ")"
