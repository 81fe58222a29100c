"""The statistics every verdict rests on: ratios first over second, intervals, Holm, outcomes.

Each rule of twinbench/experiments/verdicts.py has a test here that fails when the rule is
broken; tests/test_verdict_simulations.py checks the rules' error rates by simulating known truth.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from twinbench.experiments.rl_verdicts import paired_iqm_ratio
from twinbench.experiments.verdicts import (
    LEVEL,
    Estimate,
    Line,
    accuracy_ratio,
    decide,
    describe,
    detectable_effect,
    failed_runs,
    family_note,
    holm,
    paired_ratio,
    paired_with_failures,
    tarone,
)


def test_paired_ratio_is_a_t_test_on_log_ratios():
    first, second = [100.0, 104.0, 97.0, 103.0], [90.0, 96.0, 91.0, 92.0]
    e = paired_ratio(first, second)
    d = np.log(first) - np.log(second)
    assert e.ratio == pytest.approx(math.exp(d.mean()))
    assert e.p_value == pytest.approx(scipy_stats.ttest_rel(np.log(first), np.log(second)).pvalue)
    half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (e.low, e.high) == pytest.approx((math.exp(d.mean() - half), math.exp(d.mean() + half)))
    assert e.repeats == 4 and e.detectable > 0 and e.min_p == 0


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


# --- below two paired units, nothing is decided ---


def test_one_pair_never_names_a_winner_however_tight_its_windows():
    """One repeat whose windows agree to 0.1% gives an interval far from 1, but drift between
    two jobs minutes apart is invisible within them: the line stays inconclusive and says why."""
    tight = [[100.0, 100.1, 99.9, 100.0]], [[80.0, 80.1, 79.9, 80.0]]
    one = paired_ratio([100.0], [80.0], *tight)
    assert one.low > 1.2 and one.p_value < 1e-6  # the interval alone would name a winner
    assert one.min_p == 1.0  # no test on one pair can reach any level
    (entry,) = decide([Line("speed", "a", "b", one, True)], "cpu")
    assert entry["outcome"] == "inconclusive" and entry["winner"] is None
    assert "no verdict below 2" in entry["detail"] and "no verdict below 2" in describe(entry)
    # Whatever an estimate on one pair claims, decide() does not name a winner on it.
    claimed = Estimate(2.0, 1.5, 2.5, 1e-9, 1, "a test that claims too much")
    (entry,) = decide([Line("speed", "a", "b", claimed, True)], "cpu")
    assert entry["outcome"] == "inconclusive"
    near = Estimate(1.0, 0.999, 1.001, 0.9, 1, "one pair inside the margin")
    assert decide([Line("speed", "a", "b", near, True)], "cpu")[0]["outcome"] == "inconclusive"


def test_one_seed_of_accuracy_is_an_exact_mcnemar_test_and_decides_nothing():
    rng = np.random.default_rng(4)
    first, second = rng.random((1, 2000)) < 0.95, rng.random((1, 2000)) < 0.80
    e = accuracy_ratio(first, second)
    only_first, only_second = int((first & ~second).sum()), int((second & ~first).sum())
    mcnemar = scipy_stats.binomtest(only_first, only_first + only_second).pvalue
    assert e.p_value == pytest.approx(mcnemar) and e.p_value < 1e-10 and e.min_p == 1.0
    (entry,) = decide([Line("acc", "a", "b", e, True)], "cpu")
    assert entry["outcome"] == "inconclusive" and "two trained models" in entry["method"]


# --- accuracy: the seed is the unit ---


def test_the_accuracy_interval_is_a_t_interval_over_seeds_not_over_seeds_and_images():
    rng = np.random.default_rng(5)
    hard = rng.random(1000)
    first = np.array([hard + rng.normal(0, 0.05, 1000) < 0.9 + s for s in (0.01, -0.01, 0.0)])
    second = np.array([hard + rng.normal(0, 0.05, 1000) < 0.9 + s for s in (0.0, 0.01, -0.02)])
    e = accuracy_ratio(first, second)
    per_seed = (first.mean(axis=1) - second.mean(axis=1)) * 100
    half = scipy_stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    assert e.difference_points == pytest.approx(
        (per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half)
    )
    assert e.p_value == pytest.approx(scipy_stats.ttest_1samp(per_seed, 0).pvalue)
    # The ratio's interval is the difference's, over the second's accuracy: both say the same.
    scale = 100 * second.mean()
    assert (e.low, e.high) == pytest.approx((1 + (per_seed.mean() - half) / scale,
                                             1 + (per_seed.mean() + half) / scale))  # fmt: skip


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


# --- "detectable": the noncentral t at the level Holm needs ---


def test_detectable_is_the_noncentral_t_effect_at_the_level_holm_asks_of_the_line():
    """Four lines on three pairs: a line must reach 0.05 / 4 when no other is decided, a t of
    8.86 with 2 degrees of freedom, not 4.30; and at the stated effect the noncentral t rejects
    with the stated 80% power."""
    e = paired_ratio([100.0, 104.0, 97.0], [90.0, 96.0, 91.0])
    entries = decide([Line(q, "a", "b", e, True) for q in "wxyz"], "cpu")
    critical = scipy_stats.t.ppf(1 - 0.05 / 4 / 2, 2)
    assert critical == pytest.approx(8.86, abs=0.005)
    for entry in entries:
        assert entry["power"] == 0.80 and entry["family_size"] == 4
        ncp = math.log1p(entry["detectable"]) / e.log_se
        power = scipy_stats.nct(2, ncp).sf(critical) + scipy_stats.nct(2, ncp).cdf(-critical)
        assert power == pytest.approx(0.80, abs=1e-6)
    # Alone, the same line needs less: the level, not the level over four.
    (alone,) = decide([Line("w", "a", "b", e, True)], "cpu")
    assert alone["detectable"] < entries[0]["detectable"] / 2
    assert "detectable" in describe(entries[0]) and "at 80% power" in describe(entries[0])


def test_detectable_effect_matches_the_noncentral_t_for_accuracy_points_too():
    rng = np.random.default_rng(6)
    first, second = rng.random((4, 800)) < 0.9, rng.random((4, 800)) < 0.9
    e = accuracy_ratio(first, second)
    entries = decide([Line("acc", "a", "b", e, True), Line("x", "a", "b", e, True)], "cpu")
    expected = detectable_effect(e.points_se, 3, 0.05 / 2)
    assert entries[0]["detectable_points"] == pytest.approx(expected)
    critical = scipy_stats.t.ppf(1 - 0.05 / 4, 3)
    ncp = expected / e.points_se
    assert scipy_stats.nct(3, ncp).sf(critical) == pytest.approx(0.80, abs=1e-4)


# --- DQN: an exact paired permutation test over seeds ---


def _exact_rank_test(first, second) -> float:
    """The paired permutation test by brute force: every swap of every pair, on the ranks."""
    ranks = scipy_stats.rankdata(np.concatenate([first, second]))
    d = ranks[: len(first)] - ranks[len(first) :]
    flips = [np.dot(signs, d) for signs in itertools.product((1, -1), repeat=len(d))]
    return float(np.mean(np.abs(flips) >= abs(d.sum()) - 1e-9))


def test_the_dqn_verdict_is_an_exact_paired_permutation_test_that_states_its_smallest_p():
    first = [120.0, 95.0, 300.0, 140.0, math.inf, 180.0, 110.0, 150.0]
    second = [200.0, 90.0, 520.0, 260.0, math.inf, math.inf, 240.0, 400.0]
    e = paired_iqm_ratio(first, second)
    assert e.p_value == pytest.approx(_exact_rank_test(first, second))
    # Seed 5 is unsolved in both: that pair cannot swap, so the smallest p is 2 / 2^7.
    assert e.min_p == pytest.approx(2 / 2**7) and "all 256 swaps" in e.method
    (entry,) = decide([Line("episodes", "a", "b", e, higher_is_better=False)], "cpu")
    assert entry["outcome"] == "winner" and entry["winner"] == "a"
    assert f"smallest attainable p {2 / 2**7:.3g}" in entry["detail"]
    # The interval inverts the same test, so it excludes 1 exactly when the test rejects.
    assert e.high < 1


def test_five_seeds_that_all_agree_cannot_reach_five_percent_and_say_so():
    """Five seeds, the first side better in every one: a percentile bootstrap called this a
    winner; the exact test's p is 2 / 32 = 0.0625, the smallest it can give."""
    e = paired_iqm_ratio([100.0, 110.0, 120.0, 130.0, 105.0], [200.0, 220.0, 240.0, 260.0, 210.0])
    assert e.p_value == pytest.approx(0.0625) and e.min_p == pytest.approx(0.0625)
    (entry,) = decide([Line("episodes", "a", "b", e, higher_is_better=False)], "cpu")
    assert entry["outcome"] == "inconclusive" and not entry["family"]
    assert "smallest attainable p 0.0625" in entry["detail"]
    assert "outside Holm's family" in describe(entry)


