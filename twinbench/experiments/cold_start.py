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

A trainer serves all of its framework's exports from one process, so one repeat may load several
exports of a framework one after another, as the trainer does after a restart: each export's
loader runs for the first time in that process, and what only its loader imports (ONNX Runtime
for an ONNX export) is still counted to it. `cold_starts_of` does so for compare's report, with
the order rotated from repeat to repeat (each run records its `position`), so that an order
effect lands in the range; it spares a framework import per export and repeat.

`python -m twinbench.experiments.cold_start REPOSITORY THREADS NAME VERSION [NAME VERSION ...]`
runs one repeat of each export named, in that order, in this one process (0 threads: the
runtime's default) and prints their figures as one JSON line, a list; `measure_cold_start` runs
the repeats of one export, each alone in its process.
"""

from __future__ import annotations

import importlib
import json
import os
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


def _one_process(repository: Path, exports: list[tuple[str, int]], threads: int | None) -> list:
    """One fresh process's cold starts of `exports`, in that order."""
    names = " and ".join(name for name, _ in exports)
    done = subprocess.run(
        [sys.executable, "-m", __name__, str(repository), str(threads or 0),
         *(str(x) for export in exports for x in export)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"a cold start of {names} failed: {done.stderr.strip()[-500:]}")
    runs: list = json.loads(done.stdout.splitlines()[-1])
    return runs


def _summary(name: str, version: int, runs: list[dict]) -> dict:
    """Each figure's median and range over the repeats, and every repeat's figures."""
    out: dict = {"model": name, "version": version, "repeats": runs}
    for key in ("load_s", "memory_mb", "first_ms", "until_steady", "steady_p50_ms"):
        values = [r[key] for r in runs]
        out[key] = float(np.median(values))
        out[f"{key}_range"] = [float(min(values)), float(max(values))]
    return out


def measure_cold_start(
    repository: Path, name: str, version: int, repeats: int, threads: int | None = None
) -> dict:
    """`repeats` cold starts of one export (`name`, `version` in `repository`), each in a fresh
    process of its own: each figure's median and range, and every repeat's figures."""
    runs = [_one_process(repository, [(name, version)], threads)[0] for _ in range(repeats)]
    return _summary(name, version, runs)


def main() -> None:
    repository, threads, *named = sys.argv[1:]
    exports = list(zip(named[::2], (int(v) for v in named[1::2]), strict=True))
    print(json.dumps([one_cold_start(repository, name, version, int(threads) or None)
                      for name, version in exports]))  # fmt: skip


def cold_starts_of(
    repository: Path, exports: list[tuple[str, int]], repeats: int, threads: int | None = None
) -> list[dict]:
    """`repeats` cold starts of each (name, version) of `exports`, for a report: each repeat one
    fresh process per framework that loads its exports one after another, as its trainer does,
    the order rotated from repeat to repeat. A framework whose cold starts cannot be measured
    gives each of its exports the error instead, and the report goes on."""
    from twinbench.serving.repository import framework_of

    groups: dict[str, list[tuple[str, int]]] = {}
    for export in exports:
        groups.setdefault(framework_of(export[0]), []).append(export)
    runs: dict[tuple[str, int], list[dict]] = {export: [] for export in exports}
    failed: dict[tuple[str, int], str] = {}
    for group in groups.values():
        try:
            for r in range(repeats):
                shift = r % len(group)
                order = group[shift:] + group[:shift]
                for position, (export, run) in enumerate(
                    zip(order, _one_process(repository, order, threads), strict=True), 1
                ):
                    runs[export].append({**run, "position": position})
        except RuntimeError as exc:
            failed.update({export: str(exc) for export in group})
    return [
        {"model": name, "version": version, "error": failed[(name, version)]}
        if (name, version) in failed
        else _summary(name, version, runs[(name, version)])
        for name, version in exports
    ]


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


if __name__ == "__main__":
    main()
    # The figures are out; the framework's teardown at interpreter exit (a second or more for
    # TensorFlow) would only delay the next repeat.
    sys.stdout.flush()
    os._exit(0)
