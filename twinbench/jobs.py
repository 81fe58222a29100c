"""Training jobs, free of gRPC: spec checks, the SQLite store, and a queue that runs one job at a time."""

from __future__ import annotations

import logging
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from google.protobuf.unknown_fields import UnknownFieldSet

from twinbench import __version__
from twinbench.api import trainer_pb2 as pb
from twinbench.datasets import check_dataset_name, check_id_dataset
from twinbench.distributed import check_distributed_spec
from twinbench.errors import (
    InvalidArgument,
    JobCancelled,
    NotFound,
    ResourceExhausted,
    TwinbenchError,
)
from twinbench.init import INIT_MODES
from twinbench.precision import PRECISIONS
from twinbench.repository import FRAMEWORK_FORMATS
from twinbench.specs import GNMT, ID_MODELS, ModelSpec, NeuMF, get_model_spec, id_model

log = logging.getLogger(__name__)

TERMINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")


JOB_ID = re.compile(r"^(torch|tf)-[0-9a-f]{12}$")


def check_job_id(job_id: str) -> None:
    if not JOB_ID.match(job_id):
        raise InvalidArgument(
            f"{job_id[:80]!r} is not a job id (torch-<12 hex digits> or tf-<12 hex digits>)"
        )


def state_name(state: int) -> str:
    return pb.JobState.Name(state).lower()


def job_model(spec: pb.JobSpec) -> ModelSpec | NeuMF | GNMT:
    """The model a job trains, with the knobs its spec sets (for NCF and GNMT, `width` scales
    their widths, vocabulary and user and item counts: see specs.id_model)."""
    if spec.model in ID_MODELS:
        if spec.HasField("image_size") or spec.hidden_units:
            raise InvalidArgument(
                f"model {spec.model} takes ids: it has a width knob, no image size or hidden units"
            )
        return id_model(spec.model, spec.width if spec.HasField("width") else 1.0)
    return get_model_spec(
        spec.model,
        spec.width if spec.HasField("width") else None,
        spec.image_size if spec.HasField("image_size") else None,
        spec.hidden_units,  # checked against the declaration here too
    )


def _refuse_unknown_fields(spec: pb.JobSpec) -> None:
    """A spec from a client newer than this service may set fields it does not know; protobuf
    would drop them silently and the job would train something else than was asked for."""
    for message, name in ((spec, "JobSpec"), (spec.optimizer, "Optimizer")):
        numbers = sorted({field.field_number for field in UnknownFieldSet(message)})
        if numbers:
            raise InvalidArgument(
                f"this service does not know {name} field(s) {', '.join(map(str, numbers))}:"
                f" the client is newer than twinbench {__version__} here; update the services"
            )