def test_a_run_that_never_solved_is_the_worst_not_missing():
    # Every seed: the second never solves; the first does. No finite IQM on the second side,
    # so no ratio, but the test still counts and names the first.
    first = [150.0, 160.0, 170.0, 155.0, 165.0, 175.0, 158.0]
    e = paired_iqm_ratio(first, [math.inf] * 7)
    assert math.isnan(e.ratio) and "no ratio" in e.method and e.p_value == pytest.approx(2 / 2**7)
    (entry,) = decide([Line("episodes", "a", "b", e, higher_is_better=False)], "cpu")
    assert entry["winner"] == "a"


# --- failed, diverged and never reached: results, never dropped ---


def test_a_diverged_side_counts_as_the_worst_in_a_sign_test_over_every_pair():
    first = [0.40, 0.41, 0.39, 0.42, 0.40, 0.38, 0.41, 0.40]
    second = [math.inf, math.inf, math.inf, math.inf, math.inf, math.inf, 0.41, 0.40]
    e = paired_with_failures(first, second)
    # Six pairs ordered by divergence; the two equal pairs are ties.
    assert e.p_value == pytest.approx(scipy_stats.binomtest(6, 6).pvalue) and e.repeats == 8
    assert e.min_p == pytest.approx(2 / 2**6) and "6 failed or diverged" in e.method
    (entry,) = decide([Line("loss", "a", "b", e, higher_is_better=False)], "cpu")
    assert entry["outcome"] == "winner" and entry["winner"] == "a"
    # With every figure there, it is the paired t on log ratios.
    assert paired_with_failures(first, first[::-1]).method.startswith("paired t")


