"""What the CLI prints: job progress as it happens, job records and tables."""

from __future__ import annotations

import sys
import threading

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.jobs.request import TERMINAL, state_name
from twinbench.rpc.channel import Client

# --- job progress ---


class ProgressPrinter:
    """Prints epochs and state changes as lines, and batch progress on one rewritten line (TTY)."""

    def __init__(self, stream=sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lock = threading.Lock()
        self.status: dict[str, str] = {}

    def line(self, text: str) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self._redraw()

    def progress(self, job_id: str, text: str) -> None:
        with self.lock:
            self.status[job_id] = text
            self._redraw()

    def _redraw(self) -> None:
        if self.tty and self.status:
            self.stream.write("\r\033[K" + " | ".join(self.status.values()))
        self.stream.flush()

    def done(self, job_id: str) -> None:
        with self.lock:
            self.status.pop(job_id, None)


def watch(client: Client, job_id: str, printer: ProgressPrinter) -> tpb.Job:
    """Follows one job's event stream to its end and returns the final record."""
    framework = job_id.split("-", 1)[0]
    last: tpb.Job | None = None
    for event in client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job_id)):
        kind = event.WhichOneof("event")
        if kind == "job":
            if last is None or event.job.state != last.state:
                printer.line(f"[{framework}] {job_id}: {state_name(event.job.state)}")
            last = event.job
        elif kind == "epoch":
            e = event.epoch
            printer.line(
                f"[{framework}] epoch {e.epoch}: loss {e.train_loss:.4f} acc {e.train_accuracy:.4f}"
                f" | val loss {e.val_loss:.4f} acc {e.val_accuracy:.4f}"
                f" | {e.seconds:.2f} s, {e.samples_per_second:,.0f} samples/s"
            )
        else:
            p = event.progress
            printer.progress(
                job_id, f"{framework} e{p.epoch} {p.batch}/{p.batches} loss {p.loss:.4f}"
            )
    printer.done(job_id)
    if last is None or last.state not in TERMINAL:
        return client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
    return last


def watch_all(client: Client, jobs: list[tpb.Job]) -> list[tpb.Job]:
    printer = ProgressPrinter()
    results: dict[str, tpb.Job] = {}

    def follow(job: tpb.Job) -> None:
        results[job.id] = watch(client, job.id, printer)

    threads = [threading.Thread(target=follow, args=(job,), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[job.id] for job in jobs]


# --- tables ---


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def describe_job(job: tpb.Job) -> str:
    spec, opt = job.spec, job.spec.optimizer
    lines = [
        f"job {job.id}: {state_name(job.state)}" + (f" ({job.error})" if job.error else ""),
        f"  spec: {spec.framework} {spec.model}"
        + (f" width {spec.width:g}" if spec.HasField("width") else "")
        + (f" {spec.image_size}x{spec.image_size}" if spec.HasField("image_size") else "")
        + (f" (hidden units {'-'.join(map(str, spec.hidden_units))})" if spec.hidden_units else "")
        + (
            f" on {spec.dataset}, budget {spec.env_steps:,} environment steps,"
            if spec.HasField("env_steps")
            else f" on {spec.dataset}, {spec.epochs} epochs,"
        )
        + f" batch {spec.batch_size}, {opt.name} lr {opt.learning_rate:g}"
        + (f" momentum {opt.momentum:g}" if opt.name == "sgd" else f" eps {opt.epsilon:g}")
        + f", seed {spec.seed}, device {spec.device}, init {spec.init}",
        f"  ran on: {job.device or '-'} ({job.framework_version or '-'}),"
        f" {job.parameter_count:,} parameters, {job.precision or spec.precision or 'fp32'}"
        + (", compiled" if spec.compiled else "")
        + (", channels-last" if spec.channels_last else ""),
    ]
    if job.epochs:
        headers = [
            "epoch",
            "train loss",
            "train acc",
            "val loss",
            "val acc",
            "seconds",
            _per_second(job),
        ]
        rows = [
            [
                e.epoch,
                f"{e.train_loss:.4f}",
                f"{e.train_accuracy:.4f}",
                f"{e.val_loss:.4f}",
                f"{e.val_accuracy:.4f}",
                f"{e.seconds:.2f}",
                f"{e.samples_per_second:,.0f}",
            ]
            for e in job.epochs
        ]
        lines.append("  " + table(headers, rows).replace("\n", "\n  "))
    if job.HasField("threads"):
        lines.append(
            f"  process: its own; CPUs {cpu_list(job.cpu_set)}, threads intra-op"
            f" {job.threads.intra_op}, inter-op {job.threads.inter_op}"
        )
    lines += describe_world(job)
    if job.overlapped_jobs:
        lines.append(
            "  shared the machine with: "
            + ", ".join(job.overlapped_jobs)
            + " (its timings were taken under their load)"
        )
    if job.HasField("reinforcement"):
        lines += describe_reinforcement(job)
    elif job.state == tpb.SUCCEEDED:
        steady = (
            f"steady {job.steady_samples_per_second:,.0f} {_per_second(job)} over"
            f" {job.steady_seconds:.2f} s"
            if job.steady_seconds
            else "no steady steps (the job is all warm-up)"
        )
        lines.append(
            f"  test: loss {job.test_loss:.4f}, {_ACCURACY.get(job.task, 'accuracy')}"
            f" {job.test_accuracy:.4f}"
            f"\n  time: train {job.train_seconds:.2f} s; warm-up (first {job.warmup_steps} steps)"
            f" {job.warmup_seconds:.3f} s; {steady}"
            f"\n  memory: peak RSS {job.peak_rss_bytes / 2**20:.0f} MiB"
            + (
                f" ({(job.peak_rss_bytes - job.baseline_rss_bytes) / 2**20:+.0f} MiB over the"
                f" process's {job.baseline_rss_bytes / 2**20:.0f} MiB before data)"
                if job.baseline_rss_bytes
                else ""
            )
            + (
                f"; {job.data_peak_rss_bytes / 2**20:.0f} MiB by the end of loading data"
                if job.data_peak_rss_bytes
                else ""
            )
            + ", peak GPU "
            + (f"{job.peak_gpu_bytes / 2**20:.0f} MiB" if job.peak_gpu_bytes else "- (CPU)")
        )
        if spec.HasField("target_accuracy"):
            lines.append(
                f"  target val accuracy {spec.target_accuracy:g}: "
                + (
                    f"epoch {job.target_epoch}, after {job.time_to_target_seconds:.2f} s"
                    " (warm-up included)"
                    if job.target_epoch
                    else "not reached"
                )
            )
        n = job.num_classes
        if n and len(job.confusion_matrix) == n * n:
            matrix = np.array(job.confusion_matrix).reshape(n, n)
            lines.append("  confusion matrix (rows: true class):")
            lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in matrix]
    if job.HasField("fine_tuning"):
        ft = job.fine_tuning
        lines.append(
            f"  fine-tuned from {ft.weights_path} (sha256 {ft.weights_sha256[:12]}):"
            f" {ft.frozen_parameters:,} frozen parameters, largest change in training"
            f" {ft.frozen_max_change:g}"
        )
    if job.fairness:
        lines.append("  settings that differ by default between the frameworks, as set here:")
        lines += [f"    {key}: {value}" for key, value in sorted(job.fairness.items())]
    for e in job.exports:
        lines.append(
            f"  export {e.model_name} v{e.version}: {e.path} sha256 {e.sha256[:12]}"
            f" max|diff| {e.max_abs_diff:.2e}"
        )
    return "\n".join(lines)


