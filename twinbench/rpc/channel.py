"""Client channels to the services: message limits, the bearer token and TLS, set in one place;
and the health probe that says whether a service is serving."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.config import Settings


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


def open_channel(address: str, settings: Settings) -> grpc.Channel:
    options = settings.grpc_options()
    if settings.tls_ca:
        credentials = grpc.ssl_channel_credentials(settings.tls_ca.read_bytes())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if settings.token:
        channel = grpc.intercept_channel(channel, _BearerToken(settings.token))
    return channel


class Client:
    """Both APIs of the gateway over one channel."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.channel = open_channel(address, settings)
        self.trainer = trainer_pb2_grpc.TrainerStub(self.channel)
        self.inference = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def is_serving(address: str, timeout_s: float = 1.0, tls_ca: Path | None = None) -> bool:
    """True when the gRPC health service at `address` says SERVING (over TLS with `tls_ca`)."""
    if tls_ca:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
