"""Adding pairs until decided (sequential.py) against known truth, with the real stopping rule.

Each simulated run reveals pairs one at a time to `until_decided`, which looks after every new
pair from the fourth on and stops when every line is decided; the run's verdicts are then
decided at its stopping time, Holm over its four lines (speed with windows, accuracy, two
serving formats). The noise is the recorded machine's (tests/test_verdict_simulations.py:
drift from job to job, transient load, outlier serving rounds), and a quieter machine's (the
same noise, shrunk, as lockstep timing would give), at which lines do reach "equivalent" and
runs stop early: where optional stopping does its harm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from test_verdict_simulations import (
    at_most,
    correct_answers,
    serving_p50s,
    training_speeds,
)

from tests_support import hang_guard
from twinbench.experiments import sequential
from twinbench.experiments.sequential import (
    BUDGET,
    DECIDED,
    MAX,
    MIN_LOOK_PAIRS,
    anytime_p,
    confidence_sequence,
    parse_duration,
    until_decided,
)
from twinbench.experiments.verdicts import Line, accuracy_ratio, decide, paired_ratio

CAP_S = 300  # a hang guard per test; the largest takes about a minute here


@pytest.fixture(autouse=True)
def runtime_cap() -> Iterator[None]:
    with hang_guard(CAP_S):
        yield


def _shrink(values: list[float], center: float, by: float) -> list[float]:
    return [math.exp(math.log(center) + (math.log(v) - math.log(center)) * by) for v in values]


def quiet_answers(rng: np.random.Generator, seeds: int, images: int = 3000) -> tuple:
    """Per-image correctness of two arms' models with equal skill on a large test set: each
    seed's model gets each image right by its difficulty plus noise of its own."""
    hard = rng.random(images)
    return tuple(hard + rng.normal(0, 0.05, (seeds, images)) < 0.9 for _ in range(2))


def simulate(
    runs: int,
    seed: int,
    log_ratio: float = 0.0,
    quiet: float = 1.0,
    max_pairs: int = 20,
    only: str | None = None,
) -> tuple[float, float, list[int | None], list[int]]:
    """Runs of the whole procedure; `quiet` < 1 shrinks the serving noise by that power and
    makes the accuracy line's seeds alike, so that those lines reach "equivalent" within a few
    pairs, while speed keeps the recorded noise: each run then stops at the first look where
    speed too reads decided. Returns the share naming a false winner (any winner on an
    A/A line; with a true speed difference, any other winner or the wrong side), the share
    naming the right speed winner, the pair count at which speed was first decided, and the
    pairs each run took."""
    rng = np.random.default_rng(seed)
    false_winners, right = 0, 0
    speed_at: list[int | None] = []
    taken: list[int] = []
    for _ in range(runs):
        first, second, first_w, second_w = training_speeds(rng, max_pairs, log_ratio)
        if quiet != 1.0:
            right_a, right_b = quiet_answers(rng, max_pairs)
        else:
            right_a, right_b, _ = correct_answers(rng, max_pairs)
        onnx = [_shrink(x, 1.75, quiet) for x in serving_p50s(rng, max_pairs)]
        native = [_shrink(x, 1.75, quiet) for x in serving_p50s(rng, max_pairs)]
        seen = [0]

        def add_pair(seen: list[int] = seen) -> None:
            seen[0] += 1

        def lines(
            seen=seen,
            first=first,
            second=second,
            first_w=first_w,
            second_w=second_w,
            right_a=right_a,
            right_b=right_b,
            onnx=onnx,
            native=native,
        ) -> list[Line]:
            k = seen[0]
            out = [
                Line(
                    "speed",
                    "a",
                    "b",
                    paired_ratio(first[:k], second[:k], first_w[:k], second_w[:k]),
                    True,
                ),
                Line("accuracy", "a", "b", accuracy_ratio(right_a[:k], right_b[:k]), True),
                Line("onnx", "a", "b", paired_ratio(onnx[0][:k], onnx[1][:k]), False),
                Line("native", "a", "b", paired_ratio(native[0][:k], native[1][:k]), False),
            ]
            return [line for line in out if only in (None, line.question)]

        # fmt: skip

        record = until_decided(add_pair, lines, max_pairs=max_pairs)
        entries = decide(sequential.anytime_lines(lines()), "sim")
        winners = {e["question"]: e["winner"] for e in entries if e["outcome"] == "winner"}
        speed = winners.pop("speed", None)
        if log_ratio:
            false_winners += bool(winners) or speed == "b"
            right += speed == "a"
        else:
            false_winners += bool(winners) or speed is not None
        speed_at.append(record["decided_at"].get("speed"))
        taken.append(record["pairs"])
    return false_winners / runs, right / runs, speed_at, taken


