"""The server scenario's search and summary, the cold start's definition of steady, and the open
loop's figures in the sweep's capacity: pure functions, on made-up steps and latencies."""

import json
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from twinbench.experiments.bench_serving import Figures, capacity, capacity_lines
from twinbench.experiments.cold_start import (
    STEADY_WITHIN,
    TAIL,
    WINDOW,
    cold_start_and_cpu_table,
    requests_until_steady,
)
from twinbench.experiments.server_scenario import (
    Search,
    Step,
    search_max_rate,
    step_seconds,
    summarize,
)


def server_of_capacity(capacity_rps: float, cost: float = 0.5):
    """A made-up server whose p99 stays at 2 ms up to its capacity and then blows up."""
    rates = []

    def measure(rate: float) -> Step:
        rates.append(rate)
        p99 = 2.0 if rate <= capacity_rps else 50.0
        return Step(rate, 1000, p99, 0, 0, 0, 0.2, cost, p99 <= 10.0)

    return measure, rates


@pytest.mark.parametrize("capacity_rps", [37.0, 1234.0, 9000.0, 100.0])
def test_the_search_finds_the_capacity_within_its_precision(capacity_rps):
    measure, rates = server_of_capacity(capacity_rps)
    found, steps = search_max_rate(measure, start_rate=100.0, precision=0.1)
    assert capacity_rps / 1.1 <= found <= capacity_rps, (found, rates)
    assert [s.rate for s in steps] == rates
    # It never reports a rate it did not see pass.
    assert found in [s.rate for s in steps if s.passed]


def test_the_search_says_none_passed_and_stops_at_its_cap():
    never, _ = server_of_capacity(0.5)
    assert search_max_rate(never, start_rate=100.0)[0] == 0.0
    always, rates = server_of_capacity(float("inf"))
    found, _ = search_max_rate(always, start_rate=100.0, max_rate=1000.0)
    assert found == 800.0 and max(rates) == 800.0


def test_a_step_over_the_bound_or_without_answers_fails():
    def measure(rate: float) -> Step:  # the bound fills from 400/s on: a failure, whatever p99
        over = 5 if rate >= 400 else 0
        return Step(rate, 1000, 1.0, over, 0, 0, 0.2, None, over == 0)

    found, _ = search_max_rate(measure, start_rate=100.0)
    assert 400 / 1.1 <= found < 400


def test_step_length_gives_enough_requests_for_a_p99():
    assert step_seconds(100.0, 1000) == 10.0
    assert step_seconds(5000.0, 1000) == 1.0  # at least a second
    assert step_seconds(5000.0, 1000) * 5000 >= 1000


def test_the_summary_is_the_median_of_the_searches_with_their_range():
    def search(i, rate, cost):
        steps = [Step(rate, 1000, 2.0, 0, 0, 0, 0.2, cost, True),
                 Step(rate * 1.2, 1000, 20.0, 0, 0, 0, 0.2, 9.9, False)]  # fmt: skip
        return Search("b trainer directly", "m", i, rate, steps)

    (row,) = summarize([search(0, 900.0, 0.30), search(1, 1000.0, 0.20), search(2, 1300.0, 0.25)])
    assert row["max_rate"] == 1000.0 and (row["low"], row["high"]) == (900.0, 1300.0)
    assert row["interval_level"] == pytest.approx(0.75)  # 1 - 2^(1 - 3)
    assert row["server_cpu_s_per_1k"] == 0.25  # at the passing steps, not the failed ones
    assert row["server_cpu_s_per_1k_range"] == [0.20, 0.30]
    (single,) = summarize([search(0, 900.0, 0.3)])
    assert single["interval_level"] is None


def test_steady_is_the_first_call_whose_next_window_is_near_the_final_p50():
    rng = np.random.default_rng(0)
    calls = 1.0 + rng.uniform(-0.05, 0.05, 300)
    assert requests_until_steady(calls) == 1  # steady from the start
    warming = calls.copy()
    warming[:40] = 5.0  # the first 40 calls are slow
    # The first window with a fast median (11 of its 20 calls fast) starts at call 32.
    assert WINDOW == 20 and requests_until_steady(warming) == 32
    one_outlier = calls.copy()
    one_outlier[0] = 100.0  # a slow first call alone does not make the start unsteady
    assert requests_until_steady(one_outlier) == 1
    assert TAIL < len(calls) and STEADY_WITHIN == 0.25


