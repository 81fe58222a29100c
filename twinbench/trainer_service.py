"""Runs one trainer service: its job queue, its V2 endpoint and its health, for either framework."""

from __future__ import annotations

from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.api.trainer_pb2 import Job
from twinbench.config import load_settings
from twinbench.grpc_server import (
    configure_logging,
    create_server,
    run_until_signalled,
    set_serving,
)
from twinbench.jobs import JobContext, JobManager, JobStore
from twinbench.repository import ModelRepository
from twinbench.servicers import InferenceServicer, TrainerServicer
from twinbench.serving import InferenceCore
from twinbench.training import Framework, run_training


def serve_trainer(framework: Framework) -> None:
    configure_logging()
    settings = load_settings()
    service = f"{framework.name}_trainer"
    repository = ModelRepository(settings.model_repository)
    store = JobStore(settings.jobs_db(framework.name))
    core = InferenceCore(repository, framework.name, framework.loaders)

    def run_job(job: Job, ctx: JobContext) -> None:
        try:
            run_training(framework, repository, settings, job, ctx)
        finally:
            core.refresh()  # serve what the job published, even if a later export failed

    manager = JobManager(framework.name, store, run_job)

    server, port, health = create_server(settings.listen_address(service), settings)
    trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(manager), server)
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    core.preload()
    manager.start()
    server.start()
    set_serving(health, True)
    try:
        run_until_signalled(server, health, service, port, settings, on_stop=manager.stop)
    finally:
        store.close()
