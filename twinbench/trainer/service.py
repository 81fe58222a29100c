"""Runs one trainer service: its job queue, its V2 endpoint and its health, for either framework."""

from __future__ import annotations

import logging

from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.api.trainer_pb2 import QUEUED, RUNNING, Job
from twinbench.config import Settings, load_settings
from twinbench.jobs.hardware import probe_hardware
from twinbench.jobs.request import is_distributed
from twinbench.rpc.server import (
    configure_logging,
    create_server,
    enable_reflection,
    run_until_signalled,
    set_serving,
    write_port_file,
)
from twinbench.serving.dataplane import InferenceCore
from twinbench.serving.link import FRAME_SLACK_BYTES, LinkServer
from twinbench.serving.repository import ModelRepository
from twinbench.serving.servicer import InferenceServicer
from twinbench.trainer.metrics import JobsCollector, ServingCollector, serve_metrics
from twinbench.trainer.queue import JobManager, JobStore, ServiceJobContext
from twinbench.trainer.servicer import TrainerServicer
from twinbench.trainer.worker_group import run_distributed
from twinbench.trainer.workers import run_in_worker
from twinbench.training.loop import checkpoints_for
from twinbench.training.session import Framework

log = logging.getLogger(__name__)


def serve_trainer(framework: Framework) -> None:
    configure_logging()
    settings = load_settings()
    service = f"{framework.name}_trainer"
    repository = ModelRepository(settings.model_repository)
    store = JobStore(settings.jobs_db(framework.name))
    core = InferenceCore(
        repository,
        framework.name,
        framework.loaders,
        max_rows=settings.batch_max_rows,
        threads=settings.serving_threads or None,
    )

    framework_path = f"{type(framework).__module__}:{type(framework).__name__}"

    def run_job(job: Job, ctx: ServiceJobContext) -> None:
        try:  # in a process of its own: serving's threads and memory never reach training
            run = run_distributed if is_distributed(job.spec) else run_in_worker
            run(framework_path, job, ctx, settings)
        finally:
            core.refresh()  # serve what the job published, even if a later export failed

    hardware = probe_hardware(settings)
    log.info("%s: jobs train on %s", service, hardware.describe())
    manager = JobManager(framework.name, store, run_job, settings.max_queued_jobs, hardware)
    for staging in repository.remove_staging(framework.name):
        log.warning("removed %s, left by an export that did not finish", staging)

    server, port, health = create_server(settings.listen_address(service), settings)
    trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(manager), server)
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    enable_reflection(server)
    link = LinkServer(
        settings.link_listen_address(service),
        core.infer_frame,
        limit=settings.max_message_bytes + FRAME_SLACK_BYTES,
    )
    core.preload()
    manager.start()
    _remove_stale_checkpoints(settings, store)
    link.start()
    metrics_port = serve_metrics(
        settings.metrics_listen_address(service),
        ServingCollector(core.stats),
        JobsCollector(framework.name, manager.list),
    )
    # Written before the gRPC port file, so a launcher that sees that one finds these too.
    write_port_file(settings.home / "run" / f"{service}.link.port", link.port)
    write_port_file(settings.home / "run" / f"{service}.metrics.port", metrics_port)
    server.start()
    set_serving(health, True)

    def stop() -> None:
        link.stop()
        manager.stop()

    try:
        run_until_signalled(server, health, service, port, settings, on_stop=stop)
    finally:
        store.close()


def _remove_stale_checkpoints(settings: Settings, store: JobStore) -> None:
    """Checkpoints are kept only for jobs that will resume (left QUEUED by an interruption)."""
    waiting = {job.id for job in store.list(states=(QUEUED, RUNNING))}
    for directory in (settings.home / "checkpoints").glob("*"):
        if directory.name not in waiting:
            checkpoints_for(settings, directory.name).remove()
