"""Per model version serving statistics as Triton keeps them, for ModelStatistics and for metrics."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from twinbench.api import inference_pb2 as ipb

# The parts of a request's time, in Triton's words (InferStatistics in grpc_service.proto).
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows
    execution_count: int = 0  # runtime calls
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)  # rows of a call -> its stats


@dataclass(frozen=True)
class RequestTiming:
    """One successful request's time, in ns, split as Triton splits it."""

    total: int
    queue: int
    compute_input: int
    compute_infer: int
    compute_output: int


class ServingStats:
    """Counts and durations since the process started, keyed by (model name, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, int], VersionStats] = {}

    def _of(self, name: str, version: int) -> VersionStats:
        return self._stats.setdefault((name, version), VersionStats())

    def success(self, name: str, version: int, rows: int, timing: RequestTiming) -> None:
        with self._lock:
            s = self._of(name, version)
            s.success.add(timing.total)
            for phase in PHASES:
                getattr(s, phase).add(getattr(timing, phase))
            s.inference_count += rows
            s.last_inference_ms = int(time.time() * 1000)

    def failure(self, name: str, version: int, total_ns: int) -> None:
        with self._lock:
            self._of(name, version).fail.add(total_ns)

    def execution(
        self, name: str, version: int, rows: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One runtime call of `rows` rows (the batch_stats of Triton)."""
        with self._lock:
            s = self._of(name, version)
            s.execution_count += 1
            b = s.batches.setdefault(rows, BatchStats())
            b.compute_input.add(input_ns)
            b.compute_infer.add(infer_ns)
            b.compute_output.add(output_ns)

    def snapshot(self) -> dict[tuple[str, int], VersionStats]:
        """A copy, consistent at one instant."""
        import copy

        with self._lock:
            return copy.deepcopy(self._stats)

    def response(
        self, name: str = "", version: str = "", served: dict[str, list[int]] | None = None
    ) -> ipb.ModelStatisticsResponse:
        """ModelStatistics for `name` (empty: all) and `version` (empty: all).

        `served` (name -> versions) lists the served versions, so that one with no traffic yet
        is reported with zeros, as Triton does.
        """
        stats = self.snapshot()
        keys = set(stats)
        for n, versions in (served or {}).items():
            keys.update((n, v) for v in versions)
        response = ipb.ModelStatisticsResponse()
        for n, v in sorted(keys):
            if (name and n != name) or (version and str(v) != version):
                continue
            s = stats.get((n, v), VersionStats())
            out = response.model_stats.add(
                name=n,
                version=str(v),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            for key in ("success", "fail", *PHASES):
                d = getattr(s, key)
                getattr(out.inference_stats, key).CopyFrom(
                    ipb.StatisticDuration(count=d.count, ns=d.ns)
                )
            for rows in sorted(s.batches):
                b = s.batches[rows]
                out.batch_stats.add(
                    batch_size=rows,
                    compute_input=ipb.StatisticDuration(**vars(b.compute_input)),
                    compute_infer=ipb.StatisticDuration(**vars(b.compute_infer)),
                    compute_output=ipb.StatisticDuration(**vars(b.compute_output)),
                )
        return response


def summarize(response: ipb.ModelStatisticsResponse) -> dict[str, float | int | None]:
    """Per-request means over every version in `response`, in ms: what a report shows.

    compute_infer is the runtime's time per request (a batch's time is shared by its requests,
    as Triton counts it), so exports compare by their own cost, not by the load generator's.
    """
    totals = {key: [0, 0] for key in ("success", *PHASES)}
    inferences = executions = 0
    for model in response.model_stats:
        inferences += model.inference_count
        executions += model.execution_count
        for key, total in totals.items():
            d = getattr(model.inference_stats, key)
            total[0] += d.count
            total[1] += d.ns

    def mean_ms(key: str) -> float | None:
        count, ns = totals[key]
        return ns / count / 1e6 if count else None

    return {
        "requests": totals["success"][0],
        "inferences": inferences,
        "executions": executions,
        "request_ms": mean_ms("success"),
        "queue_ms": mean_ms("queue"),
        "compute_input_ms": mean_ms("compute_input"),
        "compute_infer_ms": mean_ms("compute_infer"),
        "compute_output_ms": mean_ms("compute_output"),
    }


def server_statistics(
    stub, model: str, timeout_s: float = 10.0, version: str = ""
) -> dict[str, float | int | None]:
    """The server-side time of `model` (one version, or every version), from its ModelStatistics.

    `stub` is a GRPCInferenceServiceStub (the gateway's or a trainer's); the dict is
    `summarize`'s, plus `server_compute_ms`: input + infer + output per request, the figure the
    compare report shows beside the client-side latency.
    """
    request = ipb.ModelStatisticsRequest(name=model, version=version)
    response = stub.ModelStatistics(request, timeout=timeout_s)
    summary = summarize(response)
    parts = [summary[f"compute_{p}_ms"] for p in ("input", "infer", "output")]
    known = [p for p in parts if p is not None]
    summary["server_compute_ms"] = sum(known) if len(known) == len(parts) else None
    return summary


def server_compute_ms(address: str, settings, model: str, version: str = "") -> float | None:
    """`server_statistics(...)["server_compute_ms"]` of `model` through the gateway at `address`
    (a channel of its own, with the settings' token and TLS); None when the server gives none."""
    import grpc

    from twinbench.api import inference_pb2_grpc
    from twinbench.rpc.channel import open_channel

    with open_channel(address, settings) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return server_statistics(stub, model, version=version)["server_compute_ms"]
        except grpc.RpcError:
            return None  # a server without Triton's statistics extension
