"""The thin gRPC adapter over a trainer's InferenceCore (the V2 data plane)."""

from __future__ import annotations

from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc
from twinbench.rpc.server import map_errors
from twinbench.serving.dataplane import InferenceCore


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
