"""The V2 data plane of one trainer, free of gRPC: finds its exports in the repository and runs them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import numpy as np

from twinbench import __version__
from twinbench.api import inference_pb2 as pb
from twinbench.config import Settings
from twinbench.errors import InvalidArgument, NotFound, Unavailable
from twinbench.repository import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportInfo,
    ModelRepository,
    check_model_name,
)
from twinbench.tensors import TensorError, add_output, decode_inputs

log = logging.getLogger(__name__)


class Runtime(Protocol):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 N x C x H x W in, float32 logits N x classes out."""


Loader = Callable[[Path], Runtime]  # path of model.pt / model.onnx / model.savedmodel


class OnnxRuntime:
    """ONNX Runtime, served by both trainers; CUDA when the installed build has it."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class DynamicBatcher:
    """Merges concurrent requests for one model version into one runtime call, as Triton does.

    The first request waits at most `delay_s` for company (0: it takes only what is already
    queued, so a lone caller pays nothing); results are split back to their callers in order.
    """

    def __init__(self, runtime: Runtime, max_rows: int, delay_s: float) -> None:
        self.runtime = runtime
        self.max_rows = max_rows
        self.delay_s = delay_s
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future]] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="dynamic-batcher", daemon=True).start()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        done: Future = Future()
        self._queue.put((batch, done))
        return done.result()

    def _collect(self) -> list[tuple[np.ndarray, Future]]:
        items = [self._queue.get()]
        rows = len(items[0][0])
        deadline = time.perf_counter() + self.delay_s
        while rows < self.max_rows:
            try:
                wait = deadline - time.perf_counter()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            rows += len(item[0])
        return items

    def _work(self) -> None:
        while True:
            items = self._collect()
            batches = [batch for batch, _ in items]
            try:
                merged = batches[0] if len(batches) == 1 else np.concatenate(batches)
                out = self.runtime.infer(merged)
            except Exception as exc:  # noqa: BLE001 - every caller gets the error
                for _, done in items:
                    done.set_exception(exc)
                continue
            start = 0
            for batch, done in items:
                done.set_result(out[start : start + len(batch)])
                start += len(batch)


class InferenceCore:
    """Serves the versions of `framework`'s exports whose formats it has loaders for."""

    def __init__(
        self,
        repository: ModelRepository,
        framework: str,
        loaders: dict[str, Loader],
        settings: Settings | None = None,
    ):
        self.settings = settings
        self.repository = repository
        self.framework = framework
        self.loaders = loaders
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int], tuple[ExportInfo, Runtime]] = {}
        self._versions: dict[str, list[int]] = {}
        self.refresh()

    def _served(self, name: str) -> bool:
        parts = name.rsplit("-", 2)
        return len(parts) == 3 and parts[1] == self.framework and parts[2] in self.loaders

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
                    runtime = self.loaders[info.format](path)
                    if self.settings and self.settings.batches(name):
                        runtime = DynamicBatcher(
                            runtime, self.settings.batch_max_rows, self.settings.batch_delay_s
                        )
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

    def repository_index(self) -> pb.RepositoryIndexResponse:
        self.refresh()
        response = pb.RepositoryIndexResponse()
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

    def metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        info, _ = self.load(name, version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=name,
            versions=[str(v) for v in self.versions(name)],
            platform=info.platform,
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, *info.input_shape])],
            outputs=[tensor(name=OUTPUT_NAME, datatype="FP32", shape=[-1, info.num_classes])],
        )

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=f"twinbench-{self.framework}-trainer", version=__version__
        )

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        info, runtime = self.load(request.model_name, request.model_version)
        batch = self._input(request, info)
        for out in request.outputs:
            if out.name != OUTPUT_NAME:
                raise InvalidArgument(
                    f"model {info.name!r} has no output {out.name!r}; it has {OUTPUT_NAME!r}"
                )
        logits = runtime.infer(batch)
        response = pb.ModelInferResponse(
            model_name=info.name, model_version=str(info.version), id=request.id
        )
        add_output(response, OUTPUT_NAME, logits.astype(np.float32, copy=False))
        return response

    @staticmethod
    def _input(request: pb.ModelInferRequest, info: ExportInfo) -> np.ndarray:
        try:
            inputs = decode_inputs(request)
        except TensorError as exc:
            raise InvalidArgument(str(exc)) from None
        if list(inputs) != [INPUT_NAME]:
            raise InvalidArgument(
                f"model {info.name!r} takes one input named {INPUT_NAME!r}, got {list(inputs)}"
            )
        batch = inputs[INPUT_NAME]
        expected = [-1, *info.input_shape]
        if batch.dtype != np.float32:
            raise InvalidArgument(f"input {INPUT_NAME!r} must be FP32, got {batch.dtype}")
        if batch.ndim != len(expected) or tuple(batch.shape[1:]) != info.input_shape:
            raise InvalidArgument(
                f"input {INPUT_NAME!r} has shape {list(batch.shape)}; model {info.name!r} "
                f"takes {expected} (batch first, NCHW)"
            )
        if not 1 <= batch.shape[0] <= info.max_batch_size:
            raise InvalidArgument(
                f"batch size {batch.shape[0]} is outside 1..{info.max_batch_size} "
                f"for model {info.name!r}"
            )
        return batch
