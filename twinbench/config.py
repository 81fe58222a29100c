"""Typed settings from TWINBENCH_* environment variables: the same names in local mode, compose and Kubernetes."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

DEFAULT_PORTS = {
    "gateway": 50051,
    "torch_trainer": 50052,
    "tf_trainer": 50053,
    "jax_trainer": 50054,
}
# Each trainer's inference link (twinbench.serving.link), which only the gateway calls.
DEFAULT_LINK_PORTS = {"torch_trainer": 50062, "tf_trainer": 50063, "jax_trainer": 50064}
# Each service's Prometheus metrics (HTTP, /metrics); 8002 is Triton's metrics port.
DEFAULT_METRICS_PORTS = {
    "gateway": 8002,
    "torch_trainer": 8012,
    "tf_trainer": 8013,
    "jax_trainer": 8014,
}
# Every framework with a trainer service; each one's trainer is the service `<framework>_trainer`.
FRAMEWORKS = ("torch", "tf", "jax")
# What a JobSpec's framework "both" means: the original pair, kept so that existing requests and
# scripts still ask for exactly two jobs; "all" asks for one job per framework.
BOTH = ("torch", "tf")


def frameworks_of(framework: str) -> tuple[str, ...]:
    """The frameworks a JobSpec's framework names: "both", "all", or one."""
    return {"both": BOTH, "all": FRAMEWORKS}.get(framework, (framework,))


# The Go programs that `make` builds when it can (see the Makefile's `native`).
FRONT_PROGRAM = "twinbench-front"
LOADGEN_PROGRAM = "twinbench-loadgen"


