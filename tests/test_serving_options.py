"""compare's serving options: an open loop in its serving blocks (`--serving-rate`) recorded in
results.json and said in the report, against a real gRPC server on loopback."""

import json
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import jsonschema
import pytest

from twinbench.cli.parser import parser
from twinbench.experiments import serving_rounds
from twinbench.experiments.compare import load_mode
from twinbench.experiments.compare_plan import CompareOptions
from twinbench.experiments.report import load_in_words
from twinbench.experiments.serving_rounds import load_block

SCHEMA = Path(__file__).parents[1] / "twinbench" / "schemas" / "results-v3.schema.json"
PYTHON_GENERATOR = [sys.executable, "-m", "twinbench.experiments.loadgen"]


@pytest.fixture
def echo_server():
    """A gRPC server that answers ModelInfer with the request's bytes after `hold[0]` seconds."""
    hold = [0.0]

    def infer(request: bytes, context) -> bytes:
        threading.Event().wait(hold[0])  # the server's own work, not a test's wait
        return request

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", hold
    server.stop(None)


def options(**changes) -> CompareOptions:
    base = CompareOptions(("torch", "tf"), 1, 8, "2s", 1, 1, Path("reports"), 0, 0.0, "compare")
    return CompareOptions(**{**base.__dict__, **changes})


def test_a_serving_block_at_a_rate_is_an_open_loop_whose_over_bound_requests_fail(
    echo_server, tmp_path, monkeypatch
):
    address, hold = echo_server
    request = tmp_path / "request.bin"
    request.write_bytes(b"the request")
    closed = load_block(PYTHON_GENERATOR, address, request, 2, 0.3, warm_s=0.0)
    assert closed["requests"] > 0 and closed["failures"] == 0 and "rate" not in closed, closed
    # 200/s with constant gaps for 0.5 s: 99 due, every one sent and answered.
    block = load_block(PYTHON_GENERATOR, address, request, 2, 0.5, warm_s=0.0, rate=200,
                       arrivals="constant", seed=7)  # fmt: skip
    assert (block["rate"], block["arrivals"], block["seed"]) == (200, "constant", 7)
    assert (block["due"], block["requests"], block["over_bound"], block["failures"]) == (
        99, 99, 0, 0,
    ), block  # fmt: skip
    assert block["latency_ms"]["p50"] > 0
    # A server held past the schedule: the bound fills and the requests due meanwhile fail.
    hold[0] = 1.0
    monkeypatch.setattr(serving_rounds, "OPEN_LOOP_BOUND", 3)
    block = load_block(PYTHON_GENERATOR, address, request, 2, 0.2, warm_s=0.0, rate=400,
                       arrivals="constant")  # fmt: skip
    assert (block["due"], block["requests"], block["over_bound"]) == (79, 3, 76), block
    assert block["failures"] == 76
    round_ = {"pairs": [{"discarded": False, "blocks": [{**block, "export": 0}]}]}
    figures = serving_rounds.export_figures(round_, 0)
    assert (figures["due"], figures["over_bound"], figures["failures"]) == (79, 76, 76)


def test_compare_at_a_rate_records_the_open_loop_and_says_it():
    args = parser().parse_args(
        ["compare", "--serving-rate", "300", "--arrivals", "constant", "--tuned-batching"]
    )
    assert (args.serving_rate, args.arrivals, args.tuned_batching) == (300.0, "constant", True)
    closed = parser().parse_args(["compare"])
    assert (closed.serving_rate, closed.tuned_batching) == (0.0, False)

    schema = json.loads(SCHEMA.read_text())["properties"]["serving"]
    base = {"users": 8, "duration": "2s", "rounds": 1, "batch_size": 1, "host": "h", "models": []}
    load = {**base, **load_mode(options(serving_rate=300.0, arrivals="constant"))}
    jsonschema.validate(load, schema)
    assert (load["rate"], load["arrivals"], load["tuned_batching"]) == (300.0, "constant", False)
    assert load_in_words(load).startswith("open loop at 300 requests/s per export (constant")
    assert serving_rounds.load_words(options(serving_rate=300.0)).startswith("an open loop of 300")
    closed_load = {**base, **load_mode(options())}
    jsonschema.validate(closed_load, schema)
    assert "rate" not in closed_load and load_in_words(closed_load) == "8 users"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**load, "arrivals": "bursty"}, schema)
