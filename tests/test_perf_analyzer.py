"""Triton's own load tool, perf_analyzer, against the gateway: it needs ModelConfig and
ModelStatistics as Triton serves them, and `twinbench bench serving` reads its figures."""

import os

import grpc
import pytest

from twinbench.api import inference_pb2_grpc
from twinbench.experiments.bench_serving import capacity, perf_analyzer_command, run_perf_analyzer
from twinbench.serving.statistics import server_statistics

pytestmark = pytest.mark.integration


def test_perf_analyzer_measures_a_model_through_the_gateway(stack, trained):
    if perf_analyzer_command() is None:
        if os.environ.get("TWINBENCH_PERF_ANALYZER_TESTS") == "required":
            pytest.fail(
                "perf_analyzer cannot start: it needs Debian's libb64-0d and PyPI's"
                " nvidia-cuda-runtime-cu12 (see README)"
            )
        pytest.skip("perf_analyzer is not installed or cannot start")
    job, _ = trained["torch"]
    model = next(e.model_name for e in job.exports if e.format == "onnx")
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = server_statistics(stub, model)
        figures = run_perf_analyzer(stack.gateway_address, model, (1, 4), 0.5, report=print)
        after = server_statistics(stub, model)
    assert [f.concurrency for f in figures] == [1, 4]
    for f in figures:
        assert f.model == model and f.requests > 0 and 0 < f.p50_ms <= f.p99_ms and f.rps > 0, f
    # Every request it counted reached the trainer (it also sends warm-up ones it does not count).
    assert after["requests"] - before["requests"] >= sum(f.requests for f in figures)
    (best,) = capacity(figures, p99_target_ms=max(f.p99_ms for f in figures))
    assert best["best"]["rps"] == max(f.rps for f in figures)
