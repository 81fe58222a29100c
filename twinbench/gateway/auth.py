"""Bearer-token check at the gateway: one interceptor in front of every RPC but health."""

from __future__ import annotations

import hmac

import grpc

INFERENCE = "/inference.GRPCInferenceService/"
# With inference open, these need no token; RepositoryIndex (the repository) still does.
OPEN_INFERENCE = {
    INFERENCE + m
    for m in (
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelInfer",
    )
}
HEALTH = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, inference_open: bool) -> None:
        self.expected = f"Bearer {token}".encode()
        self.open = OPEN_INFERENCE if inference_open else set()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(HEALTH) or method in self.open:
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self.expected):  # constant time
            return continuation(handler_call_details)
        return _refusal(continuation(handler_call_details))


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind that answers UNAUTHENTICATED and says nothing else."""
    if handler is None:
        return None  # an unknown method stays UNIMPLEMENTED

    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    def deny_stream(request, context):
        deny(request, context)
        yield  # never reached: makes this a generator, as a streaming handler must be

    kwargs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.stream_stream:  # server reflection
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
