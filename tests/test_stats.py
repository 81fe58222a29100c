"""The statistics every verdict rests on: ratios first over second, intervals, Holm, outcomes."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from twinbench.experiments.verdicts import (
    LEVEL,
    Estimate,
    Line,
    accuracy_ratio,
    decide,
    describe,
    holm,
    paired_ratio,
)


def test_paired_ratio_is_a_t_test_on_log_ratios():
    first, second = [100.0, 104.0, 97.0, 103.0], [90.0, 96.0, 91.0, 92.0]
    e = paired_ratio(first, second)
    d = np.log(first) - np.log(second)
    assert e.ratio == pytest.approx(math.exp(d.mean()))
    assert e.p_value == pytest.approx(scipy_stats.ttest_rel(np.log(first), np.log(second)).pvalue)
    half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (e.low, e.high) == pytest.approx((math.exp(d.mean() - half), math.exp(d.mean() + half)))
    assert e.repeats == 4 and e.detectable > 0


def test_the_ratio_is_first_over_second_whichever_is_better():
    faster = paired_ratio([100.0, 101.0, 99.0], [50.0, 50.5, 49.0])
    slower = paired_ratio([50.0, 50.5, 49.0], [100.0, 101.0, 99.0])
    assert faster.ratio == pytest.approx(1 / slower.ratio)
    (a,) = decide([Line("q", "x", "y", slower, higher_is_better=True)], "cpu")
    assert a["outcome"] == "winner" and a["winner"] == "y" and a["ratio"] < 1
    (b,) = decide([Line("q", "x", "y", slower, higher_is_better=False)], "cpu")
    assert b["winner"] == "x"  # for latency, lower is better


def test_windows_never_make_an_interval_narrower_than_the_noise_within_jobs():
    # Two repeats that happen to agree closely, from jobs whose windows scatter widely.
    windows = [[80.0, 120.0, 90.0, 110.0], [85.0, 115.0, 95.0, 105.0]]
    plain = paired_ratio([100.0, 100.5], [100.0, 100.4])
    floored = paired_ratio([100.0, 100.5], [100.0, 100.4], windows, windows)
    assert floored.high - floored.low > plain.high - plain.low
    one = paired_ratio([100.0], [90.0], windows[:1], windows[1:])
    assert one.low < one.ratio < one.high and "within that run only" in one.method
    assert paired_ratio([100.0], [90.0]).high == math.inf  # one pair, nothing else: no interval


def test_holm_matches_its_definition():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2]


def test_accuracy_of_identical_models_is_not_a_difference():
    rng = np.random.default_rng(0)
    right = rng.random((3, 500)) < 0.9
    e = accuracy_ratio(right, right.copy())
    assert e.ratio == 1.0 and e.difference_points[0] == 0.0
    (entry,) = decide([Line("acc", "a", "b", e, higher_is_better=True)], "cpu")
    assert entry["outcome"] != "winner"


def test_a_real_accuracy_difference_across_seeds_is_found():
    rng = np.random.default_rng(1)
    hard = rng.random(2000)  # how hard each test image is; both sides see the same images
    first = np.array([hard < 0.95 - 0.005 * s for s in range(4)])
    second = np.array([hard < 0.85 + 0.005 * s for s in range(4)])
    e = accuracy_ratio(first, second)
    (entry,) = decide([Line("acc", "a", "b", e, higher_is_better=True)], "cpu")
    assert entry["outcome"] == "winner" and entry["winner"] == "a"
    difference, low, high = entry["difference_points"]
    assert low < difference < high and low > 5


def test_outcomes_winner_equivalent_inconclusive():
    rng = np.random.default_rng(2)
    noise = lambda n, s: np.exp(rng.normal(0, s, n))  # noqa: E731
    clear = paired_ratio(120 * noise(5, 0.01), 100 * noise(5, 0.01))
    same = paired_ratio(100 * noise(8, 0.005), 100 * noise(8, 0.005))
    vague = paired_ratio(110 * noise(3, 0.2), 100 * noise(3, 0.2))
    entries = decide(
        [Line(q, "a", "b", e, True) for q, e in (("c", clear), ("s", same), ("v", vague))], "cpu"
    )
    assert [e["outcome"] for e in entries] == ["winner", "equivalent", "inconclusive"]
    assert [e["winner"] for e in entries] == ["a", None, None]
    assert all(e["hardware"] == "cpu" and e["level"] == LEVEL for e in entries)
    assert "a/b" in describe(entries[0]) and "95%" in describe(entries[0])


def test_a_line_whose_interval_alone_excludes_one_says_holm_made_it_inconclusive():
    """Four lines with the same p of 0.03: each 95% interval excludes 1, but Holm's correction
    over four lines lifts every p to 0.12, so none is a winner, and the text says why."""
    estimate = Estimate(1.6, 1.08, 2.38, 0.03, 3, "paired t")
    entries = decide([Line(q, "a", "b", estimate, True) for q in "wxyz"], "cpu")
    assert [e["outcome"] for e in entries] == ["inconclusive"] * 4
    assert entries[0]["p_holm"] == pytest.approx(0.12)
    text = describe(entries[0])
    assert "inconclusive after Holm's correction" in text and "0.12 after Holm" in text


def test_a_a_runs_name_a_false_winner_in_at_most_five_percent_of_runs():
    """Many simulated A/A reports, each with a speed line (run-to-run drift and noise within
    jobs) and an accuracy line (seeds and images), three repeats each: Holm keeps the share of
    reports that name any winner at or under the 5% the design promises."""
    rng = np.random.default_rng(3)
    runs, false_winners = 300, 0
    for _ in range(runs):
        speeds, windows = [], []
        for _arm in range(2):
            run_levels = 1000 * np.exp(rng.normal(0, 0.05, 3))
            windows.append([list(level * np.exp(rng.normal(0, 0.1, 10))) for level in run_levels])
            speeds.append([float(np.mean(w)) for w in windows[-1]])
        hard = rng.random(300)
        skill = [0.9 + rng.normal(0, 0.01, 3) for _arm in range(2)]
        right = [np.array([hard < s for s in arm_skill]) for arm_skill in skill]
        lines = [
            Line("speed", "a", "b", paired_ratio(*speeds, *windows), True),
            Line("acc", "a", "b", accuracy_ratio(*right, seed=int(rng.integers(1 << 30))), True),
        ]
        false_winners += any(e["outcome"] == "winner" for e in decide(lines, "sim"))
    assert false_winners / runs <= 0.05, false_winners
