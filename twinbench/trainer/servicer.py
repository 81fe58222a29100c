"""The thin gRPC adapter over a trainer's JobManager."""

from __future__ import annotations

from twinbench.api import trainer_pb2 as tpb
from twinbench.api import trainer_pb2_grpc
from twinbench.rpc.server import map_errors
from twinbench.trainer.queue import JobManager


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
