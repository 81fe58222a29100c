"""The serving benchmark on the live stack: every path measured, the ratios stated, and the report
section it feeds. It prints figures; what they are is this machine's business, not a test's."""

import dataclasses
import json
import os
import sys

import jsonschema
import pytest

from twinbench.api import inference_pb2_grpc
from twinbench.config import LOADGEN_PROGRAM, installed_program
from twinbench.data.datasets import load_dataset
from twinbench.experiments.bench_serving import (
    Figures,
    bench_stack,
    capacity,
    capacity_lines,
    measure_remote,
    ratios,
    setup,
    summary,
)
from twinbench.experiments.report import markdown
from twinbench.experiments.results import SCHEMA_FILE, build_results
from twinbench.serving.statistics import server_statistics
from twinbench.serving.tensors import infer_request


def test_bench_measures_each_path_and_its_figures_reach_the_report(stack, trained):
    job, _ = trained["torch"]
    export = next(e for e in job.exports if e.format == "onnx")
    request = infer_request(
        export.model_name, load_dataset("mnist-5k").test.x[:1]
    ).SerializeToString()
    before = stack.extra_env.get("TWINBENCH_DYNAMIC_BATCHING")
    figures = bench_stack(stack, {export.model_name: request}, (1, 4), 0.5, report=lambda f: None)
    assert stack.extra_env.get("TWINBENCH_DYNAMIC_BATCHING") == before  # left as it was
    paths = {(f.path[0], f.concurrency) for f in figures}
    assert paths == {(p, c) for p in "bcd" for c in (1, 4)}
    for f in figures:
        assert f.requests > 0 and 0 < f.p50_ms <= f.p99_ms and f.rps > 0, f
        assert 0 < f.client_cpu <= 1.5, f
    lines = summary(figures)
    assert any("the gateway adds" in line for line in lines)
    assert any("dynamic batching at concurrency 4" in line for line in lines)

    (short,) = ratios(figures)
    assert short["model"] == export.model_name and short["concurrency"] == 4
    assert short["unbatched_rps"] == next(
        f.rps for f in figures if f.path[0] == "c" and f.concurrency == 4
    )
    cost = {
        "figures": [dataclasses.asdict(f) for f in figures],
        "summary": [short],
        "note": "test",
        **setup(stack.settings),
    }
    design = {"frameworks": ["torch", "tf"], "pairs": [["torch", "tf"]], "a_a": False,
              "repeats": 1, "order": ["torch"], "seeds": {"torch": [job.spec.seed]},
              "hardware": "test", "level": 0.95}  # fmt: skip
    load = {"users": 1, "duration": "0s", "rounds": 1, "batch_size": 1,
            "host": stack.gateway_address}  # fmt: skip
    results = build_results({"torch": ("torch", [job])}, [], load, "test", [], design, cost)
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    text = markdown(results, {})
    assert "## Serving cost: test; gateway front: " in text and "d gateway + batching" in text


def test_each_load_generator_counts_what_the_server_served_and_stops_on_a_failed_call(
    stack, client, trained
):
    go = installed_program(LOADGEN_PROGRAM)
    if go is None and os.environ.get("TWINBENCH_FRONT_TESTS") == "required":
        pytest.fail("the Go load generator is not built: `make native` needs Go (see README)")
    generators = {"python": [sys.executable, "-m", "twinbench.experiments.loadgen"]}
    if go is not None:
        generators["go"] = [str(go)]
    image = load_dataset("mnist-5k").test.x[:1]
    good = infer_request("lenet5-torch-onnx", image).SerializeToString()
    bad = infer_request("nosuch-torch-onnx", image).SerializeToString()
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(client.channel)
    for name, generator in generators.items():
        before = server_statistics(stub, "lenet5-torch-onnx")["requests"]
        n, p50, p99, rps, cpu = measure_remote(stack.gateway_address, good, 2, 0.5, None, generator)
        assert n > 0 and 0 < p50 <= p99 and rps > 0 and 0 < cpu <= 1.5, name
        # The requests it counted all reached the trainer (and its warm-up ones, uncounted).
        assert server_statistics(stub, "lenet5-torch-onnx")["requests"] - before >= n, name
        with pytest.raises(RuntimeError, match="NOT_FOUND|NotFound"):
            measure_remote(stack.gateway_address, bad, 2, 0.5, None, generator)


