"""Verdicts with stated uncertainty: paired ratios, intervals, Holm's correction, three outcomes.

Every comparison twinbench prints goes through here (compare, the benchmarks, sweeps), so one
set of rules decides when a difference is named:
- a ratio is always first over second, never winner over loser;
- its 95% interval comes from paired repeats (speed: a t interval on per-repeat log ratios;
  accuracy: a bootstrap over seeds and test images together; serving: per-round pairs, never
  per-request samples, which are autocorrelated);
- a line names a winner only when its interval excludes "no difference" after Holm's
  correction over all the lines of one report, "equivalent" when the interval lies inside a
  stated margin, and is "inconclusive" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
POWER = 0.80  # for the smallest difference a run could have detected
SPEED_MARGIN = 0.05  # "equivalent" speed: the ratio's interval inside [1/1.05, 1.05]
ACCURACY_MARGIN_POINTS = 1.0  # "equivalent" accuracy: the difference inside +-1 point
BOOTSTRAP_SAMPLES = 4000


@dataclass
class Estimate:
    """A ratio, first over second, with its interval and what it rests on."""

    ratio: float
    low: float
    high: float
    p_value: float  # two-sided, against a ratio of 1
    repeats: int  # the paired units: repeats, or rounds for serving
    method: str
    # The smallest ratio change (as a fraction, 0.08 = 8%) that this run would have detected
    # with 80% power; None when it cannot be told.
    detectable: float | None = None
    # Accuracy also as a difference in points, first minus second, with its interval, and the
    # smallest difference in points the run would have detected.
    difference_points: tuple[float, float, float] | None = None
    detectable_points: float | None = None


def _t(df: float, q: float) -> float:
    return float(scipy_stats.t.ppf(q, df)) if math.isfinite(df) else float(scipy_stats.norm.ppf(q))


def _from_log_scale(
    center: float, se: float, df: float, repeats: int, method: str, level: float
) -> Estimate:
    if not se > 0 or not math.isfinite(se):
        # Pairs with no spread at all (identical runs): no interval can be stated.
        return Estimate(math.exp(center), 0.0, math.inf, 1.0, repeats, method + "; no spread")
    half = _t(df, 0.5 + level / 2) * se
    statistic = abs(center) / se
    tail = scipy_stats.t.sf(statistic, df) if math.isfinite(df) else scipy_stats.norm.sf(statistic)
    p = float(2 * tail)
    detectable = math.exp((_t(df, 0.5 + level / 2) + _t(df, POWER)) * se) - 1
    return Estimate(
        math.exp(center), math.exp(center - half), math.exp(center + half), p, repeats, method,
        detectable,
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
    slices), it is never narrower than the spread within the jobs, and a single pair still gets
    an interval, which then covers noise within that run only and says so.
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
    within_var = None
    if first_windows is not None and second_windows is not None:
        per_pair = [
            _log_mean_var(wa) + _log_mean_var(wb)
            for wa, wb in zip(first_windows, second_windows, strict=True)
        ]
        if all(v is not None for v in per_pair):
            within_var = float(np.mean(per_pair))
    if n >= 2:
        between = float(np.var(d, ddof=1))
        variance = max(between, within_var or 0.0) / n
        method = f"paired t on log ratios, {n} pairs"
        return _from_log_scale(float(d.mean()), math.sqrt(variance), n - 1, n, method, level)
    if within_var is None:
        return Estimate(float(math.exp(d[0])), 0.0, math.inf, 1.0, 1, "one pair: no interval")
    windows = len(first_windows[0]) + len(second_windows[0])
    return _from_log_scale(
        float(d[0]), math.sqrt(within_var), windows - 2, 1,
        "one repeat: the interval covers the spread within that run only", level,
    )  # fmt: skip


def _log_mean_var(windows: Sequence[float]) -> float | None:
    """The variance of the mean of log window throughputs; None with fewer than two windows."""
    w = np.log(np.asarray([x for x in windows if x > 0], float))
    return float(np.var(w, ddof=1) / len(w)) if len(w) >= 2 else None


def accuracy_ratio(
    first_correct: np.ndarray, second_correct: np.ndarray, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """Accuracy of first over second, from per-image correctness (repeats x test images).

    Rows are repeats, paired by seed; columns are the same test images for both. A bootstrap
    resamples seeds and images together (the images as one shared draw for both sides), so the
    interval reflects both which seed trained the models and which images tested them; a
    McNemar test of one pair would speak of two trained models, not of two frameworks. The
    bootstrap's spread, scaled by sqrt(n / (n - 1)) (resampling n seeds understates their
    variance by that much), enters a t interval with n - 1 degrees of freedom, which keeps a
    handful of seeds from looking more certain than they are.
    """
    a, b = np.asarray(first_correct, float), np.asarray(second_correct, float)
    if a.shape != b.shape or a.ndim != 2 or not a.size:
        raise ValueError("accuracy_ratio needs two equal repeats x images arrays")
    repeats, images = a.shape
    rng = np.random.default_rng(seed)
    # How often each image is drawn in each bootstrap sample (a multinomial draw, made fast).
    draws = rng.integers(0, images, size=(BOOTSTRAP_SAMPLES, images))
    draws += np.arange(BOOTSTRAP_SAMPLES)[:, None] * images
    weights = np.bincount(draws.ravel(), minlength=BOOTSTRAP_SAMPLES * images)
    weights = weights.reshape(BOOTSTRAP_SAMPLES, images).astype(float)
    picks = rng.integers(0, repeats, size=(BOOTSTRAP_SAMPLES, repeats))
    columns = np.arange(BOOTSTRAP_SAMPLES)[:, None]
    hits_a = (a @ weights.T)[picks, columns].sum(axis=1)  # bootstrap x: correct answers
    hits_b = (b @ weights.T)[picks, columns].sum(axis=1)
    total = repeats * images
    acc_a, acc_b = a.mean(), b.mean()
    diff_samples = (hits_a - hits_b) / total * 100
    df = repeats - 1 if repeats >= 2 else math.inf
    small_sample = math.sqrt(repeats / (repeats - 1)) if repeats >= 2 else 1.0
    method = f"bootstrap over {repeats} seeds and {images} test images"
    if repeats == 1:
        method += " (one seed: two trained models, not two frameworks)"
    diff = (acc_a - acc_b) * 100
    diff_se = float(diff_samples.std(ddof=1)) * small_sample
    t = _t(df, 0.5 + level / 2)
    difference = (float(diff), float(diff - t * diff_se), float(diff + t * diff_se))
    if acc_a <= 0 or acc_b <= 0:
        estimate = Estimate(
            acc_a / acc_b if acc_b else math.inf, 0.0, math.inf, 1.0, repeats, method
        )
    else:
        valid = (hits_a > 0) & (hits_b > 0)
        log_se = float(np.log(hits_a[valid] / hits_b[valid]).std(ddof=1)) * small_sample
        estimate = _from_log_scale(math.log(acc_a / acc_b), log_se, df, repeats, method, level)
    estimate.difference_points = difference
    estimate.detectable_points = float((t + _t(df, POWER)) * diff_se)
    return estimate


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the family-wise error rate stays at the level."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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
    adjusted = holm([line.estimate.p_value for line in lines])
    out = []
    for line, p_adjusted in zip(lines, adjusted, strict=True):
        e = line.estimate
        excludes_one = e.low > 1 or e.high < 1
        if excludes_one and p_adjusted < 1 - level:
            outcome = "winner"
            first_better = (e.ratio > 1) == line.higher_is_better
            winner = line.first if first_better else line.second
        elif _equivalent(line):
            outcome, winner = "equivalent", None
        else:
            outcome, winner = "inconclusive", None
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
            "p_holm": p_adjusted,
            "detectable": e.detectable,
            "method": e.method,
            "margin": _margin_text(line),
            "level": level,
            "hardware": hardware,
            "detail": line.detail,
            **line.extra,
        }
        if e.difference_points is not None:
            entry["difference_points"] = list(e.difference_points)
            entry["detectable_points"] = e.detectable_points
        out.append(entry)
    return out


def _equivalent(line: Line) -> bool:
    e = line.estimate
    if e.difference_points is not None:
        _, low, high = e.difference_points
        return -ACCURACY_MARGIN_POINTS < low and high < ACCURACY_MARGIN_POINTS
    return 1 / (1 + line.margin) < e.low and e.high < 1 + line.margin


def _margin_text(line: Line) -> str:
    if line.estimate.difference_points is not None:
        return f"+-{ACCURACY_MARGIN_POINTS:g} point"
    return f"+-{line.margin:.0%}"


def describe(entry: dict) -> str:
    """One verdict as a line of text: the outcome, the ratio first over second, the interval."""
    low, high = entry["interval"]
    interval = f"[{low:.3f}, {high:.3f}]" if high is not None else "[no interval]"
    if entry["outcome"] == "winner":
        outcome = f"{entry['winner']}"
    elif high is not None and (low > 1 or high < 1):
        # The interval alone excludes 1, but not once every line of the report is counted.
        outcome = f"{entry['outcome']} after Holm's correction"
    else:
        outcome = entry["outcome"]
    text = (
        f"{entry['question']}: {outcome} ({entry['first']}/{entry['second']} "
        f"{entry['ratio']:.3f}x, {entry['level']:.0%} {interval}, {entry['repeats']} pairs"
    )
    if entry.get("difference_points"):
        d, dl, dh = entry["difference_points"]
        text += f"; {d:+.2f} points [{dl:+.2f}, {dh:+.2f}]"
        text += f"; detectable {entry['detectable_points']:.2f} points"
    elif entry["detectable"] is not None:
        text += f"; detectable {entry['detectable']:.1%}"
    if outcome.endswith("after Holm's correction"):
        text += f"; p {entry['p_value']:.3g}, {entry['p_holm']:.3g} after Holm"
    return text + ")"


# --- reinforcement learning: runs that succeed or not, and how soon ---


def iqm(values: Sequence[float]) -> float:
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
    values: Sequence[float], statistic=np.mean, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """(statistic, low, high): a percentile bootstrap over the values (seeds, one per run).
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


