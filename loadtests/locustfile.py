"""Locust load test of the V2 inference API: `locust -f loadtests/locustfile.py --host 127.0.0.1:50051`.

Runs in a process of its own that imports neither torch nor TensorFlow: gevent must patch before
`ssl` is imported, and importing Locust after either framework dies in `ssl`.

Options (each also read from the environment variable in brackets):
  --models NAMES    comma-separated served models, each NAME or NAME:VERSION (default: the newest);
                    default all READY ones                                 [TWINBENCH_LOAD_MODELS]
  --batch-size N    rows per request, default 1                           [TWINBENCH_LOAD_BATCH]
  --input-file F    .npy of float32 N x C x H x W images for models with one FP32 input; default
                    inputs built from each model's metadata and dataset (twinbench/client/inputs.py:
                    test images for 1x28x28 models, synthetic rows for NCF and GNMT, seeded random
                    images otherwise)                                      [TWINBENCH_LOAD_INPUT]
  --latency-file F  on exit, save every latency (ms, float64) to this .npy; Locust's own CSV
                    percentiles are rounded to whole milliseconds, too coarse for fast models
  --totals-file F   on exit, save the run's final request and failure counts and requests/s
                    as JSON (and, in an open loop, the requests sent late and over the bound);
                    Locust's stats CSV holds its last periodic flush, which can miss the end of a
                    short run
  --rate R          an open loop: each user's requests fall due at R per second whatever the
                    server does, each timed from when it was due (a closed loop, the default,
                    sends less while the server stalls and so hides the stall: coordinated
                    omission); users x R in all                           [TWINBENCH_LOAD_RATE]
  --arrivals A      poisson (default) or constant gaps between a user's arrivals
  --max-in-flight N an open loop's bound on each user's requests in flight (default 100): a
                    request due while N are in flight is not sent and counts as a failure;
                    one sent more than 1 ms after it fell due counts as late
The host defaults to TWINBENCH_GATEWAY or 127.0.0.1:50051; load goes nowhere else.
TWINBENCH_TOKEN (a bearer token) and TWINBENCH_TLS_CA (a CA file: TLS) are used as the CLI uses them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, events, task  # noqa: E402

from twinbench.api import inference_pb2 as ipb  # noqa: E402
from twinbench.api import inference_pb2_grpc  # noqa: E402
from twinbench.client.inputs import model_inputs, served_inputs  # noqa: E402
from twinbench.serving.tensors import infer_request  # noqa: E402

MAX_MESSAGE_BYTES = int(os.environ.get("TWINBENCH_MAX_MESSAGE_BYTES", 64 * 1024 * 1024))


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--models", default=os.environ.get("TWINBENCH_LOAD_MODELS", ""), help="served models"
    )
    parser.add_argument(
        "--batch-size", type=int, default=int(os.environ.get("TWINBENCH_LOAD_BATCH", "1"))
    )
    parser.add_argument("--input-file", default=os.environ.get("TWINBENCH_LOAD_INPUT", ""))
    parser.add_argument("--latency-file", default="")
    parser.add_argument("--totals-file", default="")
    parser.add_argument(
        "--rate", type=float, default=float(os.environ.get("TWINBENCH_LOAD_RATE", "0"))
    )
    parser.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    parser.add_argument("--max-in-flight", type=int, default=100)


LATENCIES_MS: list[float] = []  # successful requests only, in this process
LATE_S = 0.001  # an open loop's request sent more than this after it fell due is late
OPEN_LOOP = {"late": 0, "over_bound": 0}  # an open loop's counts, in this process


class OverTheBound(Exception):
    """An open loop's request that fell due while the user's bound of requests was in flight."""


@events.quitting.add_listener
def _save_latencies(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options and options.latency_file:
        np.save(options.latency_file, np.asarray(LATENCIES_MS, dtype=np.float64))
    if options and options.totals_file:
        total = environment.stats.total
        totals = {
            "requests": total.num_requests,
            "failures": total.num_failures,
            "requests_per_second": total.total_rps,
        }
        if options.rate > 0:
            totals.update(OPEN_LOOP)
        with open(options.totals_file, "w") as f:
            json.dump(totals, f)


def _inputs(stub, metadata, name: str, version: str, path: str, rows: int) -> dict:
    """`rows` rows of the model's inputs, by name: from its metadata and dataset, or the file."""
    meta = stub.ModelMetadata(
        ipb.ModelMetadataRequest(name=name, version=version), timeout=10, metadata=metadata
    )
    if path and len(meta.inputs) == 1 and meta.inputs[0].datatype == "FP32":
        return {meta.inputs[0].name: np.load(path).astype(np.float32, copy=False)[:rows]}
    config = stub.ModelConfig(
        ipb.ModelConfigRequest(name=name, version=version), timeout=10, metadata=metadata
    )
    return model_inputs(served_inputs(meta, config), rows=rows)[0]


