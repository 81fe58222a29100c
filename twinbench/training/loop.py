"""The training loop both trainers share: data order, metrics, timing and exports are decided here once.

Each framework supplies only what differs: building the model, one optimizer step, a forward
pass, and writing and loading its export formats. Everything a comparison depends on (which rows
form each batch, how loss and accuracy are computed, what a second measures) lives in this file.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from twinbench.api import trainer_pb2 as pb
from twinbench.config import Settings
from twinbench.data.datasets import Split, epoch_order, load_dataset
from twinbench.jobs.context import JobContext
from twinbench.jobs.request import job_model
from twinbench.models.spec import ModelSpec
from twinbench.models.tasks import Task, check_inputs, task_for
from twinbench.serving.repository import ModelRepository
from twinbench.training.events import EventWriter
from twinbench.training.lockstep import Pacer
from twinbench.training.parallel import DataParallel
from twinbench.training.resources import ActiveJobs, NoMarker, PeakRss, current_rss_bytes
from twinbench.training.session import (
    SHARED_FAIRNESS,
    Framework,
    Session,
    export_checked,
    record_export,
)

# Steps timed apart at the start of a job. Measured on 2 CPU cores with LeNet-5 at batch 32, the
# first step carries TensorFlow's tracing (seconds) and PyTorch's first allocations (2 to 5 times
# a steady step); from the second step both run at their steady pace, within the machine's noise.
# 10 leaves a margin for allocator growth and for autotuning on a GPU.
DEFAULT_WARMUP_STEPS = 10
# Steady steps are also timed in this many windows, for the spread of speed within one job.
STEADY_WINDOWS = 10


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
    pacer: Pacer | None = None,
) -> None:
    """Trains, evaluates and exports one job. With `parallel` (a data-parallel job's worker),
    every worker runs this same loop on its shard of each batch; only rank 0 writes. With a
    lockstep `pacer` (twinbench.training.lockstep), it trains in blocks and parks between them."""
    parallel = parallel or DataParallel()
    pacer = pacer or Pacer()
    checkpoints = checkpoints_for(settings, job.id)
    try:
        # One marker per job: rank 0's (the others would remove it under it as they finish).
        marker = ActiveJobs(settings.active_jobs, job.id) if parallel.writer else NoMarker()
        with PeakRss() as rss, marker as beside:
            _train_and_export(
                framework, repository, settings, job, ctx, rss, beside, checkpoints, parallel,
                pacer,
            )  # fmt: skip
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
    beside: ActiveJobs | NoMarker,
    checkpoints: Checkpoints,
    parallel: DataParallel,
    pacer: Pacer,
) -> None:
    spec = job.spec
    model = job_model(spec)
    if isinstance(model, ModelSpec) and model.kind == "reinforcement":
        # Its own loop: an environment, not a dataset.
        from twinbench.training.rl import run_reinforcement

        return run_reinforcement(framework, repository, settings, job, ctx, rss, beside)
    task = task_for(model)
    data = load_dataset(spec.dataset, model, settings.data)
    if isinstance(model, ModelSpec) and model.pretrained:
        from twinbench.data.pretrained import normalized

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
        pacer.ready()  # a lockstep worker parks here until its first block
        for epoch in range(first_epoch + 1, spec.epochs + 1):
            order = epoch_order(n, spec.seed, epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            start, parked = time.perf_counter(), pacer.parked_seconds
            # Steps are timed in segments that end where the warm-up, a window or the epoch
            # ends; only there are the steps' losses read, which waits for the device. Reading
            # them every step would keep a GPU from running ahead of the host, as it does in
            # real training.
            pending: list[tuple[Any, Any, int]] = []  # (loss, hits, units) unread
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
                # A lockstep block (and its first step) ends a segment too.
                edge = timer.edge_after(len(pending)) or pacer.edge_after(len(pending))
                if edge or b == batches - 1:
                    for loss, hits, units in pending:  # synced here
                        loss_sum += float(loss) * units
                        correct += int(hits)
                        seen += units
                    elapsed = time.perf_counter() - segment_start
                    timer.add(elapsed, segment_units, len(pending))
                    parallel.step_done(elapsed, sum(u for _, _, u in pending), len(pending))
                    pacer.add(elapsed, segment_units, len(pending))  # may park until resumed
                    pending, segment_units = [], 0
                    ctx.progress(epoch, b + 1, batches, loss_sum / max(seen, 1))
                    segment_start = time.perf_counter()
                beside.check(every_s=1.0)
            # Wall-clock figures exclude the time a lockstep worker spent parked.
            seconds = time.perf_counter() - start - (pacer.parked_seconds - parked)
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
        from twinbench.data.pretrained import record_fine_tuning

        record_fine_tuning(ctx, session, spec, model)

    if not spec.skip_export and parallel.writer:
        for fmt in spec.export_formats:
            ctx.check_cancelled()
            export = export_checked(
                framework, session, repository, job, data, task, fmt, settings.max_batch_size
            )
            ctx.update(partial(record_export, export=export))
    parallel.close()  # the other workers wait here until rank 0 has exported


class _NoBoard:
    """The TensorBoard writer of a worker that writes none (ranks other than 0)."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
