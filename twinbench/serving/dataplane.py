"""The V2 data plane of one trainer, free of gRPC: finds its exports in the repository and runs them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from twinbench import __version__
from twinbench.api import inference_pb2 as ipb
from twinbench.errors import InvalidArgument, NotFound, TwinbenchError, Unavailable
from twinbench.serving.link import INTERNAL, OK, Reply, status_of
from twinbench.serving.repository import (
    OUTPUT_NAME,
    ExportInfo,
    ModelRepository,
    check_model_name,
    parse_model_name,
)
from twinbench.serving.statistics import RequestTiming, ServingStats
from twinbench.serving.tensors import DATATYPES, TensorError, add_output, decode_inputs

log = logging.getLogger(__name__)


class Runtime(Protocol):
    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        """The model's inputs in their declared order (an image model's one: float32 N x C x H x
        W; NCF: user and item ids; GNMT: source and target token ids), float32 logits out."""


# (path of model.pt / model.onnx / model.savedmodel, CPU threads per call or None to leave the
# framework's default): a runtime
Loader = Callable[[Path, int | None], Runtime]


class OnnxRuntime:
    """ONNX Runtime, served by both trainers; CUDA when the installed build has it.

    With `threads`, each call uses that many intra-op threads and they sleep between calls:
    measured on 2 cores, LeNet-5 at batch 1 takes 0.026 ms of CPU with one thread and 0.063 ms
    with the default (one per core, spinning), and the spinning starves the server's own threads.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))[0]