@pytest.mark.parametrize(("quiet", "runs", "seed"), [(1.0, 2000, 31), (0.1, 1000, 32)])
def test_stopping_when_decided_keeps_false_winners_under_five_percent(quiet, runs, seed):
    """The Done-when check: 2,000 A/A runs of the whole procedure, looked at after every pair,
    stopped at the first look where every line is decided (or at 20 pairs), Holm over the four
    lines at the stopping time; and 1,000 on the quieter machine."""
    rate, _, _, _ = simulate(runs, seed, quiet=quiet)
    assert at_most(rate, runs), rate


def test_the_fixed_sample_rule_with_optional_stopping_names_too_many_false_winners(monkeypatch):
    """One line (a row of `bench training --until-decided`), A/A, recorded noise: stopped at
    the first look where it reads decided, the anytime-valid rule keeps under 5%; with the
    fixed-sample t test in its place, the same procedure names a false winner in about one run
    in five, so the simulations here catch the wrong rule."""
    runs = 600
    rate, _, _, _ = simulate(runs, 33, only="speed")
    assert at_most(rate, runs), rate
    monkeypatch.setattr(sequential, "anytime_lines", lambda lines, level=0.95: list(lines))
    rate, _, _, _ = simulate(runs, 33, only="speed")
    assert not at_most(rate, runs), rate
    assert rate > 0.12, rate


def test_a_true_one_and_a_half_times_speed_difference_is_named_within_a_few_pairs():
    """Positive control: the first arm 1.5x faster under the recorded noise, the other three
    lines A/A: the speed line names the first arm, in most runs by the eighth pair."""
    runs = 300
    false_rate, right, speed_at, _ = simulate(runs, 34, log_ratio=math.log(1.5))
    assert right >= 0.9, right
    assert np.mean([a is not None and a <= 8 for a in speed_at]) >= 0.8
    assert at_most(false_rate, runs), false_rate


