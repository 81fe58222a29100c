"""Each training job in a fresh process: CPU set, threads and compile caches fixed at its start.

A trainer service never trains in its own process. Thread pools cannot be changed reliably once a
framework has started (TensorFlow's not at all; PyTorch's `set_num_threads` is inherited by every
thread started later, so serving a TorchScript model on one thread used to leave training on one
thread too), and a job's memory peak should be its own. So the service starts
`python -m twinbench.training.worker` for each job and talks to it over a socket pair:

    worker -> service   ("job", Job bytes)          the record changed
                        ("epoch", EpochMetrics bytes)
                        ("progress", epoch, batch, batches, loss)
                        ("end", outcome, message)   "ok", "cancelled", "invalid", "failed", "crashed"
    service -> worker   ("cancel", shutting_down)

A worker whose service goes away (its end of the socket closes) exits at once, so no job trains
on unwatched; a worker that dies fails its job with the reason, never leaves it running.
With `--lockstep FD` the job trains in blocks, parked between them (twinbench.training.lockstep).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from google.protobuf import json_format

from twinbench.api import trainer_pb2 as pb
from twinbench.config import Settings, load_settings
from twinbench.errors import InvalidArgument, JobCancelled, TwinbenchError
from twinbench.jobs.context import ProgressGate
from twinbench.jobs.hardware import probe_hardware, training_cpus
from twinbench.jobs.request import check_runnable
from twinbench.training.lockstep import pacer_for
from twinbench.training.parallel import (
    JOB_FILE_ENV,
    DataParallel,
    Topology,
    announce,
    connect_to_service,
    die_with_parent,
    leave,
    load_collective,
    tf_config_from_pod_index,
    worker_cpus,
)
from twinbench.training.resources import current_rss_bytes, pin_process, process_cpus

log = logging.getLogger(__name__)

POLL_S = 0.2


def training_threads(settings: Settings, cpus: list[int]) -> tuple[int, int]:
    """(intra-op, inter-op): the settings, or one thread per CPU of the job's set."""
    return settings.train_threads or len(cpus), settings.train_interop_threads or len(cpus)


