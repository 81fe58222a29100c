"""Runs Locust headless against one served model, in a process of its own, and reads its CSVs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from twinbench.report import read_locust_stats

LOCUSTFILE = Path(__file__).resolve().parents[1] / "loadtests" / "locustfile.py"


def run_locust(
    host: str,
    model: str,
    users: int,
    duration: str,
    batch_size: int,
    input_file: Path,
    csv_prefix: Path,
) -> dict:
    """Locust's figures for `model` (requests, failures, req/s, latency percentiles in ms)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    latency_file = csv_prefix.with_name(csv_prefix.name + "_latencies.npy")
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", duration,
        "--host", host,
        "--csv", str(csv_prefix),
        "--models", model,
        "--batch-size", str(batch_size),
        "--input-file", str(input_file),
        "--latency-file", str(latency_file),
        "--loglevel", "WARNING",
    ]  # fmt: skip
    log = csv_prefix.with_name(csv_prefix.name + ".log")
    with open(log, "wb") as out:
        # Locust exits 1 when any request failed: that is a result to report, not an error.
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    stats_file = Path(f"{csv_prefix}_stats.csv")
    if not stats_file.exists():
        raise RuntimeError(f"locust exited {done.returncode} without results; see {log}")
    stats = read_locust_stats(csv_prefix, model)
    if latency_file.exists():
        latencies = np.load(latency_file)
        stats.update(exact_latencies(latencies))
        # Locust writes its CSV every second and may quit before a last write (seen on a busy
        # 2-core machine: a 2 s run whose CSV still said 0 requests); the latency file is
        # written at exit and holds every successful request.
        counted = len(latencies) + stats["failures"]
        if counted > stats["requests"]:
            seconds = duration_seconds(duration)
            if stats["requests"]:
                stats["requests_per_second"] *= counted / stats["requests"]
            elif seconds:
                stats["requests_per_second"] = counted / seconds
            stats["requests"] = counted
    return stats


def duration_seconds(duration: str) -> float:
    """Locust's run time ("20s", "1m30s", "2h") in seconds; 0 when it cannot be read."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)\s*([hms])", duration)
    return float(sum(int(n) * units[u] for n, u in parts))


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
