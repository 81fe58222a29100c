"""The training loop both trainers share: data order, metrics, timing and exports are decided here once.

Each framework supplies only what differs: building the model, one optimizer step, a forward
pass, and writing and loading its export formats. Everything a comparison depends on (which rows
form each batch, how loss and accuracy are computed, what a second measures) lives in this file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from google.protobuf import json_format

from twinbench.api import trainer_pb2 as pb
from twinbench.config import Settings
from twinbench.datasets import Dataset, Split, epoch_order, load_dataset
from twinbench.distributed import DataParallel
from twinbench.errors import TwinbenchError
from twinbench.jobs import JobContext, job_model
from twinbench.repository import ModelRepository, model_name
from twinbench.serving import Loader, Runtime
from twinbench.specs import ModelSpec
from twinbench.tasks import Task, check_inputs, task_for
from twinbench.tbevents import EventWriter

# Largest |reloaded export - in-memory model| accepted on a test batch of logits.
EXPORT_TOLERANCE = 1e-4
EXPORT_CHECK_ROWS = 64
# Steps timed apart at the start of a job. Measured on 2 CPU cores with LeNet-5 at batch 32, the
# first step carries TensorFlow's tracing (seconds) and PyTorch's first allocations (2 to 5 times
# a steady step); from the second step both run at their steady pace, within the machine's noise.
# 10 leaves a margin for allocator growth and for autotuning on a GPU.
DEFAULT_WARMUP_STEPS = 10
# Steady steps are also timed in this many windows, for the spread of speed within one job.
STEADY_WINDOWS = 10


class Session(Protocol):
    """One job's model and optimizer in one framework."""

    device_name: str
    parameter_count: int
    precision: str  # what runs: "fp32", "mixed float16" or "mixed bfloat16" (twinbench.precision)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """A whole split in the framework's layout; done once per job, outside the timed loop."""

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """One optimizer step; returns the batch's mean loss and its number of correct predictions
        (per task: images, user-item pairs, or non-pad target tokens; see twinbench.tasks), as
        numbers or as scalars still on the device, which the loop reads with float() and int()
        only at the end of a timed segment (StepTimer)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for all of a prepared `x`, in inference mode."""

    def export(self, fmt: str, path: Path) -> None:
        """Writes the model in `fmt` at `path` (a file, or a folder for SavedModel)."""

    def peak_gpu_bytes(self) -> int: ...

    def fairness(self) -> dict[str, str]:
        """How this framework set the constants that silently differ (docs/fairness.md)."""

    def save_checkpoint(self, path: Path) -> None:
        """Weights and optimizer state, in one file."""

    def load_checkpoint(self, path: Path) -> None: ...


class Framework(Protocol):
    name: str
    version: str
    loaders: dict[str, Loader]

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        """Fixes the process's CPU thread pools before any work; returns them read back."""

    def new_session(self, spec: pb.JobSpec, model: ModelSpec, data: Dataset) -> Session: ...


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def _evaluate(
    task: Task, session: Session, x: np.ndarray, y: np.ndarray
) -> tuple[float, float, np.ndarray | None]:
    result = task.evaluate(session.predict, x, y)
    return result.loss, result.accuracy, result.predicted