@dataclass(frozen=True)
class Settings:
    home: Path
    data: Path  # dataset files: mnist/, fashion-mnist/, image folders
    gateway: str  # where clients (CLI, Locust) find the gateway
    # Where the gateway finds each framework's trainer and its inference link, by framework name
    # (TWINBENCH_<FRAMEWORK>_TRAINER and TWINBENCH_<FRAMEWORK>_TRAINER_LINK).
    trainers: Mapping[str, str]
    trainer_links: Mapping[str, str]
    # The frameworks whose trainers this deployment runs (TWINBENCH_FRAMEWORKS): the gateway waits
    # for these and answers UNAVAILABLE, saying so, for the others.
    frameworks: tuple[str, ...]
    listen: str | None  # this service's bind address; None: loopback on its default port
    link_listen: str | None  # a trainer's inference link; None: the host of `listen`, port 5006x
    metrics_listen: str | None  # this service's /metrics; None: the host of `listen`, 8002/801x
    max_message_bytes: int
    backend_timeout_s: float
    max_batch_size: int
    max_queued_jobs: int  # per trainer; more get RESOURCE_EXHAUSTED
    dynamic_batching: str  # "off", "on" (every model), or a comma-separated list of model names
    batch_max_rows: int  # the most requests the gateway merges, and rows a trainer runs at once
    batch_delay_s: float  # how long a batch waits for company (0: only what is already queued)
    serving_threads: int  # CPU threads per inference call (ONNX Runtime, TorchScript); 0: default
    token: str  # when set, the gateway wants `authorization: Bearer <token>`
    inference_open: bool  # inference needs no token even when one is set
    tls_cert: Path | None  # the gateway's certificate and key (PEM); both or neither
    tls_key: Path | None
    tls_ca: Path | None  # what clients trust to reach a TLS gateway
    gateway_front: str  # the gateway's front binary: "auto", "off" or a path
    # The front's bounds on its clients (docs/security.md): open connections, concurrent streams
    # per connection, and the largest header list of a call. With the largest message, they bound
    # the memory clients can make it hold.
    front_max_connections: int
    front_max_streams: int
    front_max_header_bytes: int
    # Each training job's worker process: the CPUs it may use ("" all of the trainer's, or a list
    # like "0-3,8") and its intra-op and inter-op threads (0: one per CPU of that set), the same
    # in both frameworks.
    train_cpus: str
    train_threads: int
    train_interop_threads: int
    # The most workers (JobSpec.workers) one data-parallel job may ask of this trainer; 0: as
    # many as its training CPUs. More are refused with FAILED_PRECONDITION at creation
    # (docs/job-requests.md).
    max_workers: int = 0
    # Models batched their own way (TWINBENCH_BATCH_MODELS, "name=rows:delay_us,..."): a tuned
    # export's setting from its config.pbtxt (`compare --tuned-batching`), in place of
    # batch_max_rows and batch_delay_s.
    batch_models: str = ""

    @property
    def model_repository(self) -> Path:
        return self.home / "model_repository"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def active_jobs(self) -> Path:
        """Where running jobs leave a marker; inside `runs`, which both trainers share in every
        deployment, so that each job sees the other trainer's."""
        return self.runs / ".active-jobs"

    def jobs_db(self, framework: str) -> Path:
        return self.home / "jobs" / f"{framework}.sqlite"

    def trainer_address(self, framework: str) -> str:
        return self.trainers[framework]

    def trainer_link_address(self, framework: str) -> str:
        return self.trainer_links[framework]

    def listen_address(self, service: str) -> str:
        return self.listen or f"127.0.0.1:{DEFAULT_PORTS[service]}"

    def link_listen_address(self, service: str) -> str:
        host = self.listen_address(service).rsplit(":", 1)[0]
        return self.link_listen or f"{host}:{DEFAULT_LINK_PORTS[service]}"

    def metrics_listen_address(self, service: str) -> str:
        host = self.listen_address(service).rsplit(":", 1)[0]
        return self.metrics_listen or f"{host}:{DEFAULT_METRICS_PORTS[service]}"

    def batches(self, model_name: str) -> bool:
        """Whether `model_name` is served with dynamic batching."""
        if self.dynamic_batching in ("off", ""):
            return False
        return self.dynamic_batching == "on" or model_name in self.dynamic_batching.split(",")

    def batch_limits(self, model_name: str) -> tuple[int, float]:
        """The most requests the gateway merges for `model_name` and how long a batch waits."""
        for item in filter(None, self.batch_models.split(",")):
            name, _, limits = item.partition("=")
            if name == model_name:
                rows, _, delay_us = limits.partition(":")
                return int(rows), int(delay_us) / 1e6
        return self.batch_max_rows, self.batch_delay_s

    def gateway_front_program(self) -> Path | None:
        """The gateway's front (services/gateway/front), or None: the gateway serves alone."""
        if self.gateway_front == "off":
            return None
        if self.gateway_front == "auto":
            return installed_program(FRONT_PROGRAM)
        path = Path(self.gateway_front)
        if not path.is_file():
            raise SystemExit(f"TWINBENCH_GATEWAY_FRONT={self.gateway_front}: no such file")
        return path

    def grpc_options(self) -> list[tuple[str, int]]:
        """Message limits set explicitly on both ends: gRPC's 4 MiB receive default is too small for batches."""
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def get(name: str, default: str) -> str:
        return env.get(f"TWINBENCH_{name}", default) or default

    home = Path(get("HOME", str(Path.home() / ".twinbench"))).expanduser().resolve()
    trainers = {
        fw: get(f"{fw.upper()}_TRAINER", f"127.0.0.1:{DEFAULT_PORTS[f'{fw}_trainer']}")
        for fw in FRAMEWORKS
    }
    # By default a trainer's link is on the host of its gRPC address.
    trainer_links = {
        fw: get(
            f"{fw.upper()}_TRAINER_LINK",
            f"{trainers[fw].rsplit(':', 1)[0]}:{DEFAULT_LINK_PORTS[f'{fw}_trainer']}",
        )
        for fw in FRAMEWORKS
    }

    return Settings(
        home=home,
        data=Path(get("DATA", str(home / "data"))).expanduser().resolve(),
        gateway=get("GATEWAY", f"127.0.0.1:{DEFAULT_PORTS['gateway']}"),
        frameworks=parse_frameworks(get("FRAMEWORKS", ",".join(BOTH))),
        trainers=MappingProxyType(trainers),
        trainer_links=MappingProxyType(trainer_links),
        listen=env.get("TWINBENCH_LISTEN") or None,
        link_listen=env.get("TWINBENCH_LINK_LISTEN") or None,
        metrics_listen=env.get("TWINBENCH_METRICS_LISTEN") or None,
        max_message_bytes=int(get("MAX_MESSAGE_BYTES", str(64 * 1024 * 1024))),
        backend_timeout_s=float(get("BACKEND_TIMEOUT_S", "30")),
        max_batch_size=int(get("MAX_BATCH_SIZE", "256")),
        max_queued_jobs=int(get("MAX_QUEUED_JOBS", "16")),
        dynamic_batching=get("DYNAMIC_BATCHING", "on"),
        batch_max_rows=int(get("BATCH_MAX_ROWS", "64")),
        batch_delay_s=float(get("BATCH_DELAY_US", "0")) / 1e6,
        serving_threads=int(get("SERVING_THREADS", "1")),
        token=env.get("TWINBENCH_TOKEN", ""),
        inference_open=get("INFERENCE_OPEN", "false").lower() in ("1", "true", "yes"),
        tls_cert=_path(env.get("TWINBENCH_TLS_CERT")),
        tls_key=_path(env.get("TWINBENCH_TLS_KEY")),
        tls_ca=_path(env.get("TWINBENCH_TLS_CA")),
        gateway_front=get("GATEWAY_FRONT", "auto"),
        front_max_connections=int(get("FRONT_MAX_CONNECTIONS", "4096")),
        front_max_streams=int(get("FRONT_MAX_STREAMS", "256")),
        front_max_header_bytes=int(get("FRONT_MAX_HEADER_BYTES", str(16 * 1024))),
        train_cpus=get("TRAIN_CPUS", ""),
        train_threads=int(get("TRAIN_THREADS", "0")),
        train_interop_threads=int(get("TRAIN_INTEROP_THREADS", "0")),
        max_workers=int(get("MAX_WORKERS", "0")),
        batch_models=get("BATCH_MODELS", ""),
    )


def parse_frameworks(value: str, source: str = "TWINBENCH_FRAMEWORKS") -> tuple[str, ...]:
    """A comma-separated list of frameworks, each known and named once; `source` names where it
    came from in the refusal."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown or not names or len(set(names)) != len(names):
        raise SystemExit(f"{source}={value}: name each of {', '.join(FRAMEWORKS)} at most once")
    return names


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def installed_program(name: str) -> Path | None:
    """A program that `make` (or an image) installs beside Python, else one on PATH, else None."""
    beside_python = Path(sys.prefix) / "bin" / name
    if beside_python.is_file():
        return beside_python
    found = shutil.which(name)
    return Path(found) if found else None
