"""Thin gRPC adapters over a trainer's JobManager and InferenceCore."""

from __future__ import annotations

from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.api import trainer_pb2 as tpb
from twinbench.grpc_server import map_errors
from twinbench.jobs import JobManager
from twinbench.serving import InferenceCore


@map_errors
class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def CreateJob(self, request, context):
        return tpb.CreateJobResponse(jobs=[self.manager.create(request.spec)])

    def WatchJob(self, request, context):
        yield from self.manager.watch(request.job_id, context.is_active)

    def GetJob(self, request, context):
        return self.manager.get(request.job_id)

    def ListJobs(self, request, context):
        return tpb.ListJobsResponse(jobs=self.manager.list())

    def CancelJob(self, request, context):
        return self.manager.cancel(request.job_id)


@map_errors
class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def ServerLive(self, request, context):
        return ipb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        # The server is only started once its exports are loaded.
        return ipb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return ipb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        return self.core.server_metadata()

    def ModelMetadata(self, request, context):
        return self.core.metadata(request.name, request.version)

    def ModelInfer(self, request, context):
        return self.core.infer(request)

    def ModelConfig(self, request, context):
        return self.core.model_config(request.name, request.version)

    def ModelStatistics(self, request, context):
        return self.core.statistics(request.name, request.version)

    def RepositoryIndex(self, request, context):
        return self.core.repository_index()