class InferenceCore:
    """Serves the versions of `framework`'s exports whose formats it has loaders for."""

    def __init__(
        self,
        repository: ModelRepository,
        framework: str,
        loaders: dict[str, Loader],
        max_rows: int = 64,
        threads: int | None = None,
    ):
        self.max_rows = max_rows  # the most rows one merged batch of an inference-link frame holds
        self.threads = threads  # CPU threads per runtime call
        self.repository = repository
        self.framework = framework
        self.loaders = loaders
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int], tuple[ExportInfo, Runtime]] = {}
        self._versions: dict[str, list[int]] = {}
        self.stats = ServingStats()
        self.refresh()

    def _served(self, name: str) -> bool:
        parsed = parse_model_name(name)
        return parsed is not None and parsed[1] == self.framework and parsed[2] in self.loaders

    def refresh(self) -> None:
        """Rescans the repository: at start, after each job, and when a request names the unknown."""
        versions = {
            n: self.repository.versions(n) for n in self.repository.names() if self._served(n)
        }
        self._versions = versions  # replaced whole: readers never see it half-built

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[int]:
        return self._versions.get(name, [])

    def _version(self, name: str, version: str) -> int:
        """The version a request means; the disk is only read again on a miss, not per request."""
        versions = self.versions(name)
        if not versions:
            check_model_name(name)
        if not versions or (version and (not version.isdigit() or int(version) not in versions)):
            self.refresh()
            versions = self.versions(name)
        if not versions:
            raise NotFound(f"unknown model {name!r}; `twinbench models` lists the served ones")
        if not version:
            return versions[-1]
        if not version.isdigit() or int(version) not in versions:
            raise NotFound(
                f"model {name!r} has no version {version!r}; it has {', '.join(map(str, versions))}"
            )
        return int(version)

    def load(self, name: str, version: str = "") -> tuple[ExportInfo, Runtime]:
        key = (name, self._version(name, version))
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded
        with self._lock:  # one load per version, however many requests arrive at once
            if key not in self._loaded:
                info = self.repository.info(*key)
                path = self.repository.version_dir(*key) / info.filename
                try:
                    runtime = self.loaders[info.format](path, self.threads)
                except Exception as exc:
                    log.exception("cannot load %s version %d", *key)
                    raise Unavailable(f"model {name!r} version {key[1]} failed to load") from exc
                self._loaded[key] = (info, runtime)
            return self._loaded[key]

    def preload(self) -> None:
        """Loads the newest version of every served model, so the first request is not slow."""
        for name in self.names():
            try:
                self.load(name)
            except Unavailable:
                pass  # reported when it is asked for

    def repository_index(self) -> ipb.RepositoryIndexResponse:
        self.refresh()
        response = ipb.RepositoryIndexResponse()
        for name in self.names():
            for version in self.versions(name):
                response.models.add(name=name, version=str(version), state="READY")
        return response

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.load(name, version)
        except (NotFound, Unavailable):
            return False
        return True

    def metadata(self, name: str, version: str) -> ipb.ModelMetadataResponse:
        info, _ = self.load(name, version)
        tensor = ipb.ModelMetadataResponse.TensorMetadata
        return ipb.ModelMetadataResponse(
            name=name,
            versions=[str(v) for v in self.versions(name)],
            platform=info.platform,
            inputs=[
                tensor(name=i.name, datatype=i.datatype, shape=[-1, *i.shape])
                for i in info.input_specs
            ],
            outputs=[tensor(name=OUTPUT_NAME, datatype="FP32", shape=[-1, *info.logits_shape])],
        )

    def server_metadata(self) -> ipb.ServerMetadataResponse:
        return ipb.ServerMetadataResponse(
            name=f"twinbench-{self.framework}-trainer",
            version=__version__,
            extensions=list(EXTENSIONS),
        )

    def model_config(self, name: str, version: str) -> ipb.ModelConfigResponse:
        """The model's config.pbtxt, the file Triton would read, as Triton's ModelConfig."""
        self._version(name, version)  # NOT_FOUND for what is not served
        path = self.repository.root / name / "config.pbtxt"
        try:
            config = text_format.Parse(path.read_text(), ipb.ModelConfig())
        except (OSError, text_format.ParseError) as exc:
            log.error("cannot read %s: %s", path, exc)
            raise Unavailable(f"model {name!r} has no readable config.pbtxt") from None
        return ipb.ModelConfigResponse(config=config)

    def statistics(self, name: str, version: str) -> ipb.ModelStatisticsResponse:
        """Triton's ModelStatistics: one model (or all, with no name), one version (or all)."""
        if name:
            self._version(name, version)  # NOT_FOUND for what is not served
        served = {n: self.versions(n) for n in self.names()}
        return self.stats.response(name, version, served)

    def infer(self, request: ipb.ModelInferRequest) -> ipb.ModelInferResponse:
        start = time.perf_counter_ns()
        try:
            info, runtime, batch = self._prepare(request)
        except TwinbenchError:
            self._failed(request.model_name, request.model_version, start)
            raise
        prepared = time.perf_counter_ns()
        try:
            logits = runtime.infer(*batch)
        except Exception:
            self._failed(info.name, str(info.version), start)
            raise
        inferred = time.perf_counter_ns()
        response = self._response(request, info, logits)
        done = time.perf_counter_ns()
        timing = RequestTiming(
            done - start, 0, prepared - start, inferred - prepared, done - inferred
        )
        self.stats.execution(info.name, info.version, len(batch[0]), *_phases(timing))
        self.stats.success(info.name, info.version, len(batch[0]), timing)
        return response

    def _failed(self, name: str, version: str, start_ns: int) -> None:
        """Counts a failed request against the version it named, when that is a served one."""
        versions = self.versions(name)
        if not versions:
            return  # unknown names are not counted: clients could make up any number of them
        number = int(version) if version.isdigit() else versions[-1]
        if number in versions:
            self.stats.failure(name, number, time.perf_counter_ns() - start_ns)

    def infer_frame(self, requests: list[bytes]) -> list[Reply]:
        """Serves one frame of the inference link: serialized requests in, a reply for each.

        Requests for the same model version are run as one batch (up to `max_rows`
        rows), which is where the gateway's dynamic batching pays; a bad request gets its own
        error and does not spoil the others.
        """
        arrived = time.perf_counter_ns()
        replies: list[Reply | None] = [None] * len(requests)
        runs: dict[tuple[str, int], list[tuple[int, ipb.ModelInferRequest, list[np.ndarray]]]] = {}
        runtimes: dict[tuple[str, int], tuple[ExportInfo, Runtime]] = {}
        prepared: list[int] = [0] * len(requests)  # when each request's input was ready
        input_ns: list[int] = [0] * len(requests)
        for i, raw in enumerate(requests):
            start = time.perf_counter_ns()
            request = None
            try:
                request = _parse(raw)
                info, runtime, batch = self._prepare(request)
            except TwinbenchError as exc:
                replies[i] = (status_of(exc), str(exc).encode())
                if request is not None:
                    self._failed(request.model_name, request.model_version, start)
                continue
            except Exception:  # noqa: BLE001 - a bug: logged whole, the caller told only that
                log.exception("unhandled error on an inference-link request")
                replies[i] = (INTERNAL, b"internal error in ModelInfer; see the trainer's log")
                continue
            prepared[i] = time.perf_counter_ns()
            input_ns[i] = prepared[i] - start
            runs.setdefault((info.name, info.version), []).append((i, request, batch))
            runtimes[(info.name, info.version)] = (info, runtime)
        for key, items in runs.items():
            info, runtime = runtimes[key]
            limit = min(info.max_batch_size, self.max_rows)
            for chunk in _chunks(items, limit):
                batches = [batch for _, _, batch in chunk]
                merged = (
                    batches[0]
                    if len(batches) == 1
                    else [np.concatenate(parts) for parts in zip(*batches, strict=True)]
                )
                began = time.perf_counter_ns()
                try:
                    logits = runtime.infer(*merged)
                except Exception:  # noqa: BLE001 - every request of the chunk hears of it
                    log.exception("%s version %d failed on a batch", *key)
                    failed = (INTERNAL, f"model {key[0]!r} failed; see the trainer's log".encode())
                    for i, _, _ in chunk:
                        replies[i] = failed
                        self.stats.failure(*key, time.perf_counter_ns() - arrived)
                    continue
                inferred = time.perf_counter_ns()
                at = 0
                output_total = 0
                for i, request, batch in chunk:
                    rows = logits[at : at + len(batch[0])]
                    at += len(batch[0])
                    out_start = time.perf_counter_ns()
                    replies[i] = (OK, self._response(request, info, rows).SerializeToString())
                    done = time.perf_counter_ns()
                    output_total += done - out_start
                    # As Triton counts it: the batch's run is each of its requests' compute_infer.
                    timing = RequestTiming(
                        total=done - arrived,
                        queue=began - prepared[i],
                        compute_input=input_ns[i],
                        compute_infer=inferred - began,
                        compute_output=done - out_start,
                    )
                    self.stats.success(*key, len(batch[0]), timing)
                self.stats.execution(
                    *key, at, sum(input_ns[i] for i, _, _ in chunk), inferred - began, output_total
                )
        answered = [reply for reply in replies if reply is not None]
        assert len(answered) == len(replies)  # every request got its reply or its error above
        return answered

    def _prepare(
        self, request: ipb.ModelInferRequest
    ) -> tuple[ExportInfo, Runtime, list[np.ndarray]]:
        """The model version a request names and its inputs, checked, in the model's order."""
        info, runtime = self.load(request.model_name, request.model_version)
        batch = self._input(request, info)
        for out in request.outputs:
            if out.name != OUTPUT_NAME:
                raise InvalidArgument(
                    f"model {info.name!r} has no output {out.name!r}; it has {OUTPUT_NAME!r}"
                )
        return info, runtime, batch

    @staticmethod
    def _response(
        request: ipb.ModelInferRequest, info: ExportInfo, logits: np.ndarray
    ) -> ipb.ModelInferResponse:
        response = ipb.ModelInferResponse(
            model_name=info.name, model_version=str(info.version), id=request.id
        )
        add_output(response, OUTPUT_NAME, logits.astype(np.float32, copy=False))
        return response

    @staticmethod
    def _input(request: ipb.ModelInferRequest, info: ExportInfo) -> list[np.ndarray]:
        try:
            inputs = decode_inputs(request)
        except TensorError as exc:
            raise InvalidArgument(str(exc)) from None
        specs = info.input_specs
        names = [spec.name for spec in specs]
        if sorted(inputs) != sorted(names):
            if len(specs) == 1:
                raise InvalidArgument(
                    f"model {info.name!r} takes one input named {names[0]!r}, got {list(inputs)}"
                )
            raise InvalidArgument(f"model {info.name!r} takes inputs {names}, got {list(inputs)}")
        out = []
        for spec in specs:
            batch = inputs[spec.name]
            expected = [-1, *spec.shape]
            dtype = DATATYPES[spec.datatype][0]
            if batch.dtype != dtype:
                raise InvalidArgument(
                    f"input {spec.name!r} must be {spec.datatype}, got {batch.dtype}"
                )
            if batch.ndim != len(expected) or tuple(batch.shape[1:]) != spec.shape:
                layout = " (batch first, NCHW)" if spec.datatype == "FP32" else " (batch first)"
                raise InvalidArgument(
                    f"input {spec.name!r} has shape {list(batch.shape)}; model {info.name!r} "
                    f"takes {expected}{layout}"
                )
            if not 1 <= batch.shape[0] <= info.max_batch_size:
                raise InvalidArgument(
                    f"batch size {batch.shape[0]} is outside 1..{info.max_batch_size} "
                    f"for model {info.name!r}"
                )
            # An id out of its table would fail inside the runtime (an INTERNAL error) or,
            # in some runtimes, read another row: refuse it here.
            if spec.id_limit and batch.size and (batch.min() < 0 or batch.max() >= spec.id_limit):
                raise InvalidArgument(
                    f"input {spec.name!r} holds ids outside 0..{spec.id_limit - 1}"
                    f" for model {info.name!r}"
                )
            out.append(batch)
        if len({len(batch) for batch in out}) > 1:
            raise InvalidArgument(
                f"model {info.name!r}: inputs {names} have different batch sizes"
                f" {[len(b) for b in out]}"
            )
        return out


EXTENSIONS = ("model_configuration", "statistics")


def _phases(timing: RequestTiming) -> tuple[int, int, int]:
    return timing.compute_input, timing.compute_infer, timing.compute_output


def _parse(raw: bytes) -> ipb.ModelInferRequest:
    try:
        return ipb.ModelInferRequest.FromString(raw)
    except DecodeError:
        raise InvalidArgument("the request is not a valid ModelInferRequest") from None


def _chunks(items: list, max_rows: int) -> list[list]:
    """Consecutive groups of whole requests, each group at most `max_rows` rows (or one request)."""
    chunks: list[list] = []
    rows = max_rows
    for item in items:
        n = len(item[2][0])  # the rows of its first input
        if rows + n > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(item)
        rows += n
    return chunks
