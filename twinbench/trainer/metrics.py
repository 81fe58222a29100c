"""Prometheus metrics of the three services: Triton's names where Triton has one, served over HTTP."""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from twinbench.api import trainer_pb2 as tpb
from twinbench.jobs.request import state_name
from twinbench.serving.statistics import ServingStats

log = logging.getLogger(__name__)

# Buckets of the batch size histograms: rows per runtime call, requests per link frame.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Triton's counters (its metrics.md), by our statistics' field; prometheus_client, like every
# Prometheus client library, adds `_total` to a counter's samples.
TRITON_DURATIONS = {
    "success": ("nv_inference_request_duration_us", "Cumulative end-to-end inference time (us)"),
    "queue": ("nv_inference_queue_duration_us", "Cumulative time requests spent queued (us)"),
    "compute_input": (
        "nv_inference_compute_input_duration_us",
        "Cumulative time preparing the inputs (us)",
    ),
    "compute_infer": (
        "nv_inference_compute_infer_duration_us",
        "Cumulative time running the model (us)",
    ),
    "compute_output": (
        "nv_inference_compute_output_duration_us",
        "Cumulative time building the outputs (us)",
    ),
}
UNKNOWN_MODEL = "(other)"  # the label of requests for names never served: clients pick names


def batch_histogram(
    name: str, doc: str, labels: list[str], series: dict[tuple[str, ...], dict[int, int]]
) -> HistogramMetricFamily:
    """A histogram family from exact counts (size -> how many), one series per label values."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, counts in sorted(series.items()):
        buckets = [
            (str(bound), sum(n for size, n in counts.items() if size <= bound))
            for bound in BATCH_BUCKETS
        ]
        buckets.append(("+Inf", sum(counts.values())))
        family.add_metric(list(values), buckets, sum(size * n for size, n in counts.items()))
    return family


class ServingCollector(Collector):
    """A trainer's ModelStatistics as Triton's per-model metrics (labels model, version)."""

    def __init__(self, stats: ServingStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snapshot = self.stats.snapshot()
        labels = ["model", "version"]
        success = CounterMetricFamily(
            "nv_inference_request_success", "Number of successful inference requests", labels=labels
        )
        failure = CounterMetricFamily(
            "nv_inference_request_failure", "Number of failed inference requests", labels=labels
        )
        count = CounterMetricFamily(
            "nv_inference_count",
            "Number of inferences performed (a batch of 8 counts 8)",
            labels=labels,
        )
        executions = CounterMetricFamily(
            "nv_inference_exec_count", "Number of model executions (runtime calls)", labels=labels
        )
        durations = {
            key: CounterMetricFamily(name, doc, labels=labels)
            for key, (name, doc) in TRITON_DURATIONS.items()
        }
        batches: dict[tuple[str, ...], dict[int, int]] = {}
        for (name, version), s in sorted(snapshot.items()):
            values = [name, str(version)]
            success.add_metric(values, s.success.count)
            failure.add_metric(values, s.fail.count)
            count.add_metric(values, s.inference_count)
            executions.add_metric(values, s.execution_count)
            for key, family in durations.items():
                family.add_metric(values, getattr(s, key).ns / 1000)
            batches[tuple(values)] = {rows: b.compute_infer.count for rows, b in s.batches.items()}
        yield from (success, failure, count, executions, *durations.values())
        yield batch_histogram("twinbench_batch_size", "Rows per runtime call", labels, batches)


class JobsCollector(Collector):
    """A trainer's jobs by state, and the training throughput of those running."""

    def __init__(self, framework: str, list_jobs: Callable[[], Iterable[tpb.Job]]) -> None:
        self.framework = framework
        self.list_jobs = list_jobs

    def collect(self) -> Iterator[Metric]:
        jobs = list(self.list_jobs())
        by_state = GaugeMetricFamily(
            "twinbench_jobs", "Training jobs by state", labels=["framework", "state"]
        )
        for state in tpb.JobState.values():
            if state == tpb.JOB_STATE_UNSPECIFIED:
                continue
            n = sum(1 for job in jobs if job.state == state)
            by_state.add_metric([self.framework, state_name(state)], n)
        rate = GaugeMetricFamily(
            "twinbench_training_samples_per_second",
            "Training samples per second of each running job, as of its last finished epoch",
            labels=["framework", "job", "model"],
        )
        for job in jobs:
            if job.state == tpb.RUNNING and job.epochs:
                rate.add_metric(
                    [self.framework, job.id, job.spec.model], job.epochs[-1].samples_per_second
                )
        yield by_state
        yield rate


class RequestCounter:
    """ModelInfer calls a gateway process serves itself, counted per model name.

    Names that were never served share one label value, so made-up names cost no series.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: set[str] = set()
        self._counts: dict[str, list[int]] = {}  # model -> [success, failure, duration ns]

    def record(self, model: str, ok: bool, duration_ns: int) -> None:
        with self._lock:
            if ok:
                self._served.add(model)
            label = model if model in self._served else UNKNOWN_MODEL
            counts = self._counts.setdefault(label, [0, 0, 0])
            counts[0 if ok else 1] += 1
            counts[2] += duration_ns

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = {k: list(v) for k, v in self._counts.items()}
        success = CounterMetricFamily(
            "nv_inference_request_success",
            "Number of successful inference requests",
            labels=["model"],
        )
        failure = CounterMetricFamily(
            "nv_inference_request_failure", "Number of failed inference requests", labels=["model"]
        )
        duration = CounterMetricFamily(*TRITON_DURATIONS["success"], labels=["model"])
        for model, (ok, failed, ns) in sorted(counts.items()):
            success.add_metric([model], ok)
            failure.add_metric([model], failed)
            duration.add_metric([model], ns / 1000)
        yield from (success, failure, duration)


class FrontCollector(Collector):
    """The Go front's own metrics (it serves ModelInfer without this process), fetched from its
    loopback metrics port at each scrape and merged with this process's families."""

    def __init__(self, url: Callable[[], str | None], timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        url = self.url()
        if url is None:
            return
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                text = reply.read().decode()
        except OSError as exc:
            log.warning("the front's metrics at %s: %s", url, exc)
            return
        yield from text_string_to_metric_families(text)


class MergedRegistry(Collector):
    """Several collectors as one scrape, with families of the same name joined: the Python
    gateway and its front both count ModelInfer, and a name may appear only once."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for collector in self.collectors:
            for family in collector.collect():
                known = merged.get(family.name)
                if known is None:
                    merged[family.name] = family
                elif known.type == family.type:
                    known.samples.extend(family.samples)
                else:
                    log.warning("metric %s has two types; the second is dropped", family.name)
        yield from merged.values()


def serve_metrics(address: str, *collectors: Collector) -> int:
    """Serves /metrics on `address` (port 0 picks one) in a thread; returns the port.

    The process's own metrics (CPU, memory, open files: prometheus_client's defaults) come too.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedRegistry(REGISTRY, *collectors))
    host, port = address.rsplit(":", 1)
    server, _ = start_http_server(int(port), addr=host, registry=registry)
    return server.server_address[1]