def resolve_spec(spec: pb.JobSpec) -> pb.JobSpec:
    """The spec with every default filled in, or InvalidArgument saying what to change."""
    _refuse_unknown_fields(spec)
    if spec.framework not in FRAMEWORK_FORMATS:
        raise InvalidArgument(
            f"unknown framework {spec.framework!r}; use one of {', '.join(FRAMEWORK_FORMATS)}"
        )
    model = job_model(spec)
    defaults = model.defaults
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.dataset = spec.dataset or defaults.dataset
    if isinstance(model, (NeuMF, GNMT)):
        check_dataset_name(out.dataset)
        check_id_dataset(out.dataset, model)
        for name, set_ in (("env_steps", out.HasField("env_steps")),
                           ("pretrained_weights", bool(out.pretrained_weights))):  # fmt: skip
            if set_:
                raise InvalidArgument(f"{name} is not for {model.name}")
    else:
        _resolve_kind(model, out)
    out.epochs = spec.epochs if spec.HasField("epochs") else defaults.epochs
    out.batch_size = spec.batch_size if spec.HasField("batch_size") else defaults.batch_size
    out.seed = spec.seed if spec.HasField("seed") else 0
    out.device = spec.device or "auto"
    out.init = spec.init or "shared"
    out.precision = spec.precision or "fp32"
    opt = out.optimizer
    opt.name = opt.name or defaults.optimizer
    if not opt.HasField("learning_rate"):
        opt.learning_rate = defaults.learning_rate
    if not opt.HasField("momentum"):
        opt.momentum = defaults.momentum if opt.name == defaults.optimizer else 0.0
    if not opt.HasField("epsilon"):
        opt.epsilon = defaults.epsilon
    formats = FRAMEWORK_FORMATS[spec.framework]
    if not out.export_formats:
        out.export_formats.extend(formats)

    checks = [
        (1 <= out.epochs <= 10_000, f"epochs must be 1..10000, got {out.epochs}"),
        (1 <= out.batch_size <= 65_536, f"batch_size must be 1..65536, got {out.batch_size}"),
        (out.seed >= 0, f"seed must be 0 or more, got {out.seed}"),
        (out.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {out.device!r}"),
        (out.init in INIT_MODES, f"init must be one of {', '.join(INIT_MODES)}, got {out.init!r}"),
        (
            out.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {out.precision!r}",
        ),
        (
            out.precision == "fp32" or spec.model not in ID_MODELS,
            f"{spec.model} trains in fp32 only: mixed precision is built for the image models",
        ),
        (opt.name in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (
            0 < opt.learning_rate <= 10,
            f"learning_rate must be in (0, 10], got {opt.learning_rate}",
        ),
        (0 <= opt.momentum < 1, f"momentum must be in [0, 1), got {opt.momentum}"),
        (0 < opt.epsilon < 1, f"epsilon must be in (0, 1), got {opt.epsilon}"),
        (
            not spec.HasField("warmup_steps") or spec.warmup_steps >= 0,
            f"warmup_steps must be 0 or more, got {spec.warmup_steps}",
        ),
        (
            not spec.HasField("train_samples") or spec.train_samples >= 1,
            f"train_samples must be 1 or more, got {spec.train_samples}",
        ),
        (
            set(out.export_formats) <= set(formats),
            f"{spec.framework} exports {', '.join(formats)}; got {', '.join(out.export_formats)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgument(message)
    check_distributed_spec(out)
    return out


def _resolve_kind(model: ModelSpec, out: pb.JobSpec) -> None:
    """What depends on the job's kind: an environment instead of a dataset, a step budget."""
    rl = model.reinforcement
    if rl is None:
        check_dataset_name(out.dataset)
        if out.HasField("env_steps"):
            raise InvalidArgument(
                f"env_steps is for reinforcement-learning models, not {model.name}"
            )
    else:
        if out.dataset != rl.environment:
            raise InvalidArgument(
                f"{model.name} learns in the environment {rl.environment}, not a dataset"
                f" ({out.dataset!r})"
            )
        if not out.HasField("env_steps"):
            out.env_steps = rl.env_steps
        if not 1 <= out.env_steps <= 10_000_000:
            raise InvalidArgument(f"env_steps must be 1..10000000, got {out.env_steps}")
        # What only a supervised job can honour: refused rather than silently ignored.
        for name, set_ in (("train_samples", out.HasField("train_samples")),
                           ("target_accuracy", out.HasField("target_accuracy")),
                           ("resume", out.resume), ("compiled", out.compiled),
                           ("precision", out.precision not in ("", "fp32")),
                           ("workers", out.workers > 1)):  # fmt: skip
            if set_:
                raise InvalidArgument(f"{name} is not supported for {model.name}, a DQN job")
    if out.pretrained_weights and not model.pretrained:
        raise InvalidArgument(f"pretrained_weights is for fine-tuning models, not {model.name}")
    if model.pretrained:
        from twinbench.pretrained import weights_path

        weights_path(model, Path("."), out.pretrained_weights)  # refuses paths out of the folder


class JobStore:
    """One SQLite file per trainer; each write commits, so a crash loses no finished step."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs ("
            " id TEXT PRIMARY KEY, created_at REAL NOT NULL, state INTEGER NOT NULL,"
            " record BLOB NOT NULL)"
        )

    def put(self, job: pb.Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, created_at, state, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
                (job.id, job.created_at, job.state, job.SerializeToString()),
            )

    def get(self, job_id: str) -> pb.Job | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return pb.Job.FromString(row[0]) if row else None

    def list(self, states: tuple[int, ...] = ()) -> list[pb.Job]:
        query = "SELECT record FROM jobs"
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, id", states).fetchall()
        return [pb.Job.FromString(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ProgressGate:
    """Lets a batch's progress through a few times a second, and always the epoch's last:
    enough for a progress bar, and nothing the training loop would notice."""

    INTERVAL_S = 0.25

    def __init__(self) -> None:
        self._last = 0.0

    def due(self, batch: int, batches: int) -> bool:
        now = time.monotonic()
        if batch == batches or now - self._last >= self.INTERVAL_S:
            self._last = now
            return True
        return False


class JobContext:
    """What a running job's training loop may do: report, and learn that it was cancelled."""

    def __init__(self, manager: JobManager, job: pb.Job) -> None:
        self._manager = manager
        self.job = job  # the live record: change it only through update()
        self.cancel_requested = threading.Event()
        self.shutting_down = False  # the cancel came from the trainer stopping, not a user
        self._progress_gate = ProgressGate()

    def check_cancelled(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def progress(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        if self._progress_gate.due(batch, batches):
            event = pb.BatchProgress(epoch=epoch, batch=batch, batches=batches, loss=loss)
            self._manager._publish(self.job.id, pb.JobEvent(job_id=self.job.id, progress=event))

    def update(self, change: Callable[[pb.Job], None]) -> None:
        """Changes the live record under the manager's lock (readers copy it) and stores it."""
        with self._manager._lock:
            change(self.job)
            self._manager.store.put(self.job)

    def epoch_done(self, metrics: pb.EpochMetrics) -> None:
        self.update(lambda job: job.epochs.append(metrics))
        self._manager._publish(self.job.id, pb.JobEvent(job_id=self.job.id, epoch=metrics))


class _EventLog:
    """Events of one active job; any number of watchers read it at their own pace."""

    def __init__(self) -> None:
        self.events: list[pb.JobEvent] = []
        self.closed = False
        self.cond = threading.Condition()


RunJob = Callable[[pb.Job, JobContext], None]


class JobManager:
    """Queues jobs for one trainer and runs them one at a time on a worker thread."""

    def __init__(
        self, framework: str, store: JobStore, run_job: RunJob, max_queued: int = 16
    ) -> None:
        self.framework = framework
        self.max_queued = max_queued
        self.store = store
        self.run_job = run_job
        self._lock = threading.RLock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._logs: dict[str, _EventLog] = {}
        self._contexts: dict[str, JobContext] = {}
        self._worker = threading.Thread(target=self._work, name=f"{framework}-jobs", daemon=True)

    def start(self) -> None:
        """Recovers what a previous process left, then starts the worker."""
        for job in self.store.list(states=(pb.RUNNING,)):
            if job.spec.resume:
                job.state = pb.QUEUED  # picked up below; training resumes from its checkpoint
                job.error = f"resuming after epoch {len(job.epochs)}: the trainer had stopped"
            else:
                job.state = pb.FAILED
                job.error = "the trainer stopped while this job was running"
                job.finished_at = time.time()
            self.store.put(job)
        for job in self.store.list(states=(pb.QUEUED,)):
            self._logs[job.id] = _EventLog()
            self._queue.put(job.id)
        self._worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Interrupts the running job at its next step (see `_run`) and stops the worker."""
        with self._lock:
            for ctx in self._contexts.values():
                ctx.shutting_down = True
                ctx.cancel_requested.set()
        self._queue.put(None)
        self._worker.join(timeout_s)

    def create(self, spec: pb.JobSpec) -> pb.Job:
        spec = resolve_spec(spec)
        if spec.framework != self.framework:
            raise InvalidArgument(f"this is the {self.framework} trainer; got {spec.framework!r}")
        queued = len(self.store.list(states=(pb.QUEUED,)))
        if queued >= self.max_queued:
            raise ResourceExhausted(
                f"the {self.framework} trainer has {queued} jobs queued, its limit; "
                "wait for one to finish or cancel one"
            )
        job = pb.Job(
            id=f"{self.framework}-{uuid.uuid4().hex[:12]}",
            spec=spec,
            state=pb.QUEUED,
            created_at=time.time(),
        )
        with self._lock:
            self.store.put(job)
            self._logs[job.id] = _EventLog()
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> pb.Job:
        check_job_id(job_id)
        # Every change to a job is stored as it happens, so the store is always current.
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; `twinbench jobs` lists them")
        return job

    def list(self) -> list[pb.Job]:
        return self.store.list()

    def cancel(self, job_id: str) -> pb.Job:
        check_job_id(job_id)
        with self._lock:
            ctx = self._contexts.get(job_id)
            if ctx is not None:
                ctx.cancel_requested.set()
                return _copy(ctx.job)
            job = self.store.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}; `twinbench jobs` lists them")
            if job.state == pb.QUEUED:
                self._finish(job, pb.CANCELLED, "cancelled before it started")
            return job

    def watch(self, job_id: str, is_active: Callable[[], bool]) -> Iterator[pb.JobEvent]:
        """A snapshot first, then every event until the job ends or the watcher leaves."""
        with self._lock:  # events are published under this lock: none falls between the two
            job = self.get(job_id)
            event_log = self._logs.get(job_id)
            seen = len(event_log.events) if event_log else 0
        yield pb.JobEvent(job_id=job_id, job=job)
        if event_log is None or job.state in TERMINAL:
            return
        while True:
            with event_log.cond:
                while len(event_log.events) == seen and not event_log.closed:
                    event_log.cond.wait(timeout=1.0)
                    if not is_active():
                        return
                new = event_log.events[seen:]
                seen += len(new)
                closed = event_log.closed and seen == len(event_log.events)
            yield from new
            if closed:
                return

    # --- the worker ---

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.store.get(job_id)
            if job is None or job.state != pb.QUEUED:
                continue  # cancelled while queued
            self._run(job)

    def _run(self, job: pb.Job) -> None:
        ctx = JobContext(self, job)
        with self._lock:
            job.state = pb.RUNNING
            job.started_at = time.time()
            self._contexts[job.id] = ctx
            self.store.put(job)
        self._publish_snapshot(job)
        try:
            self.run_job(job, ctx)
        except JobCancelled:
            if not ctx.shutting_down:
                self._finish(job, pb.CANCELLED, "cancelled while running")
            elif job.spec.resume:
                reason = f"the trainer stopped; resumes after epoch {len(job.epochs)}"
                self._finish(job, pb.QUEUED, reason)
            else:
                self._finish(job, pb.FAILED, "interrupted: the trainer stopped during the job")
        except TwinbenchError as exc:
            self._finish(job, pb.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed job is a record, not a crash
            log.exception("job %s failed", job.id)
            self._finish(job, pb.FAILED, f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, pb.SUCCEEDED, "")

    def _finish(self, job: pb.Job, state: int, error: str) -> None:
        """Ends the job's run: in a final state, or QUEUED again when it will resume later."""
        with self._lock:
            job.state = state
            job.error = error
            if state in TERMINAL:
                job.finished_at = time.time()
            self.store.put(job)
            self._contexts.pop(job.id, None)
            event_log = self._logs.pop(job.id, None)
            if event_log is not None:
                with event_log.cond:
                    event_log.events.append(pb.JobEvent(job_id=job.id, job=_copy(job)))
                    event_log.closed = True
                    event_log.cond.notify_all()

    def _publish_snapshot(self, job: pb.Job) -> None:
        self._publish(job.id, pb.JobEvent(job_id=job.id, job=_copy(job)))

    def _publish(self, job_id: str, event: pb.JobEvent) -> None:
        with self._lock:
            event_log = self._logs.get(job_id)
            if event_log is None:
                return
            with event_log.cond:
                event_log.events.append(event)
                event_log.cond.notify_all()


def _copy(job: pb.Job) -> pb.Job:
    out = pb.Job()
    out.CopyFrom(job)
    return out