class StepTimer:
    """Warm-up and steady time of a job's training steps: the one definition that the job record,
    the verdict and the report use.

    The first `warmup_steps` steps are warm-up (tracing, allocation, autotuning); every later
    step is steady, whatever epoch it falls in, so a one-epoch job has steady figures too. Steps
    are timed in segments, from slicing the first one's batch to having the last one's loss on
    the host (which synchronises the device), ending at the end of the warm-up, of each window
    and of each epoch; evaluation and checkpoints between epochs are outside. Steady steps are
    also grouped into windows of equal step counts, whose throughputs show the spread within a
    job.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.window_steps = max(1, (total_steps - warmup_steps) // STEADY_WINDOWS)
        self.steps = 0
        self.warmup_seconds = self.steady_seconds = 0.0
        self.steady_samples = 0
        self.windows: list[float] = []
        self._window = [0.0, 0, 0]  # seconds, samples, steps

    def edge_after(self, steps: int) -> bool:
        """Whether `steps` more steps end the warm-up or a window: a segment must end there."""
        done = self.steps + steps
        if done <= self.warmup_steps:
            return done == self.warmup_steps
        return self._window[2] + done - max(self.steps, self.warmup_steps) >= self.window_steps

    def add(self, seconds: float, samples: int, steps: int = 1) -> None:
        """`steps` steps timed together, all in the warm-up or all in one window (edge_after)."""
        self.steps += steps
        if self.steps <= self.warmup_steps:
            self.warmup_seconds += seconds
            return
        self.steady_seconds += seconds
        self.steady_samples += samples
        window = self._window
        window[0] += seconds
        window[1] += samples
        window[2] += steps
        if window[2] >= self.window_steps:
            self.windows.append(window[1] / max(window[0], 1e-12))
            self._window = [0.0, 0, 0]

    @property
    def steady_samples_per_second(self) -> float:
        return self.steady_samples / self.steady_seconds if self.steady_seconds > 0 else 0.0


def warmup_steps_for(spec: pb.JobSpec, total_steps: int) -> int:
    """The spec's warm-up, or the default; always leaving a steady step when there are two."""
    if spec.HasField("warmup_steps"):
        wanted = spec.warmup_steps
    elif total_steps >= 2 * DEFAULT_WARMUP_STEPS:
        wanted = DEFAULT_WARMUP_STEPS
    else:
        wanted = total_steps // 2
    return max(0, min(wanted, total_steps - 1))


class ActiveJobs:
    """Markers of running training jobs in a folder both trainers share, so that a job can record
    whether another trained beside it (its figures then share the machine with that job's)."""

    # A marker from another host (a container) cannot be checked by its pid: it counts as long as
    # it was touched this recently (a training job touches its own about once a second; evaluation
    # and exports pause that for seconds, not minutes).
    STALE_S = 120.0

    def __init__(self, folder: Path, job_id: str) -> None:
        self.folder = folder
        self.job_id = job_id
        self.marker = folder / f"{job_id}.json"
        self.seen: set[str] = set()
        self._last_check = 0.0

    def __enter__(self) -> ActiveJobs:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        tmp.replace(self.marker)
        self.check()
        return self

    def __exit__(self, *exc) -> None:
        self.check()
        self.marker.unlink(missing_ok=True)

    def check(self, every_s: float = 0.0) -> None:
        """Adds every other live marker to `seen`; at most once per `every_s` seconds."""
        now = time.monotonic()
        if now - self._last_check < every_s:
            return
        self._last_check = now
        os.utime(self.marker)
        for path in self.folder.glob("*.json"):
            if path != self.marker and path.stem not in self.seen and _alive(path):
                self.seen.add(path.stem)


def _alive(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text())
        if owner["host"] == socket.gethostname():
            os.kill(owner["pid"], 0)
            return True
        return time.time() - marker.stat().st_mtime < ActiveJobs.STALE_S
    except (OSError, ValueError, KeyError, TypeError):
        return False  # gone, half-written or its process has exited


