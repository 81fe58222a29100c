"""`twinbench bench training --workers 1,2,...`: data-parallel throughput and scaling efficiency,
both frameworks side by side.

Every figure is a training job on the trainer services, as in `bench training`, with
`workers` set: the global batch stays `--batch-size` whatever the number of workers (each takes
its shard), so a job's steady samples/s is directly comparable across worker counts. On a CPU
each of N workers gets 1/N of the job's cores and threads, the 1-worker baseline all of them.

Scaling efficiency at N workers is throughput(N) / (N x throughput(1)), per framework, from
paired repeats (repeat r at N with repeat r at 1); its interval is the interval of the ratio
throughput(N) / throughput(1) from twinbench.experiments.verdicts, divided by N. The arms of one repeat run one
at a time in alternating order (A B ... B A) so that drift cancels, and every line of the table
is corrected together (Holm).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.bench_training import BenchOptions, _geomean, _record, _run_job, job_spec
from twinbench.experiments.report_kit import (
    environment,
    table_report,
    write_table_report,
)
from twinbench.experiments.verdicts import Line, decide, describe, paired_ratio
from twinbench.rpc.channel import Client


@dataclass(frozen=True)
class ScalingOptions:
    bench: BenchOptions
    workers: tuple[int, ...] = (1, 2)
    extra: dict = field(default_factory=dict)


def _arms(frameworks: tuple[str, ...], workers: tuple[int, ...], repeat: int):
    arms = [(f, w) for f in frameworks for w in workers]
    return arms if repeat % 2 == 0 else arms[::-1]


def _scaling_record(job: tpb.Job) -> dict:
    record = _record(job)
    record["world_size"] = job.world_size
    record["workers"] = [
        {"rank": w.rank, "samples": w.samples,
         "steady_samples_per_second": w.steady_samples_per_second,
         "threads": w.threads.intra_op, "cpus": list(w.cpu_set)}
        for w in job.workers
    ]  # fmt: skip
    record["threads"] = job.threads.intra_op
    record["communication"] = {
        "backend": job.communication.backend,
        "all_reduce": job.communication.all_reduce,
        "bucket_bytes": job.communication.bucket_bytes,
    }
    return record


def run_scaling_bench(
    client: Client, options: ScalingOptions, progress: Callable[[str], None] = print
) -> dict:
    bench = options.bench
    first, second = bench.frameworks
    rows: list[dict[str, Any]] = []
    lines: list[Line] = []
    for model in bench.models:
        for mode in bench.modes:
            runs: dict[str, dict[int, list[dict]]] = {
                f: {w: [] for w in options.workers} for f in bench.frameworks
            }
            for repeat in range(bench.repeats):
                for framework, workers in _arms(bench.frameworks, options.workers, repeat):
                    spec = job_spec(bench, model, framework, mode, repeat)
                    spec.workers = workers
                    job = _run_job(client, spec)
                    runs[framework][workers].append(_scaling_record(job))
                    progress(
                        f"{model} {mode} {framework} {workers} worker(s) repeat {repeat + 1}: "
                        + (
                            f"{job.steady_samples_per_second:,.1f} samples/s"
                            if job.state == tpb.SUCCEEDED
                            else f"{tpb.JobState.Name(job.state).lower()}: {job.error}"
                        )
                    )
            rows.append({"model": model, "mode": mode, "runs": runs})
            lines += _lines(model, mode, runs, bench, options.workers)
    hardware = ", ".join(
        sorted(
            {
                r["device"]
                for row in rows
                for by in row["runs"].values()
                for rs in by.values()
                for r in rs
                if r["device"]
            }
        )  # fmt: skip
    )
    return {
        "kind": "bench training scaling",
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment(),
        "options": {**bench.__dict__, "workers": list(options.workers), **options.extra},
        "rows": rows,
        "verdicts": decide(lines, hardware, bench.level) if lines else [],
    }


def _ok(runs: list[dict]) -> bool:
    return bool(runs) and all(r["state"] == "succeeded" for r in runs)


def _lines(model, mode, runs, bench: BenchOptions, workers: tuple[int, ...]) -> list[Line]:
    first, second = bench.frameworks
    out = []
    tag = {"model": model, "mode": mode}

    def speed(fw: str, w: int) -> tuple[list[float], list[list[float]]]:
        return ([r["samples_per_second"] for r in runs[fw][w]],
                [r["windows"] for r in runs[fw][w]])  # fmt: skip

    for w in workers:
        if _ok(runs[first][w]) and _ok(runs[second][w]):
            (a, aw), (b, bw) = speed(first, w), speed(second, w)
            out.append(Line(
                f"{model} {mode}, {w} worker(s): steady training throughput", first, second,
                paired_ratio(a, b, aw, bw, level=bench.level), higher_is_better=True,
                extra={**tag, "kind": "throughput", "workers": w},
            ))  # fmt: skip
    base = min(workers)
    for w in workers:
        if w == base:
            continue
        for fw in bench.frameworks:
            if _ok(runs[fw][w]) and _ok(runs[fw][base]):
                (a, aw), (b, bw) = speed(fw, w), speed(fw, base)
                out.append(Line(
                    f"{model} {mode}, {fw}: throughput at {w} workers over {base}",
                    f"{fw} x{w}", f"{fw} x{base}",
                    paired_ratio(a, b, aw, bw, level=bench.level), higher_is_better=True,
                    extra={**tag, "kind": "speed-up", "framework": fw, "workers": w,
                           "base": base},
                ))  # fmt: skip
        if all(_ok(runs[fw][n]) for fw in bench.frameworks for n in (w, base)):
            # Per repeat, each framework's speed-up; their ratio compares scaling efficiency.
            first_speedups, second_speedups = (
                [x / y for x, y in zip(speed(fw, w)[0], speed(fw, base)[0], strict=True)]
                for fw in (first, second)
            )
            out.append(Line(
                f"{model} {mode}, {w} workers: scaling efficiency", first, second,
                paired_ratio(first_speedups, second_speedups, level=bench.level),
                higher_is_better=True,
                extra={**tag, "kind": "efficiency", "workers": w, "base": base},
            ))  # fmt: skip
    return out


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    first, second = results["options"]["frameworks"]
    level = results["options"]["level"]
    workers = results["options"]["workers"]
    base = min(workers)
    by_kind = {}
    for v in results["verdicts"]:
        key = (v["model"], v["mode"], v["kind"], v.get("framework"), v["workers"])
        by_kind[key] = v

    def interval(v: dict | None, scale: float = 1.0) -> str:
        if v is None:
            return "-"
        low, high = v["interval"]
        if high is None:
            return f"{v['ratio'] / scale:.3f}"
        return f"{v['ratio'] / scale:.3f} [{low / scale:.3f}, {high / scale:.3f}]"

    headers = [
        "model", "mode", "workers", f"{first} samples/s", f"{second} samples/s",
        f"{first}/{second} [{level:.0%}]", f"{first} efficiency [{level:.0%}]",
        f"{second} efficiency [{level:.0%}]", f"efficiency {first}/{second} [{level:.0%}]",
        f"threads per worker {first} / {second}",
    ]  # fmt: skip
    out = []
    for row in results["rows"]:
        model, mode = row["model"], row["mode"]
        # Worker counts are ints in memory, strings once read back from JSON.
        runs = {fw: {int(w): rs for w, rs in by.items()} for fw, by in row["runs"].items()}
        for w in workers:
            cells = []
            for fw in (first, second):
                done = [r["samples_per_second"] for r in runs[fw][w] if r["state"] == "succeeded"]
                cells.append(f"{_geomean(done):,.1f}" if done else "failed")
            through = by_kind.get((model, mode, "throughput", None, w))
            if w == base:
                eff = ["1 (baseline)", "1 (baseline)", "-"]
            else:
                eff = [
                    interval(by_kind.get((model, mode, "speed-up", fw, w)), w)
                    for fw in (first, second)
                ]
                eff.append(interval(by_kind.get((model, mode, "efficiency", None, w))))
            threads = " / ".join(_threads(runs[fw][w]) for fw in (first, second))
            out.append([model, mode, str(w), *cells, interval(through), *eff, threads])
    return headers, out


def _threads(runs: list[dict]) -> str:
    """Intra-op threads of each worker (of the one process for a 1-worker job)."""
    per = {x["threads"] for r in runs for x in r.get("workers", [])}
    per = per or {r.get("threads", 0) for r in runs}
    return "/".join(str(t) for t in sorted(per)) or "-"


def report_pages(results: dict) -> tuple[str, str]:
    """The scaling bench's report as Markdown and as HTML, from the report kit."""
    headers, rows = table_rows(results)
    notes = [
        "Efficiency at N workers: throughput(N) / (N x throughput(baseline)), with the interval"
        " of the paired ratio divided by N.",
        *(f"- {describe(v)}" for v in results["verdicts"]),
    ]
    section = ("Throughput and scaling", headers, rows)
    return table_report("bench training --workers", results, section, notes)


def write_scaling_report(directory: Path, results: dict) -> list[Path]:
    return write_table_report(directory, "bench-scaling", results, report_pages(results))