def test_capacity_is_the_most_throughput_under_the_p99_target():
    def figure(concurrency, p99_ms, rps, round_=0):
        return Figures("c", "m", concurrency, 100, p99_ms / 2, p99_ms, rps, None, round_)

    figures = [figure(1, 1.0, 100.0), figure(8, 4.0, 700.0), figure(32, 9.0, 900.0)]
    (under_5,) = capacity(figures, 5.0)
    assert under_5["best"] == {"concurrency": 8, "rps": 700.0, "p99_ms": 4.0}
    (under_10,) = capacity(figures, 10.0)
    assert under_10["best"]["concurrency"] == 32
    (none,) = capacity(figures, 0.5)
    assert none["best"] is None
    # Over rounds, a concurrency's median counts: one lucky round does not make it.
    rounds = [figure(8, 4.0, 700.0, 0), figure(8, 6.0, 800.0, 1), figure(8, 7.0, 800.0, 2)]
    (median,) = capacity(rounds, 5.0)
    assert median["best"] is None
    lines = capacity_lines(figures, 5.0)
    assert lines == [f"m, c: under p99 5 ms: {700:,} requests/s with p99 4.000 ms (concurrency 8)"]


def test_ratios_take_each_round_apart_and_the_median_of_them():
    def figure(path, concurrency, rps, p50_ms, round_):
        return Figures(path, "m", concurrency, 100, p50_ms, p50_ms * 2, rps, None, round_)

    figures = [figure("b direct", 1, 1000.0, 1.0, 0)]
    # Round 0: 100 -> 300 (3x); round 1: 200 -> 400 (2x); round 2: 400 -> 1000 (2.5x).
    for round_, (off, on, p50) in enumerate([(100, 300, 1.5), (200, 400, 1.2), (400, 1000, 1.4)]):
        figures += [
            figure("c gateway", 1, 900.0, p50, round_),
            figure("c gateway", 8, off, 5.0, round_),
            figure("d batching", 8, on, 5.0, round_),
        ]
    (r,) = ratios(figures)
    assert r["batching_gain_by_round"] == [3.0, 2.0, 2.5]
    assert r["batching_gain"] == 2.5  # the median of the rounds' ratios
    assert r["batched_rps"] / r["unbatched_rps"] == 2.0  # not the ratio of the medians
    assert r["gateway_adds_ms"] == pytest.approx(0.4)  # median of 0.5, 0.2, 0.4


def test_a_cold_start_repeat_loads_a_frameworks_exports_in_one_process_in_rotated_order(
    stack, trained
):
    """compare's cold starts: per repeat one fresh process per framework, its exports loaded one
    after another, the order rotated; ONNX Runtime's memory stays with the ONNX export in either
    position, and a framework whose process fails gives its own exports the error only."""
    from twinbench.experiments.cold_start import cold_starts_of

    job, _ = trained["torch"]
    exports = [(e.model_name, int(e.version)) for e in job.exports]
    assert {name.rsplit("-", 1)[1] for name, _ in exports} == {"torchscript", "onnx"}
    missing = ("lenet5-tf-onnx", 999_999)  # no such version: its process fails
    out = cold_starts_of(stack.settings.model_repository, [*exports, missing], repeats=2)
    by_model = {o["model"]: o for o in out}
    assert "a cold start of lenet5-tf-onnx failed" in by_model["lenet5-tf-onnx"]["error"]
    for name, _ in exports:
        figures = by_model[name]
        assert sorted(r["position"] for r in figures["repeats"]) == [1, 2]
        assert figures["load_s_range"][0] <= figures["load_s"] <= figures["load_s_range"][1]
        assert all(r["load_s"] > 0 and r["first_ms"] > 0 for r in figures["repeats"])
    onnx = next(by_model[n] for n, _ in exports if n.endswith("-onnx"))
    script = next(by_model[n] for n, _ in exports if n.endswith("-torchscript"))
    # ONNX Runtime is imported only by the ONNX loader: counted to it, whichever loaded first.
    assert min(r["memory_mb"] for r in onnx["repeats"]) > max(
        r["memory_mb"] for r in script["repeats"]
    )