class PeakRss:
    """The largest resident set size of this process while a job runs, sampled in the background."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SHARED_FAIRNESS = {
    "data order": "one seeded permutation per epoch, shared by both frameworks",
    "split": "fixed, seeded in shared code; the same rows for every job",
    "evaluation": "loss and accuracy computed in shared code from each framework's logits",
    "timing": "the first warm-up steps timed apart; steady figures from every later step, the"
    " batch slicing and per-step augmentation included, evaluation excluded",
    "isolation": "a fresh process per job: its own CPU set, threads and compile cache",
}


class Checkpoints:
    """One job's checkpoints: a file per finished epoch, and state.json naming the latest.

    state.json is replaced atomically after the epoch's file is whole, so a crash at any moment
    leaves a consistent pair: weights, optimizer state, spec and epoch.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def latest(self) -> tuple[int, Path] | None:
        try:
            state = json.loads((self.directory / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return state["epoch"], self.directory / state["file"]

    def save(self, session: Session, spec: pb.JobSpec, epoch: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch}.ckpt"
        session.save_checkpoint(self.directory / name)
        state = {"epoch": epoch, "file": name, "spec": json_format.MessageToDict(spec)}
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.directory / "state.json")
        for old in self.directory.glob("epoch-*.ckpt"):
            if old.name != name:
                old.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def checkpoints_for(settings: Settings, job_id: str) -> Checkpoints:
    return Checkpoints(settings.home / "checkpoints" / job_id)


def run_training(
    framework: Framework,
    repository: ModelRepository,
    settings: Settings,
    job: pb.Job,
    ctx: JobContext,
    parallel: DataParallel | None = None,
) -> None:
    """Trains, evaluates and exports one job. With `parallel` (a data-parallel job's worker),
    every worker runs this same loop on its shard of each batch; only rank 0 writes."""
    parallel = parallel or DataParallel()
    checkpoints = checkpoints_for(settings, job.id)
    try:
        # One marker per job: rank 0's (the others would remove it under it as they finish).
        marker = ActiveJobs(settings.active_jobs, job.id) if parallel.writer else _NoMarker()
        with PeakRss() as rss, marker as beside:
            _train_and_export(
                framework, repository, settings, job, ctx, rss, beside, checkpoints, parallel
            )
    finally:
        if parallel.writer and not (ctx.shutting_down and job.spec.resume):
            checkpoints.remove()  # only a job that will resume needs them


def _train_and_export(
    framework: Framework,
    repository: ModelRepository,
    settings: Settings,
    job: pb.Job,
    ctx: JobContext,
    rss: PeakRss,
    beside: ActiveJobs,
    checkpoints: Checkpoints,
    parallel: DataParallel,
) -> None:
    spec = job.spec
    model = job_model(spec)
    if isinstance(model, ModelSpec) and model.kind == "reinforcement":
        # Its own loop: an environment, not a dataset.
        from twinbench.rl import run_reinforcement

        return run_reinforcement(framework, repository, settings, job, ctx, rss, beside)
    task = task_for(model)
    data = load_dataset(spec.dataset, model, settings.data)
    if isinstance(model, ModelSpec) and model.pretrained:
        from twinbench.pretrained import normalized

        data = normalized(data, model.pretrained)  # torchvision's preprocessing, once, for both
    check_inputs(task, data.train.x, data.name, model.name)
    train = data.train
    if spec.HasField("train_samples"):
        train = Split(train.x[: spec.train_samples], train.y[: spec.train_samples])
    data_peak_rss = max(rss.peak, current_rss_bytes())

    session = parallel.new_session(framework, spec, model, data)
    train_x, val_x, test_x = (session.prepare(s.x) for s in (train, data.val, data.test))

    def started(j: pb.Job) -> None:
        j.device = session.device_name
        j.framework_version = framework.version
        j.parameter_count = session.parameter_count
        j.precision = session.precision
        j.data_peak_rss_bytes = data_peak_rss
        j.num_classes = data.num_classes
        j.task = task.kind
        j.throughput_unit = task.unit
        j.fairness.update({**SHARED_FAIRNESS, "loss": task.loss, **session.fairness()})

    ctx.update(started)
    run_dir = settings.runs / f"{spec.model}-{data.name.replace(':', '_')}" / job.id
    board = EventWriter(run_dir) if parallel.writer else _NoBoard()

    n, batch_size = len(train), spec.batch_size
    batches = -(-n // batch_size)
    # What a mean loss and an accuracy are taken over: the rows, or GNMT's non-pad tokens.
    epoch_units = task.units(train.y)
    train_seconds = time_to_target = 0.0
    target_epoch = first_epoch = 0
    resumed = checkpoints.latest()
    if resumed:
        done, path = resumed
        session.load_checkpoint(path)
        # Copies: an epoch recorded after the checkpoint was written is trained again.
        kept = [pb.EpochMetrics.FromString(e.SerializeToString()) for e in job.epochs[:done]]

        def rewind(j: pb.Job) -> None:
            del j.epochs[:]
            j.epochs.extend(kept)

        ctx.update(rewind)
        train_seconds = sum(e.seconds for e in kept)
        first_epoch = done
        reached = [e for e in kept if spec.HasField("target_accuracy")
                   and e.val_accuracy >= spec.target_accuracy]  # fmt: skip
        if reached:
            target_epoch = reached[0].epoch
            time_to_target = sum(e.seconds for e in kept[:target_epoch])
    # A resumed job runs in a new process: its warm-up comes again, and its steady figures are
    # those of the steps after the resume.
    total_steps = batches * (spec.epochs - first_epoch)
    timer = StepTimer(warmup_steps_for(spec, total_steps), total_steps)
    parallel.warmup_steps = timer.warmup_steps
    try:
        for epoch in range(first_epoch + 1, spec.epochs + 1):
            order = epoch_order(n, spec.seed, epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            start = time.perf_counter()
            # Steps are timed in segments that end where the warm-up, a window or the epoch
            # ends; only there are the steps' losses read, which waits for the device. Reading
            # them every step would keep a GPU from running ahead of the host, as it does in
            # real training.
            pending: list[tuple[object, object, int]] = []  # (loss, hits, units) unread
            segment_units = 0
            segment_start = time.perf_counter()
            for b in range(batches):
                ctx.check_cancelled()
                rows = order[b * batch_size : (b + 1) * batch_size]
                mine = parallel.mine(rows)  # this worker's shard; all the rows with one worker
                labels = train.y[mine]
                loss, hits = session.train_batch(train_x[mine], labels)
                pending.append((loss, hits, task.units(labels)))  # units: GNMT's are tokens
                segment_units += task.units(train.y[rows])  # the job's: every worker's rows
                if timer.edge_after(len(pending)) or b == batches - 1:
                    for loss, hits, units in pending:  # synced here
                        loss_sum += float(loss) * units
                        correct += int(hits)
                        seen += units
                    elapsed = time.perf_counter() - segment_start
                    timer.add(elapsed, segment_units, len(pending))
                    parallel.step_done(elapsed, sum(u for _, _, u in pending), len(pending))
                    pending, segment_units = [], 0
                    ctx.progress(epoch, b + 1, batches, loss_sum / max(seen, 1))
                    segment_start = time.perf_counter()
                beside.check(every_s=1.0)
            seconds = time.perf_counter() - start
            train_seconds += seconds
            loss_sum, correct = parallel.epoch_sums(loss_sum, correct)
            val_loss, val_accuracy, _ = _evaluate(task, session, val_x, data.val.y)
            metrics = pb.EpochMetrics(
                epoch=epoch,
                train_loss=loss_sum / max(epoch_units, 1),
                train_accuracy=correct / max(epoch_units, 1),
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                seconds=seconds,
                samples_per_second=epoch_units / seconds,
            )
            ctx.epoch_done(metrics)
            board.scalars(
                epoch,
                {
                    "loss/train": metrics.train_loss,
                    "loss/validation": val_loss,
                    "accuracy/train": metrics.train_accuracy,
                    "accuracy/validation": val_accuracy,
                    "speed/epoch_seconds": seconds,
                    "speed/samples_per_second": metrics.samples_per_second,
                },
            )
            if spec.HasField("target_accuracy") and not target_epoch:
                if val_accuracy >= spec.target_accuracy:
                    target_epoch, time_to_target = epoch, train_seconds
            if parallel.writer:
                checkpoints.save(session, spec, epoch)  # outside the timed part, like evaluation
    finally:
        board.close()

    test_loss, test_accuracy, predicted = _evaluate(task, session, test_x, data.test.y)
    beside.check()
    workers = parallel.gather()

    def finished(j: pb.Job) -> None:
        j.train_seconds = train_seconds
        j.warmup_steps = timer.warmup_steps
        j.warmup_seconds = timer.warmup_seconds
        j.steady_seconds = timer.steady_seconds
        j.steady_samples = timer.steady_samples
        j.steady_samples_per_second = timer.steady_samples_per_second
        j.window_samples_per_second[:] = timer.windows
        j.time_to_target_seconds = time_to_target
        j.target_epoch = target_epoch
        j.test_loss = test_loss
        j.test_accuracy = test_accuracy
        if predicted is not None:  # classification only
            matrix = confusion_matrix(data.test.y, predicted, data.num_classes)
            j.confusion_matrix[:] = matrix.ravel().tolist()
            j.test_predictions[:] = predicted.tolist()
        j.peak_rss_bytes = max(rss.peak, current_rss_bytes())
        j.peak_gpu_bytes = session.peak_gpu_bytes()
        j.overlapped_jobs[:] = sorted(beside.seen)
        parallel.describe(j, workers)

    ctx.update(finished)
    if isinstance(model, ModelSpec) and model.pretrained:
        from twinbench.pretrained import record_fine_tuning

        record_fine_tuning(ctx, session, spec, model)

    if not spec.skip_export and parallel.writer:
        for fmt in spec.export_formats:
            ctx.check_cancelled()
            export = _export(
                framework, session, repository, job, data, task, fmt, settings.max_batch_size
            )
            ctx.update(lambda j, e=export: j.exports.append(e))
    parallel.close()  # the other workers wait here until rank 0 has exported


class _NoMarker:
    """The ActiveJobs of a worker other than rank 0: it sees and leaves nothing."""

    seen: set[str] = set()

    def __enter__(self) -> _NoMarker:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def check(self, every_s: float = 0.0) -> None:
        pass


class _NoBoard:
    """The TensorBoard writer of a worker that writes none (ranks other than 0)."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def _export(
    framework: Framework,
    session: Session,
    repository: ModelRepository,
    job: pb.Job,
    data: Dataset,
    task: Task,
    fmt: str,
    max_batch_size: int,
) -> pb.ModelExport:
    """Writes, reloads and checks one export in a staging folder, then publishes it whole."""
    name = model_name(job.spec.model, framework.name, fmt)
    batch = data.test.x[:EXPORT_CHECK_ROWS]
    with repository.stage(name, fmt) as staging:
        session.export(fmt, staging.model_path)
        # No thread setting: this runs in the job's process, whose threads stay as the job set them.
        runtime: Runtime = framework.loaders[fmt](staging.model_path, None)
        expected = session.predict(session.prepare(batch))
        diff = float(np.max(np.abs(runtime.infer(*task.split(batch)) - expected)))
        if not diff <= EXPORT_TOLERANCE:  # also catches NaN
            raise TwinbenchError(
                f"the reloaded {fmt} export differs from the trained model by {diff:.3g} "
                f"(tolerance {EXPORT_TOLERANCE:g}); nothing was published"
            )
        info = staging.publish(
            model=job.spec.model,
            framework=framework.name,
            job_id=job.id,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            class_names=data.class_names,
            max_batch_size=max_batch_size,
            max_abs_diff=diff,
            # Only what differs from one FP32 image in, class logits out, so that exports of
            # image models stay as they were.
            inputs=() if task.kind == "classification" else task.inputs,
            output_shape=() if task.kind == "classification" else task.output_shape,
        )
    return pb.ModelExport(
        model_name=name,
        version=str(info.version),
        format=fmt,
        path=f"{name}/{info.version}/{info.filename}",
        sha256=info.sha256,
        max_abs_diff=diff,
    )
