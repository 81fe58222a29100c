"""The gateway's core, free of gRPC serving: routes training by framework and inference by model name."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.api import trainer_pb2 as tpb
from twinbench.config import FRAMEWORKS, Settings, frameworks_of
from twinbench.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
    UpstreamError,
)
from twinbench.jobs.request import check_job_id, resolve_spec
from twinbench.serving.link import FRAME_SLACK_BYTES, OK, BatchingCaller, LinkClient, status_name
from twinbench.serving.repository import check_model_name, framework_of
from twinbench.trainer.metrics import RequestCounter

log = logging.getLogger(__name__)

INDEX_TIMEOUT_S = 2.0


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise InvalidArgument("the request is not a valid ModelInferRequest")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def model_name_of(raw: bytes) -> str:
    """Field 1 (model_name) of a serialized ModelInferRequest, read without parsing the rest.

    Serializers write fields in number order, so this usually reads a few bytes; the tensors
    are never looked at.
    """
    i = 0
    while i < len(raw):
        key, i = _varint(raw, i)
        field, wire = key >> 3, key & 7
        if wire == 2:  # length-delimited
            length, i = _varint(raw, i)
            if field == 1:
                return raw[i : i + length].decode("utf-8", "replace")
            i += length
        elif wire == 0:
            _, i = _varint(raw, i)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise InvalidArgument("the request is not a valid ModelInferRequest")
    return ""


class Backend:
    """One trainer: a persistent channel and its two stubs."""

    def __init__(self, framework: str, address: str, settings: Settings) -> None:
        self.framework = framework
        self.address = address
        options = [
            *settings.grpc_options(),
            # A restarted trainer is found again within a second, not after a long backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.channel = grpc.insecure_channel(address, options=options)
        self.trainer = trainer_pb2_grpc.TrainerStub(self.channel)
        self.inference = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        # The hot path: ModelInfer requests and replies pass through the link as bytes.
        self.link = LinkClient(
            settings.trainer_link_address(framework),
            f"{framework} trainer",
            limit=settings.max_message_bytes + FRAME_SLACK_BYTES,
        )

    def call(self, method: Callable, request, timeout: float):
        """Calls the backend; its failures become domain errors that name it."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.translate(exc) from None

    def translate(self, exc: grpc.RpcError) -> Exception:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"the {self.framework} trainer at {self.address} is unavailable")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"the {self.framework} trainer did not answer in time")
        if code == grpc.StatusCode.CANCELLED:
            return UpstreamError("CANCELLED", "the call was cancelled")
        return UpstreamError(code.name, exc.details() or code.name)

    def close(self) -> None:
        self.link.close()
        self.channel.close()


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = settings.backend_timeout_s
        # Only the trainers this deployment runs: the gateway waits for them, lists their jobs and
        # models; a request for another framework is UNAVAILABLE and says why.
        self.backends = {
            fw: Backend(fw, settings.trainer_address(fw), settings) for fw in settings.frameworks
        }
        # model name -> its backend, as last listed: what RepositoryIndex reports UNAVAILABLE
        # when that backend is down
        self._routes: dict[str, Backend] = {}
        self._routes_lock = threading.Lock()
        self._batchers: dict[str, BatchingCaller | None] = {}  # model name -> its batching
        self.requests = RequestCounter()  # the ModelInfer calls this process serves itself

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    def _timeout(self, remaining: float | None) -> float:
        """Our deadline towards a backend, never longer than what the caller has left."""
        return self.timeout_s if remaining is None else max(0.0, min(self.timeout_s, remaining))

    def backend(self, framework: str) -> Backend:
        """The trainer of `framework`, or Unavailable when this deployment runs none."""
        backend = self.backends.get(framework)
        if backend is None:
            running = ",".join(self.settings.frameworks)
            raise Unavailable(
                f"no {framework} trainer runs behind this gateway (TWINBENCH_FRAMEWORKS={running});"
                f" start one and add {framework} to TWINBENCH_FRAMEWORKS"
            )
        return backend

    def wait_ready(self, stop: threading.Event) -> None:
        """Blocks until every backend says it is ready (or `stop` is set)."""
        pending = dict(self.backends)
        while pending and not stop.is_set():
            for fw, backend in list(pending.items()):
                try:
                    if backend.inference.ServerReady(ipb.ServerReadyRequest(), timeout=1).ready:
                        del pending[fw]
                except grpc.RpcError:
                    pass
            stop.wait(0.2)
        self.refresh_routes()

    # --- training ---

    def _job_backend(self, job_id: str) -> Backend:
        check_job_id(job_id)  # its prefix names the trainer that owns it
        return self.backend(job_id.split("-", 1)[0])

    def create_job(self, spec: tpb.JobSpec, remaining: float | None) -> tpb.CreateJobResponse:
        frameworks = frameworks_of(spec.framework)
        specs = []
        for fw in frameworks:
            one = tpb.JobSpec()
            one.CopyFrom(spec)
            one.framework = fw
            # Checked here first, so "both" never starts one half of a pair that the other refuses.
            specs.append(resolve_spec(one))
        backends = [self.backend(one.framework) for one in specs]  # all there, or none started
        response = tpb.CreateJobResponse()
        for one, backend in zip(specs, backends, strict=True):
            created = backend.call(
                backend.trainer.CreateJob, tpb.CreateJobRequest(spec=one), self._timeout(remaining)
            )
            response.jobs.extend(created.jobs)
        return response

    def get_job(self, job_id: str, remaining: float | None) -> tpb.Job:
        backend = self._job_backend(job_id)
        request = tpb.GetJobRequest(job_id=job_id)
        return backend.call(backend.trainer.GetJob, request, self._timeout(remaining))

    def cancel_job(self, job_id: str, remaining: float | None) -> tpb.Job:
        backend = self._job_backend(job_id)
        request = tpb.CancelJobRequest(job_id=job_id)
        return backend.call(backend.trainer.CancelJob, request, self._timeout(remaining))

    def list_jobs(self, remaining: float | None) -> tpb.ListJobsResponse:
        jobs: list[tpb.Job] = []
        for backend in self.backends.values():
            listed = backend.call(
                backend.trainer.ListJobs, tpb.ListJobsRequest(), self._timeout(remaining)
            )
            jobs.extend(listed.jobs)
        jobs.sort(key=lambda j: (j.created_at, j.id))
        return tpb.ListJobsResponse(jobs=jobs)

    def watch_job(
        self,
        job_id: str,
        remaining: float | None,
        on_done: Callable[[Callable[[], None]], object],
    ) -> Iterator[tpb.JobEvent]:
        """Relays the backend's stream; `on_done` registers the cancel of the backend call.

        A stream lasts as long as its job, so its only deadline is the client's own.
        """
        backend = self._job_backend(job_id)
        stream = backend.trainer.WatchJob(tpb.WatchJobRequest(job_id=job_id), timeout=remaining)
        on_done(stream.cancel)  # the client leaving ends the backend stream too
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise backend.translate(exc) from None

    # --- inference ---

    def _index(self, backend: Backend) -> ipb.RepositoryIndexResponse | None:
        """The backend's index, with the routing table brought up to date; None when it is down.

        A backend that is down keeps its last known models: they answer UNAVAILABLE, not
        NOT_FOUND.
        """
        try:
            index = backend.inference.RepositoryIndex(
                ipb.RepositoryIndexRequest(), timeout=INDEX_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        names = {m.name for m in index.models}
        with self._routes_lock:
            for name in [n for n, b in self._routes.items() if b is backend and n not in names]:
                del self._routes[name]
            for name in names:
                self._routes[name] = backend
        return index

    def refresh_routes(self) -> None:
        for backend in self.backends.values():
            self._index(backend)

    def route(self, name: str) -> Backend:
        """The trainer that serves `name`, by the naming rule (twinbench.serving.repository): the trainer
        then says whether it has such a model, or the call says that it is unavailable."""
        if not name:
            raise InvalidArgument("the request names no model")
        check_model_name(name)  # garbage never costs a look at the backends
        framework = framework_of(name)
        if framework not in FRAMEWORKS:
            raise NotFound(f"unknown model {name!r}; `twinbench models` lists the served ones")
        return self.backend(framework)

    def infer(self, raw_request: bytes, remaining: float | None) -> bytes:
        """A serialized ModelInferRequest in, a serialized ModelInferResponse out."""
        start = time.perf_counter_ns()
        name = ""
        try:
            name = model_name_of(raw_request)
            reply = self._infer(name, raw_request, remaining)
        except Exception:
            self.requests.record(name, False, time.perf_counter_ns() - start)
            raise
        self.requests.record(name, True, time.perf_counter_ns() - start)
        return reply

    def _infer(self, name: str, raw_request: bytes, remaining: float | None) -> bytes:
        backend = self.route(name)
        timeout = self._timeout(remaining)
        batcher = self._batcher(name, backend)
        if batcher is not None:
            status, payload = batcher.call(raw_request, timeout)
        else:
            ((status, payload),) = backend.link.call([raw_request], timeout)
        if status != OK:
            raise UpstreamError(status_name(status), payload.decode("utf-8", "replace"))
        return payload

    def _batcher(self, name: str, backend: Backend) -> BatchingCaller | None:
        """The model's dynamic batching; None when it is not batched. Decided once per model."""
        if name not in self._batchers:  # setdefault is atomic: two first callers get the same
            batcher = None
            if self.settings.batches(name):
                max_rows, delay_s = self.settings.batch_limits(name)
                batcher = BatchingCaller(
                    backend.link.call,
                    max_items=max_rows,
                    max_bytes=self.settings.max_message_bytes,
                    delay_s=delay_s,
                )
            self._batchers.setdefault(name, batcher)
        return self._batchers[name]

    def model_ready(self, request: ipb.ModelReadyRequest, remaining: float | None):
        try:
            backend = self.route(request.name)
            return backend.call(backend.inference.ModelReady, request, self._timeout(remaining))
        except (NotFound, Unavailable, InvalidArgument):
            return ipb.ModelReadyResponse(ready=False)

    def model_metadata(self, request: ipb.ModelMetadataRequest, remaining: float | None):
        backend = self.route(request.name)
        return backend.call(backend.inference.ModelMetadata, request, self._timeout(remaining))

    def model_config(self, request: ipb.ModelConfigRequest, remaining: float | None):
        backend = self.route(request.name)
        return backend.call(backend.inference.ModelConfig, request, self._timeout(remaining))

    def model_statistics(
        self, request: ipb.ModelStatisticsRequest, remaining: float | None
    ) -> ipb.ModelStatisticsResponse:
        """One model's statistics from its trainer; with no name, every reachable trainer's."""
        if request.name:
            backend = self.route(request.name)
            return backend.call(
                backend.inference.ModelStatistics, request, self._timeout(remaining)
            )
        response = ipb.ModelStatisticsResponse()
        for backend in self.backends.values():
            try:
                part = backend.inference.ModelStatistics(request, timeout=self._timeout(remaining))
            except grpc.RpcError as exc:
                log.warning("no statistics from the %s trainer: %s", backend.framework, exc.code())
                continue
            response.model_stats.extend(part.model_stats)
        return response

    def server_ready(self) -> bool:
        for backend in self.backends.values():
            try:
                request = ipb.ServerReadyRequest()
                if not backend.inference.ServerReady(request, timeout=INDEX_TIMEOUT_S).ready:
                    return False
            except grpc.RpcError:
                return False
        return True

    def repository_index(self, ready_only: bool) -> ipb.RepositoryIndexResponse:
        """Every backend's models; those of a backend that is down are listed UNAVAILABLE."""
        response = ipb.RepositoryIndexResponse()
        for backend in self.backends.values():
            index = self._index(backend)
            if index is not None:
                response.models.extend(index.models)
            elif not ready_only:
                reason = f"the {backend.framework} trainer is unavailable"
                with self._routes_lock:
                    lost = sorted(n for n, b in self._routes.items() if b is backend)
                for name in lost:
                    response.models.add(name=name, state="UNAVAILABLE", reason=reason)
        response.models.sort(key=lambda m: (m.name, int(m.version or 0)))
        return response
