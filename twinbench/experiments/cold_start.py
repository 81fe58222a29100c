"""What an export costs before it serves at speed: its cold start, measured per export.

Each repeat is a fresh Python process that does what a trainer does when it serves an export: it
imports the framework's adapter (as the trainer has it imported), then loads the export with the
trainer's own loader (`Framework.loaders`, the ones `twinbench.serving.dataplane` calls) on the
serving threads, and calls it on one row of the model's declared inputs:

- load time: the loader's call, from the file to a runtime ready to call;
- memory: the resident set the load added to the process (what the model, and any library only
  its loader imports, adds to a trainer), read from /proc before and after;
- first-request latency: the first call, which pays lazy initialisation (TorchScript's
  profiling runs, ONNX Runtime's first allocation);
- requests until steady: with `CALLS` calls in all, the steady p50 is the median of the last
  `TAIL`; the export is steady from the first call whose next `WINDOW` calls have a median within
  `STEADY_WITHIN` (25%) of it, and the figure is that call's number (1: steady from the start).

The figures are of the runtime alone, without the gRPC and the link in front of it (path a of
`twinbench bench serving`); the repeats' spread is given as their range.

`python -m twinbench.experiments.cold_start REPOSITORY NAME VERSION THREADS` runs one repeat (0
threads: the runtime's default) and prints its figures as one JSON line; `measure_cold_start`
runs the repeats.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CALLS = 300
TAIL = 100
WINDOW = 20
STEADY_WITHIN = 0.25


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/status (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def requests_until_steady(latencies_ms: list[float] | np.ndarray) -> int:
    """The number of the first call (from 1) whose next WINDOW calls' median is within
    STEADY_WITHIN of the steady p50 (the median of the last TAIL calls)."""
    values = np.asarray(latencies_ms, dtype=float)
    steady = float(np.median(values[-TAIL:]))
    for start in range(len(values) - WINDOW + 1):
        if np.median(values[start : start + WINDOW]) <= steady * (1 + STEADY_WITHIN):
            return start + 1
    return len(values)


def _loaders(framework: str) -> dict:
    """The framework adapter's loaders, imported here as the trainer imports its adapter."""
    if framework == "torch":
        from twinbench.frameworks.torch.framework import TorchFramework

        return TorchFramework.loaders
    if framework == "tf":
        from twinbench.frameworks.tf.framework import TFFramework

        return TFFramework.loaders
    raise ValueError(f"no cold start for {framework!r} exports")


def one_cold_start(repository: str, name: str, version: int, threads: int | None) -> dict:
    """One repeat, in this process (which must not have loaded the export before)."""
    from twinbench.client.inputs import model_inputs
    from twinbench.serving.repository import ModelRepository, framework_of

    exports = ModelRepository(Path(repository))
    info = exports.info(name, version)
    loader = _loaders(framework_of(name))[info.format]
    inputs, _ = model_inputs(info.input_specs, rows=1)
    arguments = list(inputs.values())
    path = exports.version_dir(name, version) / info.filename
    before = resident_bytes()
    start = time.perf_counter()
    runtime = loader(path, threads)
    load_s = time.perf_counter() - start
    added = resident_bytes() - before
    latencies = []
    for _ in range(CALLS):
        start = time.perf_counter()
        runtime.infer(*arguments)
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "load_s": load_s,
        "memory_mb": added / 2**20,
        "first_ms": latencies[0],
        "until_steady": requests_until_steady(latencies),
        "steady_p50_ms": float(np.median(latencies[-TAIL:])),
    }


def measure_cold_start(
    repository: Path, name: str, version: int, repeats: int, threads: int | None = None
) -> dict:
    """`repeats` cold starts of one export (`name`, `version` in `repository`), each in a fresh
    process: each figure's median and range, and every repeat's figures."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(repository), name, str(version),
             str(threads or 0)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"a cold start of {name} failed: {done.stderr.strip()[-2000:]}")
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    out: dict = {"model": name, "version": version, "repeats": runs}
    for key in ("load_s", "memory_mb", "first_ms", "until_steady", "steady_p50_ms"):
        values = [r[key] for r in runs]
        out[key] = float(np.median(values))
        out[f"{key}_range"] = [float(min(values)), float(max(values))]
    return out


def main() -> None:
    repository, name, version, threads = sys.argv[1:5]
    print(json.dumps(one_cold_start(repository, name, int(version), int(threads) or None)))


if __name__ == "__main__":
    main()
