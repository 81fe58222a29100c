"""Lockstep process pairs added until decided: bench training --lockstep --until-decided and
compare's lockstep speed line, on stand-in workers whose speeds are known (a step of 1 ms of
CPU work against 2 ms), and the rule that compare's sequential speed line, set aside, decides
nothing and stays out of Holm's family. Nothing here asserts on how fast anything ran."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_lockstep import fake_arm

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.lockstep import FILL_MIN_PAIRS
from twinbench.experiments.lockstep_pairs import LockstepOptions
from twinbench.experiments.sequential import (
    MIN_LOOK_PAIRS,
    SET_ASIDE,
    anytime_lines,
    set_aside,
    until_decided,
)
from twinbench.experiments.verdicts import Line, decide, paired_ratio

QUICK = LockstepOptions(block_pairs=4, block_steps=12, calibration_steps=3,
                        disturbance_limit=math.inf)  # fmt: skip
STEP_MS = {"torch": "1", "tf": "2", "torch A": "2", "torch B": "2"}


def known_speeds(monkeypatch) -> list:
    """lockstep.starter replaced by stand-in workers of known step times; the threads asked for
    each arm are kept, to check that --arm-threads reaches the arms."""
    from twinbench.experiments import lockstep

    threads: list = []

    def starter(settings, framework, spec, label, arm_threads=None):
        threads.append((label, arm_threads))
        return fake_arm(label, "--step-ms", STEP_MS[label])

    monkeypatch.setattr(lockstep, "starter", starter)
    return threads


def test_the_lockstep_bench_adds_process_pairs_until_its_line_is_decided(monkeypatch):
    """Positive control: the first arm steps twice as fast; pairs are added from the minimum
    until the anytime-valid test names it, and the row keeps the stopping record."""
    from twinbench.experiments import lockstep
    from twinbench.experiments.bench_training import BenchOptions, report_pages

    threads = known_speeds(monkeypatch)
    bench = BenchOptions(models=("lenet5",), warmup_steps=1, until_decided=True, max_pairs=8)
    handicap = LockstepOptions(**{**QUICK.__dict__, "arm_threads": (1, 2)})
    results = lockstep.run_lockstep_bench(None, bench, handicap, progress=lambda text: None)
    (row,) = results["rows"]
    stopping = row["stopping"]
    assert stopping["stopped"] == "decided"
    assert MIN_LOOK_PAIRS <= stopping["pairs"] == len(row["lockstep"]) < 8
    (verdict,) = results["verdicts"]
    assert verdict["winner"] == "torch" and "anytime-valid" in verdict["method"]
    assert verdict["repeats"] == stopping["pairs"]
    assert set(threads) == {("torch", 1), ("tf", 2)}
    assert "added pairs until decided: stopped after" in report_pages(results)[0]


def test_an_a_a_lockstep_bench_until_decided_names_no_winner(monkeypatch):
    from twinbench.experiments import lockstep
    from twinbench.experiments.bench_training import BenchOptions

    known_speeds(monkeypatch)
    monkeypatch.setitem(STEP_MS, "tf", "1")
    bench = BenchOptions(models=("lenet5",), warmup_steps=1, until_decided=True, max_pairs=4)
    results = lockstep.run_lockstep_bench(None, bench, QUICK, progress=lambda text: None)
    (row,) = results["rows"]
    assert row["stopping"]["pairs"] >= MIN_LOOK_PAIRS
    assert all(v["winner"] is None for v in results["verdicts"])


def noisy_sequential_speed(n: int = 3) -> Line:
    """A sequential speed line that alone would name a winner: set aside, it must not."""
    first = [100.0, 101.0, 99.0, 100.5][:n]
    return Line("faster to train (steady samples/s)", "torch A", "torch B",
                paired_ratio(first, [x / 1.3 for x in first]), higher_is_better=True)  # fmt: skip


def test_compare_adds_lockstep_pairs_until_the_speed_line_alone_is_decided(monkeypatch):
    """The run waits on the lockstep line only (an undecidable accuracy line does not keep it
    going), every look corrects over the report's lines, and the sequential speed line set
    aside is outside the family and names no winner, however small its p."""
    from twinbench.experiments import lockstep

    known_speeds(monkeypatch)
    undecided = Line("more accurate (test accuracy)", "torch", "tf",
                     paired_ratio([1.0, 1.3, 0.8], [1.1, 0.9, 1.2]), higher_is_better=True)  # fmt: skip
    others = [set_aside(noisy_sequential_speed()), undecided]
    spec = tpb.JobSpec(model="lenet5", warmup_steps=1)
    seeds = [(i, i) for i in range(8)]
    record, lines = lockstep.compare_speed_pairs(
        None, ("torch", "tf"), ("torch", "tf"), spec, seeds, 0.95, QUICK,
        progress=lambda text: None, until_decided_with=others,
    )  # fmt: skip
    stopping = record["stopping"]
    assert stopping["stopped"] == "decided" and MIN_LOOK_PAIRS <= stopping["pairs"] < 8
    assert len(record["process_pairs"]) == stopping["pairs"]
    assert "added pairs until decided" in record["summary"]["note"]
    entries = decide(anytime_lines([*others, *lines]), "cpu")
    speed, accuracy, in_lockstep = entries
    assert not speed["family"] and speed["winner"] is None and SET_ASIDE in speed["detail"]
    assert accuracy["outcome"] == "inconclusive"
    assert in_lockstep["winner"] == "torch" and in_lockstep["family_size"] == 2


def test_set_aside_lines_never_decide_a_simulated_run():
    """Simulated A/A runs of the stopping rule with a set-aside line beside the line it waits
    on: process-pair log ratios as the lockstep runs recorded them (a spread of 0.02 between
    pairs, one pair in ten shifted by 0.08); the sequential line is minutes-apart noise (0.3).
    False winners stay within 5% + 3 Monte Carlo SE, and the set-aside line never names one."""
    rng = np.random.default_rng(7)
    runs, false_winners = 300, 0
    for _ in range(runs):
        lockstep_logs: list[float] = []
        sequential: list[tuple[float, float]] = []

        def add_pair(lockstep_logs=lockstep_logs, sequential=sequential) -> None:
            shift = 0.08 * rng.choice([-1, 1]) if rng.random() < 0.1 else 0.0
            lockstep_logs.append(float(rng.normal(0, 0.02)) + shift)
            sequential.append((100 * math.exp(rng.normal(0, 0.3)), 100.0))

        def lines_now(lockstep_logs=lockstep_logs, sequential=sequential) -> list[Line]:
            a, b = zip(*sequential, strict=True)
            aside = set_aside(Line("faster to train (steady samples/s)", "A", "B",
                                   paired_ratio(list(a), list(b)), higher_is_better=True))  # fmt: skip
            rates = [100 * math.exp(x) for x in lockstep_logs]
            speed = Line("in lockstep", "A", "B", paired_ratio(rates, [100.0] * len(rates)),
                         higher_is_better=True)  # fmt: skip
            return [aside, speed]

        stopping = until_decided(add_pair, lines_now, max_pairs=12, questions={"in lockstep"})
        entries = decide(anytime_lines(lines_now()), "cpu")
        assert entries[0]["winner"] is None and not entries[0]["family"]
        false_winners += any(e["winner"] for e in entries)
        assert stopping["pairs"] >= MIN_LOOK_PAIRS
    se = math.sqrt(0.05 * 0.95 / runs)
    assert false_winners / runs <= 0.05 + 3 * se


@pytest.mark.parametrize("seconds_left, pairs", [(-1.0, FILL_MIN_PAIRS), (3600.0, 6)])
def test_compare_lockstep_pairs_fill_the_run_from_the_fewest_to_the_most(
    monkeypatch, seconds_left, pairs
):
    """Filling a run: with its time already spent, the fewest pairs still run; with an hour
    left, every seed it was given (the most), and the record and note say how many."""
    import time

    from twinbench.experiments import lockstep

    known_speeds(monkeypatch)
    spec = tpb.JobSpec(model="lenet5", warmup_steps=1)
    seeds = [(i, i) for i in range(6)]
    record, (line,) = lockstep.compare_speed_pairs(
        None, ("torch", "tf"), ("torch", "tf"), spec, seeds, 0.95, QUICK,
        progress=lambda text: None, fill_until=time.monotonic() + seconds_left,
    )  # fmt: skip
    assert len(record["process_pairs"]) == line.estimate.repeats == pairs
    assert record["filled"] == {"pairs": pairs, "min_pairs": FILL_MIN_PAIRS, "max_pairs": 6}
    assert f"The pairs filled the run's time: {pairs}" in record["summary"]["note"]


def test_another_pair_fits_only_when_it_ends_by_the_deadline():
    from twinbench.experiments.lockstep import another_pair_fits

    assert another_pair_fits([], now=100.0, deadline=0.0)  # below the fewest: always
    three = [20.0, 15.0, 16.0]
    assert another_pair_fits(three, now=100.0, deadline=0.0, min_pairs=4)
    four = [*three, 18.0]
    assert another_pair_fits(four, now=100.0, deadline=118.0)  # as long as the last: in time
    assert not another_pair_fits(four, now=100.0, deadline=117.9)
