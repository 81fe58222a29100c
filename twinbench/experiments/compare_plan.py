"""A comparison's design: its arms (a framework each, A/A runs included), its options, and the
order in which the arms' repeats run (A B, B A, ... so that drift weighs on both alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twinbench.api import trainer_pb2 as tpb

NATIVE_FORMATS = ("torchscript", "savedmodel")

# Lockstep pairs decide training speed where sequential repeats on a shared machine rarely can
# (LeNet-5 on 2 cores: 1.19x [1.12, 1.27] from 3 pairs, against [0.62, 1.70] from the repeats of
# the same run), for about a minute more.
LOCAL_LOCKSTEP_PAIRS = 3


@dataclass
class Arm:
    """One side of the comparison: a framework, its seeds, and its jobs, one per repeat."""

    label: str
    framework: str
    seeds: list[int]
    jobs: list[tpb.Job] = field(default_factory=list)


@dataclass
class CompareOptions:
    frameworks: tuple[str, str]
    repeats: int
    users: int  # Locust users per served model; 0 skips the load test
    duration: str  # Locust run time per model and round
    rounds: int  # serving rounds, alternating the models' order; round r serves repeat r's exports
    serving_batch_size: int
    reports: Path
    sample: int  # a test image each export classifies once
    bench_seconds: float  # per serving-cost measurement; 0 skips it
    command: str
    level: float = 0.95  # of every interval; Holm keeps the report's false winners under 1 - level
    # Speed-only lockstep process pairs after the repeats (lockstep.md); None: LOCAL_LOCKSTEP_PAIRS
    # when compare started the services on this host itself, else none (the host that trains
    # is then another, and a pair timed here would time this one).
    lockstep_pairs: int | None = None
    # Each lockstep arm's intra-op threads (a positive control's handicap); None: the settings'.
    lockstep_threads: tuple[int, int] | None = None
    # Add pairs of repeats until every line is decided (sequential.py), within a budget.
    until_decided: bool = False
    budget_s: float | None = None
    max_pairs: int = 20


def plan_arms(frameworks: tuple[str, str], repeats: int, seed: int) -> list[Arm]:
    first, second = frameworks
    if first == second:
        return [
            Arm(f"{first} A", first, [seed + 2 * i for i in range(repeats)]),
            Arm(f"{second} B", second, [seed + 2 * i + 1 for i in range(repeats)]),
        ]
    seeds = [seed + i for i in range(repeats)]
    return [Arm(first, first, list(seeds)), Arm(second, second, list(seeds))]


def run_order(repeats: int) -> list[tuple[int, int]]:
    """(repeat, arm) in the order A B, B A, A B, ...: drift over the run cancels in the pairs."""
    return [(i, k) for i in range(repeats) for k in ((0, 1) if i % 2 == 0 else (1, 0))]