def test_the_open_loop_capacity_keys_on_the_rate_and_fails_over_the_bound():
    def figure(rate, p99, rps, over=0):
        return Figures("b", "m", 1024, 1000, p99 / 2, p99, rps, 0.1, 0, rate, 0, over, 0.3, 0)

    figures = [
        figure(500.0, 2.0, 500.0),
        figure(1000.0, 4.0, 990.0),
        figure(2000.0, 4.5, 1500.0, 3),
    ]
    (best,) = capacity(figures, 5.0)
    # Each rate is a load of its own (all share the bound), and one with requests over the bound
    # failed whatever its p99.
    assert best["best"] == {"concurrency": 1024, "rps": 990.0, "p99_ms": 4.0, "rate": 1000.0}
    assert capacity_lines(figures, 5.0) == [
        "m, b: under p99 5 ms: 990 requests/s with p99 4.000 ms (rate 1,000/s)"
    ]


@pytest.fixture
def echo_server():
    """A gRPC server that answers ModelInfer with the request's bytes after `hold[0]` seconds."""
    hold = [0.0]
    served = []

    def infer(request: bytes, context) -> bytes:
        threading.Event().wait(hold[0])  # the server's own work, not a test's wait
        served.append(1)
        return request

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", hold, served
    server.stop(None)


def python_open_loop(address, tmp_path, bound, rate, seconds):
    request = tmp_path / "request.bin"
    request.write_bytes(b"the request")
    latencies = tmp_path / "latencies.bin"
    args = ["--rate", str(rate), "--arrivals", "constant", "--warm-up", "0", "--latency-file",
            str(latencies), address, str(request), str(bound), str(seconds)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "twinbench.experiments.loadgen", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), np.fromfile(latencies, dtype="<f8")


def test_the_python_load_generator_has_the_go_ones_open_loop(echo_server, tmp_path):
    address, hold, served = echo_server
    figures, latencies = python_open_loop(address, tmp_path, 64, 200, 0.5)  # 99 due, 5 ms apart
    assert (figures["due"], figures["sent"], figures["requests"], figures["over_bound"]) == (
        99,
        99,
        99,
        0,
    ), figures
    assert len(served) == figures["completed"] == 99 and len(latencies) == 99
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] and figures["rate"] == 200
    # Held longer than the whole schedule, the first 3 fill the bound and the others fail.
    hold[0] = 1.0
    figures, latencies = python_open_loop(address, tmp_path, 3, 400, 0.2)  # 79 due
    assert (figures["due"], figures["sent"], figures["over_bound"]) == (79, 3, 76), figures
    assert figures["requests"] == 3 and min(latencies) >= 1000


def test_the_report_shows_each_exports_cold_start_memory_and_cpu_with_their_spread():
    def repeat(load_s, memory_mb):
        return {"load_s": load_s, "memory_mb": memory_mb, "first_ms": 2.0, "until_steady": 3}

    cost = {
        "figures": [
            {"path": "b trainer directly", "model": "m-torch-onnx", "server_cpu_s_per_1k": v}
            for v in (0.2, 0.4, 0.3)
        ]
        + [{"path": "c through the gateway", "model": "m-torch-onnx", "server_cpu_s_per_1k": 0.5}],
        "cold_start": [
            {"model": "m-torch-onnx", "repeats": [repeat(0.1, 30.0), repeat(0.3, 30.0)]}
        ],
    }
    ((title, headers, rows),) = cold_start_and_cpu_table(cost)
    assert "cold start" in title and headers[-2:] == [
        "CPU s per 1,000 requests, path b",
        "CPU s per 1,000 requests, path c",
    ]
    assert rows == [["m-torch-onnx", "200.0 [100.0-300.0]", "30.0", "2.00", "3",
                     "0.300 [0.200-0.400]", "0.500"]]  # fmt: skip
    assert cold_start_and_cpu_table({"figures": [], "summary": []}) == []
