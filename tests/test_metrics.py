"""Prometheus metrics and server reflection of the live stack, scraped and parsed after real traffic."""

import json
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc
from twinbench.api import trainer_pb2 as tpb
from twinbench.config import FRONT_PROGRAM, installed_program
from twinbench.data.datasets import load_dataset
from twinbench.jobs.request import state_name
from twinbench.serving.statistics import server_statistics
from twinbench.serving.tensors import infer_request

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_real_traffic_on_the_gateway_and_the_trainer(stack, client, trained):
    job, _ = trained["torch"]
    export = next(e for e in job.exports if e.format == "onnx")
    name, version = export.model_name, export.version
    images = load_dataset("mnist-5k").test.x[:4]
    trainer = stack.metrics_url("torch_trainer")
    gateway = stack.metrics_url("gateway")
    t0, g0 = scrape(trainer), scrape(gateway)
    n = 25
    for i in range(n):  # batches of 1 to 4 rows
        client.inference.ModelInfer(
            infer_request(name, images[: 1 + i % 4], version=version), timeout=30
        )
    rows = sum(1 + i % 4 for i in range(n))
    bad = infer_request(
        name, np.zeros((1, 3, 28, 28), np.float32), version=version
    )  # the wrong shape
    with pytest.raises(grpc.RpcError) as refused:
        client.inference.ModelInfer(bad, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    t1, g1 = scrape(trainer), scrape(gateway)

    def delta(before, after, sample, **labels):
        return value(after, sample, **labels) - value(before, sample, **labels)

    # The trainer: Triton's per model and version counters.
    per_version = dict(model=name, version=version)
    assert delta(t0, t1, "nv_inference_request_success_total", **per_version) == n
    assert delta(t0, t1, "nv_inference_request_failure_total", **per_version) == 1
    assert delta(t0, t1, "nv_inference_count_total", **per_version) == rows
    executions = delta(t0, t1, "nv_inference_exec_count_total", **per_version)
    assert 1 <= executions <= n
    assert delta(t0, t1, "twinbench_batch_size_count", **per_version) == executions
    assert delta(t0, t1, "twinbench_batch_size_sum", **per_version) == rows
    for phase in ("request", "compute_input", "compute_infer", "compute_output"):
        assert delta(t0, t1, f"nv_inference_{phase}_duration_us_total", **per_version) > 0, phase
    # Jobs by state, as the trainer lists them.
    jobs = client.trainer.ListJobs(tpb.ListJobsRequest(), timeout=30).jobs
    for state in (tpb.SUCCEEDED, tpb.FAILED):
        mine = sum(1 for j in jobs if j.spec.framework == "torch" and j.state == state)
        labels = dict(framework="torch", state=state_name(state))
        assert value(t1, "twinbench_jobs", **labels) == mine, state_name(state)
    assert value(t1, "process_resident_memory_bytes") > 0

    # The gateway: the calls its front served itself, and what the front is.
    assert delta(g0, g1, "nv_inference_request_success_total", model=name) == n
    assert delta(g0, g1, "nv_inference_request_failure_total", model=name) == 1
    assert delta(g0, g1, "nv_inference_request_duration_us_total", model=name) > 0
    if installed_program(FRONT_PROGRAM) is not None:
        assert value(g1, "go_goroutines") > 0
        assert value(g1, "twinbench_front_resident_memory_bytes") > 0
        frames = delta(g0, g1, "twinbench_front_frame_size_count", model=name)
        assert 1 <= frames <= n + 1  # the refused request went out in a frame too

    # ModelStatistics tells the same story as the metrics.
    stats = server_statistics(inference_pb2_grpc.GRPCInferenceServiceStub(client.channel), name)
    total = sum(
        v
        for (sample, labels), v in t1.items()
        if sample == "nv_inference_request_success_total" and dict(labels)["model"] == name
    )
    assert stats["requests"] == total
    assert stats["server_compute_ms"] > stats["compute_infer_ms"] > 0


def test_the_dashboard_asks_only_for_metrics_the_services_export(stack, trained):
    dashboard = json.loads(
        (ROOT / "deploy/monitoring/grafana/dashboards/twinbench.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(?:nv|twinbench|go)_[a-z_]+", e)}
    assert names
    pages = ""
    for service in ("gateway", "torch_trainer", "tf_trainer"):
        with urllib.request.urlopen(stack.metrics_url(service), timeout=10) as reply:
            pages += reply.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+)", pages, re.M)) | {
        line.split("{")[0].split()[0] for line in pages.splitlines() if line and line[0] != "#"
    }
    missing = sorted(n for n in names if n not in exported)
    assert not missing, missing


def test_reflection_lists_the_apis_through_the_front_and_on_a_trainer(stack, settings):
    expected = {
        ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        tpb.DESCRIPTOR.services_by_name["Trainer"].full_name,
        "grpc.health.v1.Health",
    }
    for service in ("gateway", "torch_trainer"):
        with grpc.insecure_channel(stack.address(service)) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            assert expected <= set(database.get_services()), service
            method = database.FindFileContainingSymbol("inference.GRPCInferenceService")
            services = {s.name: [m.name for m in s.method] for s in method.service}
            assert "ModelStatistics" in services["GRPCInferenceService"], service
