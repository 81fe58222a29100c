"""`twinbench bench serving --scenario server`: the highest Poisson arrival rate each export and
path sustains with p99 under a target (MLPerf's server scenario), beside perf_analyzer's own
search of the same.

Each rate step is an open loop (`loadtests/loadgen -rate`): requests fall due on a Poisson
schedule whatever the server does and each is timed from when it fell due, so a server that falls
behind sees its queue in the p99; a step passes when its p99 is at most the target, no request
found the in-flight bound full and none failed. A step runs long enough for about `min_requests` requests (1,000
by default, so that the p99 is the 10th slowest, not the slowest). The search doubles the rate
from `start_rate` until a step fails, then bisects (geometrically) between the last pass and the
first failure until they are within `precision`. The whole search is repeated; the rate is given
as the median of the searches with their range, which holds the searches' median with probability
1 - 2^(1 - n) for n searches (75% for 3, 94% for 5): a distribution-free interval, since a
shared machine's searches are neither normal nor independent of the minute they ran in.

perf_analyzer searches the same way in spirit (`--request-rate-range` with `--binary-search`,
`--request-distribution poisson`, `--latency-threshold`, `--percentile=99`) but times each request
from when it was actually sent: past capacity its sender threads fall behind the schedule (its
"Delayed Request Count") and the queue that builds up is never in its latencies, so it reports
rates that ours, timing from the schedule, rejects.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from twinbench.client.stack import LocalStack
from twinbench.experiments.bench_serving import (
    PATHS,
    _restart_gateway,
    cpu_of,
    open_loop_flags,
    parse_perf_analyzer_csv,
    perf_analyzer_command,
    perf_analyzer_env,
    run_load_generator,
    server_cpu_per_1k,
    stack_pids,
)
from twinbench.serving.repository import framework_of

# The lowest rate searched: a step there takes min_requests / MIN_RATE seconds.
MIN_RATE = 50.0
BOUND = 4096  # requests in flight at most: far above what a p99 target of milliseconds allows
WARM_UP_S = 0.5


@dataclasses.dataclass
class Step:
    rate: float
    requests: int
    p99_ms: float | None  # None: no request was answered
    over_bound: int
    failures: int
    late: int
    client_cpu: float
    server_cpu_s_per_1k: float | None
    passed: bool


@dataclasses.dataclass
class Search:
    path: str
    model: str
    search: int  # which repetition
    max_rate: float  # the highest rate that passed; 0: none did
    steps: list[Step]


def step_seconds(rate: float, min_requests: int, min_seconds: float = 1.0) -> float:
    """How long a step at `rate` runs: about `min_requests` requests, and at least `min_seconds`."""
    return max(min_requests / rate, min_seconds)


def search_max_rate(
    measure: Callable[[float], Step],
    start_rate: float = 100.0,
    precision: float = 0.1,
    max_rate: float = 200_000.0,
    min_rate: float = 1.0,
) -> tuple[float, list[Step]]:
    """The highest rate whose step passes, found by doubling from `start_rate` to the first
    failure (halving, when `start_rate` itself fails) and then bisecting in ratio until the last
    pass and the first failure are within a factor 1 + `precision`; with the steps taken."""
    steps: list[Step] = []

    def passes(rate: float) -> bool:
        steps.append(measure(rate))
        return steps[-1].passed

    low, high = 0.0, math.inf
    rate = start_rate
    if passes(rate):
        low = rate
        while math.isinf(high) and rate * 2 <= max_rate:
            rate *= 2
            if passes(rate):
                low = rate
            else:
                high = rate
        if math.isinf(high):
            return low, steps  # passed up to the cap
    else:
        high = rate
        while low == 0.0 and rate / 2 >= min_rate:
            rate /= 2
            if passes(rate):
                low = rate
            else:
                high = rate
        if low == 0.0:
            return 0.0, steps
    while high / low > 1 + precision:
        middle = math.sqrt(low * high)
        if passes(middle):
            low = middle
        else:
            high = middle
    return low, steps


def open_loop_step(
    address: str,
    request: bytes,
    rate: float,
    p99_target_ms: float,
    min_requests: int,
    cpus: set[int] | None,
    pids: list[int],
    seed: int,
) -> Step:
    """One rate step: a Poisson open loop at `rate` against `address`, judged against the target."""
    before = cpu_of(pids)
    r = run_load_generator(
        address, request, BOUND, step_seconds(rate, min_requests), cpus,
        flags=open_loop_flags(rate, "poisson", seed, WARM_UP_S),
    )  # fmt: skip
    cost = server_cpu_per_1k(cpu_of(pids) - before, r["completed"])
    p99 = r.get("p99_ms")
    failures = int(r.get("failures", 0))
    passed = p99 is not None and p99 <= p99_target_ms and not r["over_bound"] and not failures
    return Step(rate, int(r["requests"]), p99, int(r["over_bound"]), failures, int(r["late"]),
                r["client_cpu"], cost, passed)  # fmt: skip


def run_server_scenario(
    stack: LocalStack,
    requests: dict[str, bytes],
    p99_target_ms: float,
    searches: int = 3,
    min_requests: int = 1000,
    cpus: set[int] | None = None,
    report: Callable[[Search], None] = print,
    report_step: Callable[[str, str, Step], None] = lambda path, model, step: None,
) -> list[Search]:
    """`searches` searches for each served model (name -> a serialized request) on paths b (the
    trainer directly), c (the gateway) and d (the gateway with dynamic batching), interleaved: each
    repetition goes over every path and model once, so a slow minute spreads over all of them.
    A repetition after the first starts at half the model's and path's first result."""
    out: list[Search] = []
    first: dict[tuple[str, str], float] = {}
    seeds = iter(range(1, 1_000_000))
    before = stack.extra_env.get("TWINBENCH_DYNAMIC_BATCHING")

    def search(path: str, repetition: int, gateway: bool) -> None:
        pids = stack_pids(stack)
        for name, request in requests.items():
            address = stack.gateway_address if gateway else stack.address(
                f"{framework_of(name)}_trainer"
            )  # fmt: skip

            def measure(
                rate: float, address: str = address, request: bytes = request, name: str = name
            ) -> Step:
                step = open_loop_step(address, request, rate, p99_target_ms, min_requests,
                                      cpus, pids, next(seeds))  # fmt: skip
                report_step(PATHS[path], name, step)
                return step

            start = max(first.get((path, name), 800.0) / 2, MIN_RATE)
            rate, steps = search_max_rate(measure, start_rate=start, min_rate=MIN_RATE)
            first.setdefault((path, name), rate)
            out.append(Search(PATHS[path], name, repetition, rate, steps))
            report(out[-1])

    try:
        for repetition in range(searches):
            search("b", repetition, gateway=False)
            _restart_gateway(stack, "off")
            search("c", repetition, gateway=True)
            _restart_gateway(stack, "on")
            search("d", repetition, gateway=True)
    finally:
        _restart_gateway(stack, before)
    return out


def summarize(searches: list[Search]) -> list[dict]:
    """Per path and model: the median of the searches' rates and their range (the interval the
    module's docstring describes), and the services' CPU per 1,000 requests at the last passing
    step of each search (median and range)."""
    groups: dict[tuple[str, str], list[Search]] = {}
    for s in searches:
        groups.setdefault((s.path, s.model), []).append(s)
    out = []
    for (path, model), group in sorted(groups.items()):
        rates = [s.max_rate for s in group]
        costs = [
            passed[-1].server_cpu_s_per_1k
            for s in group
            if (passed := [st for st in s.steps if st.passed and st.rate == s.max_rate])
            and passed[-1].server_cpu_s_per_1k is not None
        ]
        n = len(rates)
        out.append(
            {
                "path": path,
                "model": model,
                "searches": n,
                "max_rate": float(np.median(rates)),
                "low": min(rates),
                "high": max(rates),
                "interval_level": 1 - 2 ** (1 - n) if n > 1 else None,
                "server_cpu_s_per_1k": float(np.median(costs)) if costs else None,
                "server_cpu_s_per_1k_range": [min(costs), max(costs)] if costs else None,
                "steps": sum(len(s.steps) for s in group),
            }
        )
    return out


def perf_analyzer_search(
    address: str,
    model: str,
    p99_target_ms: float,
    low: float,
    high: float,
    cpus: set[int] | None = None,
    min_requests: int = 1000,
    threads: int = 32,
) -> dict:
    """perf_analyzer's binary search over Poisson request rates [low, high] for the highest whose
    p99 stays under the target, about `min_requests` requests a rate; its precision
    is 5% of `low`. Returns the highest passing rate it measured (None: none) and every row."""
    command = perf_analyzer_command()
    if command is None:
        raise RuntimeError("perf_analyzer is not installed or cannot start")
    step = max(1.0, round(low * 0.05))
    with tempfile.TemporaryDirectory() as tmp:
        csv_file = Path(tmp) / "rates.csv"
        run = subprocess.run(
            [
                *command, "-m", model, "-u", address, "-i", "grpc",
                "--request-rate-range", f"{low:.0f}:{high:.0f}:{step:.0f}",
                "--request-distribution", "poisson", "--binary-search",
                "--latency-threshold", f"{p99_target_ms:g}", "--percentile=99",
                "--max-threads", str(threads),
                # Three windows a rate, about min_requests requests in all, as each of our steps.
                "--measurement-mode", "count_windows",
                "--measurement-request-count", str(max(min_requests // 3, 100)),
                # Any three windows: its stability rule (max/min of three windows' p99 within
                # a percentage) is rarely met on a shared machine, and it then gives up.
                "--stability-percentage", "1000", "--max-trials", "3",
                "-f", str(csv_file),
            ],
            capture_output=True, text=True, env=perf_analyzer_env(),
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        text = csv_file.read_text() if csv_file.exists() else ""
    over = "went over the set limit" in run.stdout
    if not text and not over:
        tail = (run.stdout + run.stderr).strip()[-300:]
        raise RuntimeError(f"perf_analyzer's search on {model} wrote nothing: ...{tail}")
    # No file, and its latency over the limit: no rate it measured passed, the lowest included.
    rows = parse_perf_analyzer_csv(text, load="Request Rate") if text else []
    passing = [
        float(r["Request Rate"]) for r in rows if float(r["p99 latency"]) / 1000 <= p99_target_ms
    ]
    delayed = [ln.split(":")[1].strip() for ln in run.stdout.splitlines() if "Delayed" in ln]
    return {
        "model": model,
        "max_rate": max(passing) if passing else None,
        "rows": [
            {
                "rate": float(r["Request Rate"]),
                "p99_ms": float(r["p99 latency"]) / 1000,
                "rps": float(r["Inferences/Second"]),
            }
            for r in rows
        ],  # fmt: skip
        "delayed_requests": delayed,
        "exit_status": run.returncode,
    }