def paired_iqm_ratio(
    first: Sequence[float], second: Sequence[float], level: float = LEVEL, seed: int = 0
) -> Estimate:
    """IQM of first over second (e.g. episodes to solve), seeds paired: a percentile bootstrap
    resamples the seeds, each bringing both of its runs. Where an infinite IQM (too many
    unsolved runs) leaves no ratio, the estimate says so and has no interval."""
    a, b = np.asarray(first, float), np.asarray(second, float)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired_iqm_ratio needs the same number (at least one) of runs per side")
    n = len(a)
    method = f"paired percentile bootstrap over {n} seeds"
    point_a, point_b = iqm(a), iqm(b)
    if not (math.isfinite(point_a) and math.isfinite(point_b)) or point_b <= 0:
        return Estimate(math.nan, 0.0, math.inf, 1.0, n, method + "; an IQM is unsolved: no ratio")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    ratios = np.array([iqm(a[p]) / iqm(b[p]) for p in picks])
    ratios = np.where(np.isnan(ratios), np.inf, ratios)  # inf / inf: no finite ratio
    alpha = (1 - level) / 2
    low = float(np.quantile(ratios, alpha, method="lower"))
    high = float(np.quantile(ratios, 1 - alpha, method="higher"))
    p = min(1.0, 2 * min(float(np.mean(ratios <= 1)), float(np.mean(ratios >= 1))))
    return Estimate(point_a / point_b, low, high, p, n, method)