def test_the_anytime_p_stays_valid_at_the_worst_look_and_the_sequence_covers_every_look():
    """Normal A/A pairs: the chance that the anytime p ever falls under 5% in 50 looks, and that
    the confidence sequence ever misses the truth, are both at most 5%; a fixed t test looked at
    the same way crosses far more often."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(35)
    runs, crossed, missed, naive = 2000, 0, 0, 0
    for _ in range(runs):
        x = rng.normal(0.3, 0.2, 50)
        crossed += anytime_p(x - 0.3) < 0.05
        low, high = confidence_sequence(x)
        missed += not (low <= 0.3 <= high)
        naive += any(scipy_stats.ttest_1samp(x[:k] - 0.3, 0).pvalue < 0.05 for k in range(3, 51, 3))
    assert at_most(crossed / runs, runs), crossed / runs
    assert at_most(missed / runs, runs), missed / runs
    assert naive / runs > 0.15, naive / runs


def test_the_first_look_is_the_first_pair_count_that_can_decide_anything():
    """One pair short of the first look, pairs as decisive as pairs get (a large effect, almost
    no spread) give no winner and no bounded sequence; at the first look they give both. A look
    earlier would only spend time; a first look later would make every run pay for pairs it did
    not need."""
    decisive = [0.5 + 1e-6 * k for k in range(MIN_LOOK_PAIRS)]
    assert anytime_p(decisive[:-1]) >= 0.05
    assert confidence_sequence(decisive[:-1]) == (-math.inf, math.inf)
    assert anytime_p(decisive) < 0.05
    low, high = confidence_sequence(decisive)
    assert 0.49 < low <= high < 0.51
    assert MIN_LOOK_PAIRS == sequential.first_decisive_pairs() == 4


def test_the_stopping_record_says_why():
    steps = iter(range(1000))
    clock = lambda: float(next(steps)) * 10  # noqa: E731
    count = [0]

    def add() -> None:
        count[0] += 1

    def same() -> list[Line]:  # identical figures: no spread, never decided
        k = count[0]
        return [Line("speed", "a", "b", paired_ratio([1.0] * k, [1.0] * k), True)]

    record = until_decided(add, same, budget_s=55, clock=clock)
    assert record["stopped"] == BUDGET and record["pairs"] == MIN_LOOK_PAIRS
    count[0] = 0
    record = until_decided(add, same, max_pairs=4)
    assert record["stopped"] == MAX and record["pairs"] == 4
    count[0] = 0
    rng = np.random.default_rng(36)
    big = list(np.exp(rng.normal(math.log(1.5), 0.02, 30)))

    def clear() -> list[Line]:
        k = count[0]
        return [Line("speed", "a", "b", paired_ratio(big[:k], [1.0] * k), True)]

    record = until_decided(add, clear)
    assert record["stopped"] == DECIDED and record["decided_at"] == {"speed": record["pairs"]}


@pytest.mark.parametrize(
    ("text", "seconds"), [("20m", 1200), ("1h", 3600), ("90s", 90), ("1h30m", 5400), ("45", 45)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "20x", "1h2", "-5m", "0s", "twenty"])
def test_a_bad_duration_is_a_clear_error(text):
    with pytest.raises(ValueError, match="duration|positive"):
        parse_duration(text)


@pytest.mark.parametrize("command", ["compare", "bench training"])
def test_the_options_parse_and_a_bad_budget_is_refused_with_a_clear_message(command):
    from twinbench.cli.experiments import until_decided_args
    from twinbench.cli.main import parser

    args = parser().parse_args([*command.split(), "--until-decided", "--budget", "1h30m"])
    assert args.until_decided and until_decided_args(args) == 5400 and args.max_pairs == 20
    args = parser().parse_args([*command.split(), "--until-decided", "--budget", "20x"])
    with pytest.raises(SystemExit, match="--budget: not a duration: '20x'"):
        until_decided_args(args)
    args = parser().parse_args([*command.split(), "--budget", "20m"])
    with pytest.raises(SystemExit, match="goes with --until-decided"):
        until_decided_args(args)


def test_compare_lockstep_until_parses_and_a_bad_one_is_refused_with_a_clear_message():
    from twinbench.cli.experiments import lockstep_until_args
    from twinbench.cli.main import parser

    assert lockstep_until_args(parser().parse_args(["compare"])) == 340  # the default, 5m40s
    assert lockstep_until_args(parser().parse_args(["compare", "--lockstep-until", "15m"])) == 900
    with pytest.raises(SystemExit, match="--lockstep-until: not a duration: '5x'"):
        lockstep_until_args(parser().parse_args(["compare", "--lockstep-until", "5x"]))
    with pytest.raises(SystemExit, match="--max-pairs must be 4 or more"):
        lockstep_until_args(parser().parse_args(["compare", "--max-pairs", "3"]))
    # a count of pairs given: nothing fills, and --max-pairs is --until-decided's alone
    assert lockstep_until_args(parser().parse_args(["compare", "--lockstep-pairs", "2",
                                                    "--max-pairs", "3"])) == 340  # fmt: skip


def test_a_run_whose_jobs_all_fail_stops_at_the_first_look():
    count = [0]

    def add() -> None:
        count[0] += 1

    record = until_decided(add, lambda: [])
    assert record["stopped"] == sequential.NOTHING and record["pairs"] == MIN_LOOK_PAIRS


def test_bench_training_until_decided_adds_pairs_and_names_the_faster_arm(monkeypatch):
    """`bench training --until-decided` on stand-in jobs (torch 1.5x faster, 2% noise): the
    row's pairs alternate their order, share a seed per pair, stop once decided, and the verdict
    is the anytime-valid one."""
    from twinbench.api import trainer_pb2 as tpb
    from twinbench.experiments import bench_training

    rng = np.random.default_rng(37)
    ran: list[tuple[str, int]] = []

    def fake_job(client, spec: tpb.JobSpec) -> tpb.Job:
        ran.append((spec.framework, spec.seed))
        rate = 6000 * (1.5 if spec.framework == "torch" else 1.0) * math.exp(rng.normal(0, 0.02))
        return tpb.Job(
            state=tpb.SUCCEEDED, steady_samples_per_second=rate,
            window_samples_per_second=list(rate * np.exp(rng.normal(0, 0.02, 5))),
        )  # fmt: skip

    monkeypatch.setattr(bench_training, "_run_job", fake_job)
    monkeypatch.setattr(
        bench_training, "preflight", lambda: {"checks": [], "warnings": [], "quiet": True}
    )
    monkeypatch.setattr(bench_training, "warn", lambda checked: None)
    options = bench_training.BenchOptions(models=("mlp",), until_decided=True, max_pairs=10)
    results = bench_training.run_training_bench(None, options, progress=lambda line: None)  # type: ignore[arg-type]
    (row,) = results["rows"]
    stopping = row["stopping"]
    assert stopping["stopped"] == DECIDED and MIN_LOOK_PAIRS <= stopping["pairs"] <= 6
    assert ran[:4] == [("torch", 0), ("tf", 0), ("tf", 1), ("torch", 1)]  # A B, B A
    (verdict,) = results["verdicts"]
    assert verdict["winner"] == "torch" and "anytime-valid" in verdict["method"]
    assert verdict["repeats"] == stopping["pairs"]
    notes = " ".join(bench_training._timing_notes(results))
    assert (
        f"mlp default fp32: added pairs until decided: stopped after {stopping['pairs']}" in notes
    )
