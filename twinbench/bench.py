"""`twinbench bench serving`: what each layer of the serving path costs, on one model and input.

(a) the runtime in this process, (b) the trainer's V2 endpoint called directly, (c) the same
through the gateway, (d) through the gateway with dynamic batching on; each at several
concurrencies, with p50, p99 and requests per second, and the ratios that matter: the gateway's
cost (c - b at p50) and what batching buys at the highest concurrency (d / c requests per second).
It prints figures; it asserts nothing (this machine's noise is not a test failure).
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from twinbench.api import inference_pb2_grpc
from twinbench.api import trainer_pb2 as tpb
from twinbench.client import Client
from twinbench.config import Settings
from twinbench.datasets import load_dataset
from twinbench.launcher import LocalStack
from twinbench.repository import ModelRepository, model_name
from twinbench.tensors import infer_request

FREE_PORTS = {"gateway": 0, "torch_trainer": 0, "tf_trainer": 0}


@dataclasses.dataclass
class Figures:
    path: str
    model: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    rps: float


def measure(
    call: Callable[[], object], concurrency: int, seconds: float
) -> tuple[int, float, float, float]:
    """Runs `call` from `concurrency` threads for `seconds` (after a short warm-up)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    go, stop = threading.Event(), threading.Event()

    def worker(mine: list[float]) -> None:
        go.wait()
        while not stop.is_set():
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in latencies]
    for t in threads:
        t.start()
    go.set()
    time.sleep(min(1.0, seconds / 4))  # warm-up, not counted
    for mine in latencies:
        mine.clear()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    merged = np.concatenate([np.asarray(m) for m in latencies]) * 1000
    return (
        len(merged),
        float(np.percentile(merged, 50)),
        float(np.percentile(merged, 99)),
        len(merged) / elapsed,
    )


def _ensure_exports(stack: LocalStack, settings: Settings, model: str) -> None:
    repository = ModelRepository(settings.model_repository)
    if all(repository.versions(model_name(model, "torch", f)) for f in ("onnx", "torchscript")):
        return
    client = Client(stack.gateway_address, settings)
    spec = tpb.JobSpec(framework="torch", model=model, epochs=1, train_samples=512)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    for _ in client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job.id)):
        pass
    client.close()


def _remote(address: str, request) -> Callable[[], object]:
    channel = grpc.insecure_channel(address)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    return lambda: stub.ModelInfer(request, timeout=30)


def run_serving_bench(
    settings: Settings,
    model: str = "lenet5",
    formats: tuple[str, ...] = ("onnx", "torchscript"),
    concurrencies: tuple[int, ...] = (1, 8, 32),
    seconds: float = 5.0,
    report: Callable[[Figures], None] = print,
) -> list[Figures]:
    from services.torch_trainer.framework import TorchFramework  # the runtimes, in process

    home = Path(tempfile.mkdtemp(prefix="twinbench-bench-"))
    local = dataclasses.replace(settings, home=home, data=settings.data)
    image = load_dataset("mnist-5k").test.x[:1]
    out: list[Figures] = []

    def record(path: str, name: str, call: Callable[[], object]) -> None:
        for concurrency in concurrencies:
            n, p50, p99, rps = measure(call, concurrency, seconds)
            figures = Figures(path, name, concurrency, n, p50, p99, rps)
            out.append(figures)
            report(figures)

    env = {"TWINBENCH_HOME": str(home)}
    with LocalStack(local, FREE_PORTS, env) as stack:
        _ensure_exports(stack, local, model)
        repository = ModelRepository(local.model_repository)
        for fmt in formats:
            name = model_name(model, "torch", fmt)
            version = repository.versions(name)[-1]
            info = repository.info(name, version)
            runtime = TorchFramework.loaders[fmt](
                repository.version_dir(name, version) / info.filename
            )
            request = infer_request(name, image)
            record("a runtime in process", name, lambda r=runtime: r.infer(image))
            record("b trainer directly", name, _remote(stack.address("torch_trainer"), request))
            record("c through the gateway", name, _remote(stack.gateway_address, request))
    env["TWINBENCH_DYNAMIC_BATCHING"] = "on"
    with LocalStack(dataclasses.replace(local, dynamic_batching="on"), FREE_PORTS, env) as stack:
        for fmt in formats:
            name = model_name(model, "torch", fmt)
            record(
                "d gateway + batching",
                name,
                _remote(stack.gateway_address, infer_request(name, image)),
            )
    return out


def summary(figures: list[Figures]) -> list[str]:
    """The ratios: the gateway's cost at p50 and concurrency 1, batching's gain at the top."""
    lines = []
    by = {(f.path[0], f.model, f.concurrency): f for f in figures}
    top = max(f.concurrency for f in figures)
    for name in sorted({f.model for f in figures}):
        direct, gateway = by.get(("b", name, 1)), by.get(("c", name, 1))
        if direct and gateway:
            lines.append(
                f"{name}: the gateway adds {gateway.p50_ms - direct.p50_ms:.3f} ms at p50"
                f" (concurrency 1: {direct.p50_ms:.3f} ms direct, {gateway.p50_ms:.3f} ms through it)"
            )
        off, on = by.get(("c", name, top)), by.get(("d", name, top))
        if off and on:
            lines.append(
                f"{name}: dynamic batching at concurrency {top}: {on.rps:,.0f} vs {off.rps:,.0f}"
                f" requests/s ({on.rps / off.rps:.2f}x)"
            )
    return lines