def describe_reinforcement(job: tpb.Job) -> list[str]:
    r = job.reinforcement
    rewards = list(r.episode_rewards)
    last = rewards[-r.solve_window :]
    solved = (
        f"solved after training episode {r.episodes_to_solve} (environment step"
        f" {r.steps_to_solve:,}), in {r.seconds_to_solve:.0f} s = {r.seconds_to_solve / 60:.1f} min"
        if r.episodes_to_solve
        else f"not solved within {job.spec.env_steps:,} environment steps"
        if job.state == tpb.SUCCEEDED
        else "not solved yet"
    )
    evaluated = (
        f"; {r.evaluations} greedy evaluation(s), the last: mean"
        f" {np.mean(r.evaluation_rewards):.1f} over {len(r.evaluation_rewards)} episodes,"
        f" {r.evaluation_env_steps:,} steps and {r.evaluation_seconds:.1f} s in all"
        if r.evaluations
        else f"; no greedy evaluation (the last training episodes never averaged"
        f" {r.solve_threshold:g})"
    )
    return [
        f"  {r.environment}: {len(rewards)} episodes, {r.env_steps:,} environment steps,"
        f" {r.optimizer_steps:,} optimizer steps; mean reward of the last {len(last)} training"
        f" episodes {np.mean(last) if last else 0:.1f} (solved: the greedy policy's mean over"
        f" {r.solve_window} evaluation episodes at >= {r.solve_threshold:g})",
        f"  {solved}{evaluated}",
        f"  time: {job.train_seconds:.1f} s, {r.steps_per_second:,.0f} environment steps/s;"
        f" in the network {r.network_seconds:.1f} s, in the environment"
        f" {r.environment_seconds:.1f} s",
    ]


def cpu_list(cpus) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


# What a job's accuracy counts, by task (twinbench/models/tasks.py); classification's is plain accuracy.
_ACCURACY = {"ranking": "binary accuracy", "sequence": "token accuracy"}


def _per_second(job: tpb.Job) -> str:
    """Throughput's unit: GNMT's tokens; every other model's samples (images, user-item pairs)."""
    return "tokens/s" if job.throughput_unit == "tokens" else "samples/s"


def describe_world(job: tpb.Job) -> list[str]:
    """A data-parallel job's world: its size, each worker's share and how gradients met."""
    world = max(1, job.world_size)
    if world == 1 and not job.workers:
        return ["  world size: 1 (one process)"] if job.HasField("threads") else []
    c = job.communication
    lines = [
        f"  world size: {world} ({c.strategy}; backend {c.backend}; launched by {c.launcher})",
        f"  all-reduce: {c.all_reduce}"
        + (f"; buckets of {c.bucket_bytes / 2**20:g} MiB" if c.bucket_bytes else ""),
        f"  sharding: {c.sharding}",
    ]
    for w in job.workers:
        lines.append(
            f"  worker rank {w.rank} (pid {w.pid}): {w.samples:,} samples, steady"
            f" {w.steady_samples_per_second:,.0f} samples/s; CPUs {cpu_list(w.cpu_set)},"
            f" threads {w.threads.intra_op}/{w.threads.inter_op}"
        )
    return lines