def test_a_run_that_never_reaches_the_target_is_censored_at_its_end():
    # Seconds to target; the second never reached it in pairs 3 and 4 (its runs ended at 50 s
    # and 30 s). Pair 3: the first got there at 40 s, before the second's end: the first is
    # sooner. Pair 4: the first took 45 s, after the second's end: the order is unknown.
    first, first_censored = [20.0, 25.0, 40.0, 45.0], [False, False, False, False]
    second, second_censored = [22.0, 24.0, 50.0, 30.0], [False, False, True, True]
    e = paired_with_failures(first, second, first_censored, second_censored)
    assert "3 of 4 pairs whose order is known (first lower in 2, higher in 1)" in e.method
    assert "2 censored at their end" in e.method and e.min_p == pytest.approx(0.25)


def test_crashed_runs_get_a_line_of_their_own():
    e = failed_runs([True, False, True, False, False], [False, False, False, False, False])
    assert e.ratio == pytest.approx(0.6) and e.direction == -1
    assert "one side alone failed (first in 2, second in 0)" in e.method
    (entry,) = decide([Line("finishes", "a", "b", e, higher_is_better=True)], "cpu")
    assert entry["outcome"] == "inconclusive" and not entry["family"]  # 2 pairs: p >= 0.5


# --- Holm's family: Tarone keeps out lines that cannot reach the level ---


def test_holm_matches_its_definition():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2]


def test_tarone_leaves_out_lines_that_could_never_reach_the_level():
    assert tarone([0.0, 0.0, 0.25, 0.0625], 0.05) == [True, True, False, False]
    # Two sign tests on 6 pairs (0.03 each) could reach 0.05 alone, but not 0.05 / 2 beside a
    # t test: Tarone keeps the t test alone, at the full level.
    assert tarone([0.0, 0.03, 0.03], 0.05) == [True, False, False]
    assert tarone([0.0] * 4, 0.05) == [True] * 4
    assert tarone([1.0, 1.0], 0.05) == [False, False]


