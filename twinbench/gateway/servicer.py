"""Thin gRPC adapters over the gateway's router."""

from __future__ import annotations

import grpc

from twinbench import __version__
from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.gateway.router import Gateway
from twinbench.rpc.server import map_errors, time_remaining


@map_errors
class GatewayTrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def CreateJob(self, request, context):
        return self.gateway.create_job(request.spec, time_remaining(context))

    def WatchJob(self, request, context):
        yield from self.gateway.watch_job(
            request.job_id, time_remaining(context), context.add_callback
        )

    def GetJob(self, request, context):
        return self.gateway.get_job(request.job_id, time_remaining(context))

    def ListJobs(self, request, context):
        return self.gateway.list_jobs(time_remaining(context))

    def CancelJob(self, request, context):
        return self.gateway.cancel_job(request.job_id, time_remaining(context))


@map_errors
class GatewayInferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def ServerLive(self, request, context):
        return ipb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return ipb.ServerReadyResponse(ready=self.gateway.server_ready())

    def ModelReady(self, request, context):
        return self.gateway.model_ready(request, time_remaining(context))

    def ServerMetadata(self, request, context):
        return ipb.ServerMetadataResponse(
            name="twinbench",
            version=__version__,
            extensions=["model_repository", "model_configuration", "statistics"],
        )

    def ModelMetadata(self, request, context):
        return self.gateway.model_metadata(request, time_remaining(context))

    def ModelInfer(self, request, context):
        # `request` is the serialized message: see inference_handler.
        return self.gateway.infer(request, time_remaining(context))

    def ModelConfig(self, request, context):
        return self.gateway.model_config(request, time_remaining(context))

    def ModelStatistics(self, request, context):
        return self.gateway.model_statistics(request, time_remaining(context))

    def RepositoryIndex(self, request, context):
        return self.gateway.repository_index(request.ready)


def inference_handler(servicer: GatewayInferenceServicer) -> grpc.GenericRpcHandler:
    """The V2 service with ModelInfer taking and returning bytes, so the gateway never parses a
    tensor; every other method as the generated code registers it."""
    handlers = {}
    for method in ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
            continue
        request = getattr(ipb, method.input_type.name)
        response = getattr(ipb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)
