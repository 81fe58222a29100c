"""Thin gRPC adapters over the gateway's router."""

from __future__ import annotations

from services.gateway.router import Gateway
from twinbench import __version__
from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.grpc_server import map_errors


@map_errors
class GatewayTrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def CreateJob(self, request, context):
        return self.gateway.create_job(request.spec, context.time_remaining())

    def WatchJob(self, request, context):
        yield from self.gateway.watch_job(
            request.job_id, context.time_remaining(), context.add_callback
        )

    def GetJob(self, request, context):
        return self.gateway.get_job(request.job_id, context.time_remaining())

    def ListJobs(self, request, context):
        return self.gateway.list_jobs(context.time_remaining())

    def CancelJob(self, request, context):
        return self.gateway.cancel_job(request.job_id, context.time_remaining())


@map_errors
class GatewayInferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def ServerLive(self, request, context):
        return ipb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return ipb.ServerReadyResponse(ready=self.gateway.server_ready())

    def ModelReady(self, request, context):
        return self.gateway.model_ready(request, context.time_remaining())

    def ServerMetadata(self, request, context):
        return ipb.ServerMetadataResponse(
            name="twinbench", version=__version__, extensions=["model_repository"]
        )

    def ModelMetadata(self, request, context):
        return self.gateway.model_metadata(request, context.time_remaining())

    def ModelInfer(self, request, context):
        return self.gateway.infer(request, context.time_remaining())

    def RepositoryIndex(self, request, context):
        return self.gateway.repository_index(request.ready)