def test_lines_that_cannot_reach_the_level_do_not_weigh_on_those_that_can():
    """A speed line with p 0.03 beside three DQN-style exact tests on three seeds (smallest p
    0.25 each): Holm over all four would lift it to 0.12; the three cannot be winners however
    the data fall, so they stay out of the family and the speed line names its winner."""
    speed = Estimate(1.3, 1.05, 1.6, 0.03, 3, "paired t")
    exact = [paired_iqm_ratio([100.0, 110.0, 120.0], [200.0, 220.0, 240.0]) for _ in range(3)]
    entries = decide(
        [Line("speed", "a", "b", speed, True)]
        + [Line(f"episodes {i}", "a", "b", e, False) for i, e in enumerate(exact)],
        "cpu",
    )
    assert entries[0]["outcome"] == "winner" and entries[0]["p_holm"] == pytest.approx(0.03)
    assert [e["family"] for e in entries] == [True, False, False, False]
    assert all(e["outcome"] == "inconclusive" for e in entries[1:])
    assert all("outside Holm's family (Tarone)" in e["detail"] for e in entries[1:])
    assert family_note(entries) == (
        "Holm-corrected over 1 line; 3 outside the family: they cannot reach the level"
    )


# --- the three outcomes ---


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
    assert [e["winner"] for e in entries] == [None if i else "a" for i in range(3)]
    assert all(e["hardware"] == "cpu" and e["level"] == LEVEL for e in entries)
    assert "a/b" in describe(entries[0]) and "95%" in describe(entries[0])


def test_an_interval_inside_the_margin_is_equivalent_never_a_winner():
    """1% faster, measured so well that the interval [1.005, 1.015] excludes 1 and lies inside
    the +-5% margin: the frameworks are equivalent at that margin (two one-sided tests, each at
    2.5%), and the line says so, not "a" and not "equivalent after Holm's correction"."""
    tight = Estimate(1.01, 1.005, 1.015, 1e-6, 10, "paired t")
    entries = decide([Line(q, "a", "b", tight, True) for q in "wxyz"], "cpu")
    assert [e["outcome"] for e in entries] == ["equivalent"] * 4
    assert all(e["winner"] is None for e in entries)
    text = describe(entries[0])
    assert "equivalent within +-5% (two one-sided tests, 2.5% each)" in text
    assert "after Holm" not in text
    # Accuracy: the difference in points inside +-1 point, however small its p.
    points = Estimate(1.002, 1.001, 1.003, 1e-4, 5, "paired t", difference_points=(0.2, 0.1, 0.3))
    (entry,) = decide([Line("acc", "a", "b", points, True)], "cpu")
    assert entry["outcome"] == "equivalent" and "+-1 point" in describe(entry)


def test_a_line_whose_interval_alone_excludes_one_says_holm_made_it_inconclusive():
    """Four lines with the same p of 0.03: each 95% interval excludes 1, but Holm's correction
    over four lines lifts every p to 0.12, so none is a winner, and the text says why."""
    estimate = Estimate(1.6, 1.08, 2.38, 0.03, 3, "paired t")
    entries = decide([Line(q, "a", "b", estimate, True) for q in "wxyz"], "cpu")
    assert [e["outcome"] for e in entries] == ["inconclusive"] * 4
    assert entries[0]["p_holm"] == pytest.approx(0.12)
    text = describe(entries[0])
    assert "inconclusive after Holm's correction" in text and "0.12 after Holm" in text


def test_describe_reads_entries_written_before_the_family_and_power_fields():
    entry = {
        "question": "q", "first": "a", "second": "b", "outcome": "inconclusive", "winner": None,
        "ratio": 1.1, "interval": [0.9, 1.3], "repeats": 3, "p_value": 0.2, "p_holm": 0.4,
        "detectable": 0.2, "method": "paired t", "margin": "+-5%", "level": 0.95,
        "hardware": "cpu", "detail": "",
    }  # fmt: skip
    assert describe(entry).startswith("q: inconclusive (a/b 1.100x")
