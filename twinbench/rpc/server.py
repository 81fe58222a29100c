"""gRPC plumbing shared by all three services: server bootstrap, health, error mapping, shutdown."""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from twinbench.config import Settings
from twinbench.errors import TwinbenchError

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, TwinbenchError):
        context.abort(grpc.StatusCode[exc.code], str(exc))
    # Anything else is a bug: log it whole, tell the caller nothing about our insides.
    log.error("unhandled error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def handle_errors(method: Callable) -> Callable:
    """Wraps one servicer method (unary or server-streaming) so domain errors become status codes."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - the one place errors become codes
                _abort(context, exc, method.__name__)

        return stream

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc, method.__name__)

    return unary


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline in seconds, or None when it set none (gRPC then says ~3e11 years)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else remaining


def map_errors(cls: type) -> type:
    """Class decorator: applies `handle_errors` to every RPC method (names start upper-case)."""
    for name, member in list(vars(cls).items()):
        if callable(member) and name[:1].isupper():
            setattr(cls, name, handle_errors(member))
    return cls


def create_server(
    address: str,
    settings: Settings,
    max_workers: int = 32,
    interceptors: tuple[grpc.ServerInterceptor, ...] = (),
    tls: tuple[Path, Path] | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server bound to `address` (port 0 picks a free one), with the health service NOT_SERVING.

    `tls` is (certificate, key), PEM files; without it the port is plaintext.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=settings.grpc_options(),
        interceptors=interceptors,
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls:
        cert, key = (path.read_bytes() for path in tls)
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port, health_servicer


def enable_reflection(server: grpc.Server) -> None:
    """gRPC server reflection (what `grpcurl list` asks), for the APIs every service serves."""
    from grpc_reflection.v1alpha import reflection

    from twinbench.api import inference_pb2, trainer_pb2

    names = [
        trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name,
        inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)


def set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse
    health_servicer.set("", status.SERVING if serving else status.NOT_SERVING)


def run_until_signalled(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    name: str,
    port: int,
    settings: Settings,
    on_stop: Callable[[], None] = lambda: None,
    grace_s: float = 10.0,
) -> None:
    """Serves until SIGTERM or SIGINT: then stops taking work, runs `on_stop`, drains with a grace."""
    stopping = threading.Event()

    def request_stop(signum, _frame):
        log.info("%s: signal %d, stopping", name, signum)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    write_port_file(settings.home / "run" / f"{name}.port", port)
    log.info("%s listening on port %d", name, port)
    stopping.wait()
    set_serving(health_servicer, False)
    on_stop()
    server.stop(grace_s).wait()
    log.info("%s stopped", name)


def write_port_file(path: Path, port: int) -> None:
    """Tells a launcher which port was bound (port 0 in tests); written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
