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

import importlib
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
    """The framework adapter's loaders, its module imported here as the trainer imports it."""
    module = importlib.import_module(f"twinbench.frameworks.{framework}.framework")
    for adapter in vars(module).values():
        if isinstance(adapter, type) and getattr(adapter, "name", None) == framework:
            loaders: dict = getattr(adapter, "loaders")  # noqa: B009 - a class found at run time
            return loaders
    raise ValueError(f"no framework adapter named {framework!r} in {module.__name__}")


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


def cold_starts_of(
    repository: Path, exports: list[tuple[str, int]], repeats: int, threads: int | None = None
) -> list[dict]:
    """`measure_cold_start` for each (name, version) of `exports`, for a report; an export whose
    cold start cannot be measured gets its error instead, and the report goes on."""
    out = []
    for name, version in exports:
        try:
            out.append(measure_cold_start(repository, name, version, repeats, threads))
        except RuntimeError as exc:
            out.append({"model": name, "version": version, "error": str(exc)[-500:]})
    return out


def cold_start_and_cpu_table(cost: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's table of what each export costs besides its latency: its cold start and
    memory (`cost["cold_start"]`) and the services' CPU per 1,000 requests on each path (the
    median and range of `cost["figures"]`); none when the serving cost has neither."""

    def spread(values: list[float], fmt: str) -> str:
        low, high = min(values), max(values)
        median = float(np.median(values))
        return f"{median:{fmt}} [{low:{fmt}}-{high:{fmt}}]" if high > low else f"{median:{fmt}}"

    cpu: dict[str, dict[str, list[float]]] = {}
    for f in cost.get("figures", []):
        if f.get("server_cpu_s_per_1k") is not None:
            by_path = cpu.setdefault(f["model"], {})
            by_path.setdefault(f["path"][0], []).append(f["server_cpu_s_per_1k"])
    cold = {c["model"]: c for c in cost.get("cold_start", []) if "repeats" in c}
    if not cpu and not cold:
        return []
    paths = sorted({p for by_path in cpu.values() for p in by_path})
    rows = []
    for model in sorted(set(cpu) | set(cold)):
        c = cold.get(model)
        first = (
            [spread([r["load_s"] * 1000 for r in c["repeats"]], ".1f"),
             spread([r["memory_mb"] for r in c["repeats"]], ".1f"),
             spread([r["first_ms"] for r in c["repeats"]], ".2f"),
             spread([r["until_steady"] for r in c["repeats"]], ".0f")]
            if c else ["-"] * 4
        )  # fmt: skip
        costs = [spread(cpu[model][p], ".3f") if p in cpu.get(model, {}) else "-" for p in paths]
        rows.append([model, *first, *costs])
    headers = ["export", "load ms", "memory MB", "first request ms", "requests until steady"]
    headers += [f"CPU s per 1,000 requests, path {p}" for p in paths]
    title = "Serving cost: cold start, memory and the services' CPU (median [range])"
    return [(title, headers, rows)]
