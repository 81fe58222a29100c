"""A comparison's design: its arms (a framework each, A/A runs included), its options, the pairs
of arms its verdicts compare, and the order in which the arms' repeats run (A B, B A, ... or
A B C, C B A, ... so that drift weighs on every arm alike)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.disturbance import DISTURBANCE_LIMIT
from twinbench.serving.repository import FRAMEWORK_FORMATS

# Each framework's own export format (the first of its formats): TorchScript, SavedModel,
# StableHLO. Serving verdicts compare ONNX with ONNX and native format with native format.
NATIVE_FORMATS = tuple(dict.fromkeys(formats[0] for formats in FRAMEWORK_FORMATS.values()))
FORMAT_GROUPS = (("onnx", ("onnx",)), ("native format", NATIVE_FORMATS))
# The most arms one comparison takes: every framework once (torch,tf,jax); each pair of arms is
# compared, so three arms ask three times as many questions as two.
MAX_ARMS = 3

# Lockstep pairs decide training speed where sequential repeats on a shared machine rarely can
# (LeNet-5 on 2 cores: 1.19x [1.12, 1.27] from 3 pairs, against [0.62, 1.70] from the repeats of
# the same run). With one thread fewer than the CPUs (lockstep_threads), process pairs of LeNet-5
# on a shared 2-CPU machine still differ more than their blocks explain (a log ratio SD of 0.053
# to 0.067 between pairs, 0.035 to 0.056 within, at 7 block pairs), so more, shorter pairs
# narrow the interval more than fewer, longer ones: each pair costs about 6 s of its own (two
# fresh processes importing their framework and warming up) and 1.2 s per block pair.
LOCAL_LOCKSTEP_BLOCK_PAIRS = 7
# When compare starts the services on this host itself and is told no --lockstep-pairs, its
# lockstep pairs fill the run up to this wall time from its start (at least FILL_MIN_PAIRS,
# lockstep.another_pair_fits): LeNet-5's whole comparison, `make demo`, then ends within about
# six minutes whatever its other phases took, with as many pairs as those left room for (11 in
# each of five runs on a 2-CPU machine, docs/lockstep.md#threads).
LOCAL_LOCKSTEP_UNTIL_S = 340.0


def lockstep_threads(
    asked: tuple[int, int] | None, settings_threads: int, cpus: int
) -> tuple[int, int] | None:
    """Each lockstep arm's intra-op threads: `asked` (--arm-threads), else the settings' own
    count when they set one, else one fewer than the CPUs (None on one CPU: the settings' one).

    With a thread on every CPU, each step of either framework waits at every parallel region for
    the slowest thread, and anything else the host runs (the OS, a neighbour's steal) preempts
    one: the two frameworks absorb that differently, so their ratio follows the host's load
    rather than holding still (LeNet-5 on a shared 2-CPU machine: a torch/tf log ratio spread of
    0.134 between process pairs at two threads, 0.055 at one, no more than a pair's own blocks
    explain). Both arms get the same count, and the job records show it as read back."""
    if asked is not None:
        return asked
    if settings_threads or cpus < 2:
        return None
    return (cpus - 1, cpus - 1)


@dataclass
class Arm:
    """One side of the comparison: a framework, its seeds, and its jobs, one per repeat."""

    label: str
    framework: str
    seeds: list[int]
    jobs: list[tpb.Job] = field(default_factory=list)


@dataclass
class CompareOptions:
    frameworks: tuple[str, ...]  # one per arm, two or three; a framework twice is an A/A pair
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
    # Speed-only lockstep process pairs after the repeats (lockstep.md); None: as many as fill
    # the run up to `lockstep_until_s` when compare started the services on this host itself,
    # else none (the host that trains is then another, and a pair timed here would time this one).
    lockstep_pairs: int | None = None
    lockstep_until_s: float = LOCAL_LOCKSTEP_UNTIL_S
    # Each lockstep arm's intra-op threads (a positive control's handicap); None: the settings'.
    lockstep_threads: tuple[int, int] | None = None
    # A block pair (lockstep speed, serving blocks) more disturbed than this is redone.
    disturbance_limit: float = DISTURBANCE_LIMIT
    # Add pairs of repeats until every line is decided (sequential.py), within a budget.
    until_decided: bool = False
    budget_s: float | None = None
    max_pairs: int = 20
    # The serving blocks' load: 0, `users` callers in a closed loop; else an open loop of this
    # many requests per second per export (`arrivals` gaps), timed from when each fell due.
    serving_rate: float = 0.0
    arrivals: str = "poisson"
    # Serve each export with the dynamic batching `bench serving --scenario tune` wrote to its
    # config.pbtxt (twinbench.experiments.batching_tune), instead of the gateway's settings.
    tuned_batching: bool = False


def plan_arms(frameworks: tuple[str, ...], repeats: int, seed: int) -> list[Arm]:
    """One arm per framework named. Arms of different frameworks share each repeat's seed (one
    shared init); arms of one framework each get their own, since one seed twice gives
    bit-identical runs that prove nothing. A framework named more than once gets its arms'
    letters (A, B, C by position) in its labels."""
    copies = max(frameworks.count(fw) for fw in frameworks)
    arms = []
    for k, fw in enumerate(frameworks):
        nth = frameworks[:k].count(fw)  # which copy of its framework this arm is
        label = f"{fw} {chr(ord('A') + k)}" if frameworks.count(fw) > 1 else fw
        arms.append(Arm(label, fw, [seed + copies * i + nth for i in range(repeats)]))
    return arms


def arm_pairs(arms: list[Arm]) -> list[tuple[Arm, Arm]]:
    """Every pair of arms, in the arms' order: (A, B) for two; (A, B), (A, C), (B, C) for three."""
    return list(itertools.combinations(arms, 2))


def run_order(repeats: int, arms: int = 2) -> list[tuple[int, int]]:
    """(repeat, arm) in the order A B, B A, A B, ... (A B C, C B A, ... for three): drift over
    the run cancels in the pairs."""
    forward = tuple(range(arms))
    return [(i, k) for i in range(repeats) for k in (forward if i % 2 == 0 else forward[::-1])]
