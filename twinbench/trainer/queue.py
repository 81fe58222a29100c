"""The trainer's jobs, free of gRPC: the SQLite store, and a queue that runs one job at a time."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import (
    InvalidArgument,
    JobCancelled,
    NotFound,
    ResourceExhausted,
    TwinbenchError,
)
from twinbench.jobs.context import ProgressGate
from twinbench.jobs.hardware import Hardware, probe_hardware
from twinbench.jobs.request import TERMINAL, check_job_id, check_runnable, resolve_spec

log = logging.getLogger(__name__)


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

    def put(self, job: tpb.Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, created_at, state, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
                (job.id, job.created_at, job.state, job.SerializeToString()),
            )

    def get(self, job_id: str) -> tpb.Job | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return tpb.Job.FromString(row[0]) if row else None

    def list(self, states: tuple[int, ...] = ()) -> list[tpb.Job]:
        query = "SELECT record FROM jobs"
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, id", states).fetchall()
        return [tpb.Job.FromString(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ServiceJobContext:
    """A JobContext inside the trainer service: reports go to the job's record and its watchers."""

    def __init__(self, manager: JobManager, job: tpb.Job) -> None:
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
            event = tpb.BatchProgress(epoch=epoch, batch=batch, batches=batches, loss=loss)
            self._manager._publish(self.job.id, tpb.JobEvent(job_id=self.job.id, progress=event))

    def update(self, change: Callable[[tpb.Job], None]) -> None:
        """Changes the live record under the manager's lock (readers copy it) and stores it."""
        with self._manager._lock:
            change(self.job)
            self._manager.store.put(self.job)

    def epoch_done(self, metrics: tpb.EpochMetrics) -> None:
        self.update(lambda job: job.epochs.append(metrics))
        self._manager._publish(self.job.id, tpb.JobEvent(job_id=self.job.id, epoch=metrics))


class _EventLog:
    """Events of one active job; any number of watchers read it at their own pace."""

    def __init__(self) -> None:
        self.events: list[tpb.JobEvent] = []
        self.closed = False
        self.cond = threading.Condition()


RunJob = Callable[[tpb.Job, ServiceJobContext], None]


class JobManager:
    """Queues jobs for one trainer and runs them one at a time on a worker thread."""

    def __init__(
        self,
        framework: str,
        store: JobStore,
        run_job: RunJob,
        max_queued: int = 16,
        hardware: Hardware | None = None,
    ) -> None:
        self.framework = framework
        self.max_queued = max_queued
        # What jobs here can run on (None: this machine, probed with the default settings).
        self.hardware = hardware or probe_hardware()
        self.store = store
        self.run_job = run_job
        self._lock = threading.RLock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._logs: dict[str, _EventLog] = {}
        self._contexts: dict[str, ServiceJobContext] = {}
        self._worker = threading.Thread(target=self._work, name=f"{framework}-jobs", daemon=True)

    def start(self) -> None:
        """Recovers what a previous process left, then starts the worker."""
        for job in self.store.list(states=(tpb.RUNNING,)):
            if job.spec.resume:
                job.state = tpb.QUEUED  # picked up below; training resumes from its checkpoint
                job.error = f"resuming after epoch {len(job.epochs)}: the trainer had stopped"
            else:
                job.state = tpb.FAILED
                job.error = "the trainer stopped while this job was running"
                job.finished_at = time.time()
            self.store.put(job)
        for job in self.store.list(states=(tpb.QUEUED,)):
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

    def create(self, spec: tpb.JobSpec) -> tpb.Job:
        spec = resolve_spec(spec)
        if spec.framework != self.framework:
            raise InvalidArgument(f"this is the {self.framework} trainer; got {spec.framework!r}")
        check_runnable(spec, self.hardware)  # FailedPrecondition: not on this trainer's hardware
        queued = len(self.store.list(states=(tpb.QUEUED,)))
        if queued >= self.max_queued:
            raise ResourceExhausted(
                f"the {self.framework} trainer has {queued} jobs queued, its limit; "
                "wait for one to finish or cancel one"
            )
        job = tpb.Job(
            id=f"{self.framework}-{uuid.uuid4().hex[:12]}",
            spec=spec,
            state=tpb.QUEUED,
            created_at=time.time(),
        )
        with self._lock:
            self.store.put(job)
            self._logs[job.id] = _EventLog()
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> tpb.Job:
        check_job_id(job_id)
        # Every change to a job is stored as it happens, so the store is always current.
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; `twinbench jobs` lists them")
        return job

    def list(self) -> list[tpb.Job]:
        return self.store.list()

    def cancel(self, job_id: str) -> tpb.Job:
        check_job_id(job_id)
        with self._lock:
            ctx = self._contexts.get(job_id)
            if ctx is not None:
                ctx.cancel_requested.set()
                return _copy(ctx.job)
            job = self.store.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}; `twinbench jobs` lists them")
            if job.state == tpb.QUEUED:
                self._finish(job, tpb.CANCELLED, "cancelled before it started")
            return job

    def watch(self, job_id: str, is_active: Callable[[], bool]) -> Iterator[tpb.JobEvent]:
        """A snapshot first, then every event until the job ends or the watcher leaves."""
        with self._lock:  # events are published under this lock: none falls between the two
            job = self.get(job_id)
            event_log = self._logs.get(job_id)
            seen = len(event_log.events) if event_log else 0
        yield tpb.JobEvent(job_id=job_id, job=job)
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
            if job is None or job.state != tpb.QUEUED:
                continue  # cancelled while queued
            self._run(job)

    def _run(self, job: tpb.Job) -> None:
        ctx = ServiceJobContext(self, job)
        with self._lock:
            job.state = tpb.RUNNING
            job.started_at = time.time()
            self._contexts[job.id] = ctx
            self.store.put(job)
        self._publish_snapshot(job)
        try:
            self.run_job(job, ctx)
        except JobCancelled:
            if not ctx.shutting_down:
                self._finish(job, tpb.CANCELLED, "cancelled while running")
            elif job.spec.resume:
                reason = f"the trainer stopped; resumes after epoch {len(job.epochs)}"
                self._finish(job, tpb.QUEUED, reason)
            else:
                self._finish(job, tpb.FAILED, "interrupted: the trainer stopped during the job")
        except TwinbenchError as exc:
            self._finish(job, tpb.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed job is a record, not a crash
            log.exception("job %s failed", job.id)
            self._finish(job, tpb.FAILED, f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, tpb.SUCCEEDED, "")

    def _finish(self, job: tpb.Job, state: tpb.JobState, error: str) -> None:
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
                    event_log.events.append(tpb.JobEvent(job_id=job.id, job=_copy(job)))
                    event_log.closed = True
                    event_log.cond.notify_all()

    def _publish_snapshot(self, job: tpb.Job) -> None:
        self._publish(job.id, tpb.JobEvent(job_id=job.id, job=_copy(job)))

    def _publish(self, job_id: str, event: tpb.JobEvent) -> None:
        with self._lock:
            event_log = self._logs.get(job_id)
            if event_log is None:
                return
            with event_log.cond:
                event_log.events.append(event)
                event_log.cond.notify_all()


def _copy(job: tpb.Job) -> tpb.Job:
    out = tpb.Job()
    out.CopyFrom(job)
    return out
