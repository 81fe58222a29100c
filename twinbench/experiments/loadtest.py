"""Runs Locust headless against one served model, in a process of its own, and reads its CSVs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from twinbench.experiments.results import read_locust_stats

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


def run_locust(
    host: str,
    model: str,
    users: int,
    duration: str,
    batch_size: int,
    input_file: Path | None,
    csv_prefix: Path,
    rate: float = 0.0,
    arrivals: str = "poisson",
    max_in_flight: int = 100,
) -> dict:
    """Locust's figures for `model` (requests, failures, req/s, latency percentiles in ms).
    Without `input_file`, the requests are built from the model's metadata and dataset. With
    `rate`, an open loop: each user's requests fall due at `rate` per second (`arrivals`), timed
    from when they fell due, at most `max_in_flight` of them in flight (the others fail); the
    figures then count the requests sent late and over the bound."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    latency_file = csv_prefix.with_name(csv_prefix.name + "_latencies.npy")
    totals_file = csv_prefix.with_name(csv_prefix.name + "_totals.json")
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", duration,
        "--host", host,
        "--csv", str(csv_prefix),
        "--models", model,
        "--batch-size", str(batch_size),
        *(["--input-file", str(input_file)] if input_file else []),
        "--latency-file", str(latency_file),
        "--totals-file", str(totals_file),
        "--loglevel", "WARNING",
    ]  # fmt: skip
    if rate > 0:
        command += [
            "--rate",
            str(rate),
            "--arrivals",
            arrivals,
            "--max-in-flight",
            str(max_in_flight),
        ]
    log = csv_prefix.with_name(csv_prefix.name + ".log")
    with open(log, "wb") as out:
        # Locust exits 1 when any request failed: that is a result to report, not an error.
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    stats_file = Path(f"{csv_prefix}_stats.csv")
    if not stats_file.exists():
        raise RuntimeError(f"locust exited {done.returncode} without results; see {log}")
    stats = read_locust_stats(csv_prefix, model)
    if totals_file.exists():  # the run's final counts (the CSV can miss the end of a short run)
        stats.update(json.loads(totals_file.read_text()))
    if latency_file.exists():
        stats.update(exact_latencies(np.load(latency_file)))
    return stats


def exact_latencies(latencies_ms: np.ndarray) -> dict:
    """Percentiles from every measured latency, replacing Locust's whole-millisecond ones."""
    if not len(latencies_ms):
        return {}
    points = {"50": 50, "66": 66, "75": 75, "80": 80, "90": 90, "95": 95, "98": 98, "99": 99,
              "99.9": 99.9, "99.99": 99.99, "100": 100}  # fmt: skip
    values = np.percentile(latencies_ms, list(points.values()))
    pct = {name: float(v) for name, v in zip(points, values, strict=True)}
    return {
        "latency_ms": {
            "mean": float(latencies_ms.mean()),
            "min": float(latencies_ms.min()),
            "max": float(latencies_ms.max()),
            **{f"p{p}": pct[p] for p in ("50", "90", "95", "99")},
        },
        "percentiles_ms": pct,
    }