def _ready_models(stub, metadata) -> list[str]:
    request = ipb.RepositoryIndexRequest(ready=True)
    index = stub.RepositoryIndex(request, timeout=10, metadata=metadata)
    return sorted({m.name for m in index.models if m.state == "READY"})


class V2User(User):
    """Sends ModelInfer in a loop, through one channel per user, cycling over models and images."""

    host = os.environ.get("TWINBENCH_GATEWAY", "127.0.0.1:50051")

    def on_start(self) -> None:
        options = self.environment.parsed_options
        channel_options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        ca = os.environ.get("TWINBENCH_TLS_CA")
        if ca:
            with open(ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(f.read())
            self.channel = grpc.secure_channel(self.host, credentials, options=channel_options)
        else:
            self.channel = grpc.insecure_channel(self.host, options=channel_options)
        token = os.environ.get("TWINBENCH_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        models = [m for m in options.models.split(",") if m] or _ready_models(
            self.stub, self.metadata
        )
        if not models:
            raise RuntimeError(f"no served models at {self.host}; train one first")
        batch = max(1, options.batch_size)
        # Requests are built once: the load test measures the server, not our serialisation.
        requests = []
        for name, _, version in (model.partition(":") for model in models):
            inputs = _inputs(
                self.stub, self.metadata, name, version, options.input_file, 64 * batch
            )
            rows = len(next(iter(inputs.values())))
            requests += [
                infer_request(
                    name, {k: v[i : i + batch] for k, v in inputs.items()}, version=version
                )
                for i in range(0, rows - batch + 1, batch)
            ]
        self.requests = itertools.cycle(requests)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        if options.rate > 0:
            self.open_loop(options.rate, options.arrivals, max(1, options.max_in_flight))
        else:
            self.send(next(self.requests), time.perf_counter())

    def open_loop(self, rate: float, arrivals: str, bound: int) -> None:
        """Sends on the schedule until the user is stopped; each request in a greenlet of its
        own, so that a slow answer delays no other request."""
        gaps = random.Random()
        in_flight = gevent.pool.Pool(bound)
        due = time.perf_counter()
        while True:
            due += 1 / rate if arrivals == "constant" else gaps.expovariate(rate)
            if (wait := due - time.perf_counter()) > 0:
                gevent.sleep(wait)
            request = next(self.requests)
            if in_flight.full():
                OPEN_LOOP["over_bound"] += 1
                self._fire(request, (time.perf_counter() - due) * 1000, 0, OverTheBound(bound))
                continue
            OPEN_LOOP["late"] += time.perf_counter() - due > LATE_S
            in_flight.spawn(self.send, request, due)

    def send(self, request, since: float) -> None:
        """One call, its latency counted from `since` (when it was sent, or when it fell due)."""
        exception, length = None, 0
        try:
            reply = self.stub.ModelInfer(request, timeout=30, metadata=self.metadata)
            length = reply.ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        elapsed_ms = (time.perf_counter() - since) * 1000
        if exception is None:
            LATENCIES_MS.append(elapsed_ms)
        self._fire(request, elapsed_ms, length, exception)

    def _fire(self, request, elapsed_ms: float, length: int, exception) -> None:
        events.request.fire(
            request_type="grpc",
            name=request.model_name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={},
        )