class WorkerContext:
    """A JobContext for the training loop inside the worker: reports go over the socket."""

    def __init__(self, conn: Connection, job: pb.Job) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self.job = job
        self.cancel_requested = threading.Event()
        self.shutting_down = False
        self.ended = False  # the outcome was sent: the socket may close now
        self._progress_gate = ProgressGate()

    def listen(self) -> None:
        """Reads cancellations; a socket closed before the job ended means the service is gone:
        stop at once, rather than train on for nobody."""
        try:
            while True:
                kind, shutting_down = self._conn.recv()
                if kind == "cancel":
                    self.shutting_down = shutting_down
                    self.cancel_requested.set()
        except (EOFError, OSError):
            if not self.ended:
                os._exit(3)

    def close(self) -> None:
        self._conn.close()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def check_cancelled(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def progress(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        if self._progress_gate.due(batch, batches):
            self.send(("progress", epoch, batch, batches, loss))

    def update(self, change) -> None:
        change(self.job)
        self.send(("job", self.job.SerializeToString()))

    def epoch_done(self, metrics: pb.EpochMetrics) -> None:
        self.job.epochs.append(metrics)
        self.send(("epoch", metrics.SerializeToString()))


class SilentContext(WorkerContext):
    """The context of a worker that does not report: ranks other than 0 of a data-parallel job.
    Rank 0 reports for all; a cancelled job stops these with the rest of its process group."""

    def __init__(self, job: pb.Job) -> None:
        self.job = job
        self.cancel_requested = threading.Event()
        self.shutting_down = False
        self.ended = False

    def send(self, message: tuple) -> None:
        pass

    def close(self) -> None:
        pass

    def progress(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        pass


def _isolate(
    settings: Settings, job_id: str, topology: Topology
) -> tuple[list[int], tuple[int, int], Path]:
    """CPU set, thread counts and a private compile cache, before any framework is imported.

    A worker of a data-parallel job takes its share of the job's CPUs and threads (cores/N each),
    so N workers together use what one worker alone would."""
    cpus = worker_cpus(training_cpus(settings), topology.local_rank, topology.local_world_size)
    pin_process(cpus)
    intra, inter = training_threads(settings, cpus)
    if topology.local_world_size > 1:
        share = topology.local_world_size
        intra = max(1, settings.train_threads // share) if settings.train_threads else intra
        inter = (
            max(1, settings.train_interop_threads // share)
            if settings.train_interop_threads
            else inter
        )
    os.environ["OMP_NUM_THREADS"] = str(intra)  # OpenMP and MKL pools, in both frameworks
    rank = f"-rank-{topology.rank}" if topology.world_size > 1 else ""
    cache = settings.home / "cache" / f"{job_id}{rank}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    os.environ["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={cache / 'xla'}"
    return cpus, (intra, inter), cache


class FileContext(SilentContext):
    """Rank 0 of a job that Kubernetes runs (no trainer): the record is written, whole and
    atomically, to <TWINBENCH_HOME>/jobs/<id>.json at every change."""

    def __init__(self, job: pb.Job, path: Path) -> None:
        super().__init__(job)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def update(self, change) -> None:
        change(self.job)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json_format.MessageToJson(self.job))
        tmp.replace(self.path)

    def epoch_done(self, metrics: pb.EpochMetrics) -> None:
        self.update(lambda j: j.epochs.append(metrics))

    def send(self, message: tuple) -> None:
        if message[0] == "end":
            state = pb.SUCCEEDED if message[1] == "ok" else pb.FAILED

            def ended(j: pb.Job) -> None:
                j.state, j.error, j.finished_at = state, message[2], time.time()

            self.update(ended)


def _standalone_job(topology: Topology) -> WorkerContext:
    """A job from TWINBENCH_JOB_SPEC (a JobSpec as JSON) under the id TWINBENCH_JOB_ID: how a
    Kubernetes TrainJob or JobSet runs twinbench's workers without a trainer service."""
    from twinbench.jobs.request import resolve_spec

    spec = resolve_spec(json_format.Parse(os.environ["TWINBENCH_JOB_SPEC"], pb.JobSpec()))
    job = pb.Job(id=os.environ["TWINBENCH_JOB_ID"], spec=spec, state=pb.RUNNING,
                 created_at=time.time(), started_at=time.time())  # fmt: skip
    if not topology.writer:
        return SilentContext(job)
    return FileContext(job, load_settings().home / "jobs" / f"{job.id}.json")


def _job_and_context(args: argparse.Namespace, topology: Topology) -> WorkerContext:
    """Where the job comes from and where its reports go: the trainer's socket (one process), the
    trainer's report address (rank 0 of several), a file (a job run by Kubernetes) or nowhere
    (the other ranks)."""
    if "TWINBENCH_JOB_SPEC" in os.environ:
        return _standalone_job(topology)
    if args.fd is not None:
        conn = Connection(args.fd)
        return WorkerContext(conn, pb.Job.FromString(conn.recv()))
    reports = connect_to_service() if topology.writer else None
    if reports is not None:
        return WorkerContext(reports, pb.Job.FromString(reports.recv()))
    return SilentContext(pb.Job.FromString(Path(os.environ[JOB_FILE_ENV]).read_bytes()))


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one training job (started by a trainer)")
    parser.add_argument("--framework", required=True, help="module:class of the framework")
    parser.add_argument("--fd", type=int, help="the socket to the trainer (one-process jobs)")
    parser.add_argument(
        "--lockstep", type=int, help="the control socket of a lockstep pair (training.lockstep)"
    )
    args = parser.parse_args(argv)
    pacer = pacer_for(args.lockstep)
    tf_config_from_pod_index()
    topology = Topology.from_env()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s job-worker rank {topology.rank} %(message)s"
    )
    if args.fd is None:
        die_with_parent()
        announce(topology)
    ctx = _job_and_context(args, topology)
    job = ctx.job
    if type(ctx) is WorkerContext:  # the worker that reports to a trainer: it can be cancelled
        threading.Thread(target=ctx.listen, name="cancel-listener", daemon=True).start()
    settings = load_settings()
    cache: Path | None = None
    try:
        # What the trainer checked before it accepted the job, checked again on this process's
        # own view of the machine (before _isolate narrows its CPUs).
        check_runnable(
            job.spec, probe_hardware(settings), all_workers_here=topology.world_size == 1
        )
        cpus, (intra, inter), cache = _isolate(settings, job.id, topology)
        module, _, name = args.framework.partition(":")
        framework = getattr(importlib.import_module(module), name)()
        threads = framework.set_threads(intra, inter)
        # A data-parallel job's strategy comes before any other framework work (TensorFlow's
        # collectives must be set up before its runtime starts).
        collective = load_collective(framework, job.spec, topology)
        from twinbench.training.loop import run_training

        baseline = current_rss_bytes()

        def isolated(j: pb.Job) -> None:
            j.threads.intra_op, j.threads.inter_op = threads
            j.cpu_set[:] = process_cpus()  # as the OS has it, every thread the framework started
            j.baseline_rss_bytes = baseline

        ctx.update(isolated)
        from twinbench.serving.repository import ModelRepository

        parallel = DataParallel(collective, threads=threads, cpus=cpus)
        repository = ModelRepository(settings.model_repository)
        run_training(framework, repository, settings, job, ctx, parallel, pacer)
        outcome, message = "ok", ""
    except JobCancelled:
        outcome, message = "cancelled", ""
    except InvalidArgument as exc:
        outcome, message = "invalid", str(exc)
    except TwinbenchError as exc:
        outcome, message = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as the job's failure, not lost
        log.exception("job %s failed", job.id)
        outcome, message = "crashed", f"{type(exc).__name__}: {exc}"
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    ctx.ended = True
    ctx.send(("end", outcome, message))
    ctx.close()
    if args.fd is None and outcome == "ok":
        leave(topology)
    if "TWINBENCH_JOB_SPEC" in os.environ:  # Kubernetes: a failed job is a failed pod
        return 0 if outcome == "ok" else 1
    return 0 if outcome == "ok" or topology.world_size == 1 else 1


if __name__ == "__main__":
    code = worker_main()
    # The job has ended and said so; what is left is the frameworks' teardown at interpreter
    # exit (a second or more for TensorFlow), which would only keep whoever waits on this
    # process waiting: the next job, the next lockstep pair.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
