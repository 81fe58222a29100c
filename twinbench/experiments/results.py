"""The comparison's results.json (schema twinbench.results/v3): every figure of a compare run, gathered from its jobs, Locust's files and its verdicts."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.report_kit import (
    environment,
)
from twinbench.jobs.request import state_name

SCHEMA = "twinbench.results/v3"


SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "results-v3.schema.json"


PERCENTILES = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")


def training_record(job: tpb.Job) -> dict:
    """One job (one repeat of an arm) as results.json stores it."""
    epochs = [
        {
            "epoch": e.epoch,
            "train_loss": e.train_loss,
            "train_accuracy": e.train_accuracy,
            "val_loss": e.val_loss,
            "val_accuracy": e.val_accuracy,
            "seconds": e.seconds,
            "samples_per_second": e.samples_per_second,
        }
        for e in job.epochs
    ]
    rows = round(job.epochs[0].samples_per_second * job.epochs[0].seconds) if job.epochs else 0
    n = job.num_classes
    # NCF and GNMT jobs have classes (or a vocabulary) but no confusion matrix.
    has_matrix = n and len(job.confusion_matrix) == n * n
    matrix = np.array(job.confusion_matrix, dtype=int).reshape(n, n).tolist() if has_matrix else []
    spec, opt = job.spec, job.spec.optimizer
    return {
        "job_id": job.id,
        "state": state_name(job.state),
        "error": job.error,
        "seed": spec.seed,
        "device": job.device,
        "framework_version": job.framework_version,
        "parameter_count": job.parameter_count,
        "threads": {"intra_op": job.threads.intra_op, "inter_op": job.threads.inter_op},
        "cpu_set": list(job.cpu_set),
        "overlapped_jobs": list(job.overlapped_jobs),
        "hyperparameters": {
            "model": spec.model,
            "dataset": spec.dataset,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "optimizer": opt.name,
            "learning_rate": opt.learning_rate,
            "momentum": opt.momentum,
            "epsilon": opt.epsilon,
            "init": spec.init,
            "warmup_steps": job.warmup_steps,
        },
        "epochs": epochs,
        "train_seconds": job.train_seconds,
        "warmup_steps": job.warmup_steps,
        "warmup_seconds": job.warmup_seconds,
        "steady_seconds": job.steady_seconds,
        "steady_samples": job.steady_samples,
        "steady_samples_per_second": job.steady_samples_per_second,
        # The same definition, as the time one epoch of this job's rows takes at that pace.
        "steady_epoch_seconds": rows / job.steady_samples_per_second
        if job.steady_samples_per_second
        else 0.0,
        "window_samples_per_second": list(job.window_samples_per_second),
        "time_to_target_seconds": job.time_to_target_seconds,
        "target_epoch": job.target_epoch,
        "fairness": dict(job.fairness),
        "test_loss": job.test_loss,
        "test_accuracy": job.test_accuracy,
        "confusion_matrix": matrix,
        "baseline_rss_bytes": job.baseline_rss_bytes,
        "peak_rss_bytes": job.peak_rss_bytes,
        "peak_gpu_bytes": job.peak_gpu_bytes,
        "exports": [
            {
                "model_name": e.model_name,
                "version": e.version,
                "format": e.format,
                "sha256": e.sha256,
                "max_abs_diff": e.max_abs_diff,
            }
            for e in job.exports
        ],
    }


def arm_summary(records: list[dict]) -> dict:
    """Mean and range over an arm's succeeded repeats (speed as a geometric mean)."""
    done = [r for r in records if r["state"] == "succeeded"]

    def spread(values: list[float], geometric: bool = False) -> dict:
        if not values:
            return {"mean": None, "min": None, "max": None}
        mean = float(np.exp(np.mean(np.log(values)))) if geometric else float(np.mean(values))
        return {"mean": mean, "min": float(min(values)), "max": float(max(values))}

    speeds = [r["steady_samples_per_second"] for r in done if r["steady_samples_per_second"] > 0]
    return {
        "succeeded": len(done),
        "repeats": len(records),
        "steady_samples_per_second": spread(speeds, geometric=True),
        "test_accuracy": spread([r["test_accuracy"] for r in done]),
        "train_seconds": spread([r["train_seconds"] for r in done]),
        "warmup_seconds": spread([r["warmup_seconds"] for r in done]),
        "peak_rss_bytes": max((r["peak_rss_bytes"] for r in done), default=0),
        "peak_rss_rise_bytes": max(
            (r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in done), default=0
        ),
        "peak_gpu_bytes": max((r["peak_gpu_bytes"] for r in done), default=0),
    }


def read_locust_stats(prefix: Path, name: str) -> dict:
    """The row for `name` in Locust's <prefix>_stats.csv, latencies in milliseconds."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    row = rows.get(name) or rows["Aggregated"]
    pct = {p.rstrip("%"): _number(row.get(p)) for p in PERCENTILES}
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_second": _number(row["Requests/s"]),
        "latency_ms": {
            "mean": _number(row["Average Response Time"]),
            "min": _number(row["Min Response Time"]),
            "max": _number(row["Max Response Time"]),
            "p50": pct["50"],
            "p90": pct["90"],
            "p95": pct["95"],
            "p99": pct["99"],
        },
        "percentiles_ms": pct,
    }


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0  # Locust writes "N/A" when a run had no requests


def build_results(
    arms: dict[str, tuple[str, list[tpb.Job]]],
    serving: list[dict],
    load: dict,
    command: str,
    verdict: list[dict],
    design: dict,
    serving_cost: dict | None = None,
) -> dict:
    """`arms`: label -> (framework, its jobs in repeat order); `verdict` from twinbench.experiments.verdicts;
    `serving_cost`: {"figures": [...], "summary": [...], "note": ...} from twinbench.experiments.bench_serving."""
    training = {}
    for label, (framework, jobs) in arms.items():
        records = [training_record(job) for job in jobs]
        training[label] = {
            "framework": framework,
            "repeats": records,
            "summary": arm_summary(records),
        }
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "environment": environment(),
        "design": design,
        "training": training,
        "serving": {**load, "models": serving},
        "verdict": verdict,
        **({"serving_cost": serving_cost} if serving_cost else {}),
        **_code_of(arms),
    }


def _code_of(arms: dict[str, tuple[str, list[tpb.Job]]]) -> dict:
    """The coder's view: the task's example scripts and their sizes, when the checkout has them."""
    from twinbench.experiments.code_size import compare_task

    models = {job.spec.model for _, jobs in arms.values() for job in jobs}
    frameworks = [framework for framework, _ in arms.values()]  # the compared ones' scripts only
    code = compare_task(models.pop(), frameworks=frameworks) if len(models) == 1 else None
    return {"code": code} if code else {}
