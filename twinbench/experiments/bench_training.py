"""`twinbench bench training`: steady training throughput per model, framework and mode.

Each figure is a training job on the trainer services (through the gateway), on synthetic data,
one job at a time so that no two share the CPU: the first steps are warm-up (tracing, compiling,
autotuning), timed apart; the steady steps after them give the throughput, in the model's own
unit. Every (model, mode) is repeated with a new seed per repeat, the frameworks in alternating
order (A B, B A, ...), and each line is a ratio, first framework over second, with its interval
from twinbench.experiments.verdicts. It prints the table with the PyTorch paper's figures beside it (other
hardware, another year: compare the ratios, not the numbers) and writes JSON, Markdown and HTML.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.preflight import preflight, warn
from twinbench.experiments.preflight import summary as preflight_summary
from twinbench.experiments.report_kit import (
    environment,
    table_report,
    write_table_report,
)
from twinbench.experiments.sequential import anytime_lines, describe_stopping, until_decided
from twinbench.experiments.verdicts import LEVEL, Line, decide, describe, paired_ratio
from twinbench.rpc.channel import Client

# The PyTorch paper (Paszke et al., NeurIPS 2019), Table 1: training throughput (images/s, GNMTv2
# tokens/s, NCF samples/s), TensorFlow then PyTorch, on one NVIDIA GP100; "MobileNet" is most
# likely MobileNetV2 (torchvision's only MobileNet then).
PUBLISHED = {
    "alexnet": (1422, 1547),
    "vgg19": (66, 119),
    "resnet50": (200, 212),
    "mobilenet_v2": (216, 463),
    "gnmt": (9631, 15512),
    "ncf": (4.8e6, 5.4e6),
}
PUBLISHED_HARDWARE = "one NVIDIA GP100, 2019 (PyTorch paper, Table 1)"
# Each model's unit of throughput, as the paper's table and the jobs (Job.throughput_unit) count.
UNITS = {"gnmt": "tokens", "ncf": "samples"}  # the others: images


def unit_of(model: str) -> str:
    return UNITS.get(model, "images")


MODES = ("default", "compiled")


@dataclass(frozen=True)
class BenchOptions:
    models: tuple[str, ...]
    frameworks: tuple[str, ...] = ("torch", "tf")  # two or three; every pair gets a line
    modes: tuple[str, ...] = ("default",)
    precisions: tuple[str, ...] = ("fp32",)  # twinbench.jobs.precision: "fp32", "mixed"
    repeats: int = 3
    batch_size: int = 16
    warmup_steps: int = 3
    steps: int = 10
    width: float | None = None
    image_size: int | None = None
    channels_last: bool = False  # PyTorch only: Keras is NHWC already
    level: float = LEVEL
    # Add pairs of repeats until the row's line is decided (sequential.py); the budget is
    # shared equally by the rows.
    until_decided: bool = False
    budget_s: float | None = None
    max_pairs: int = 20


def job_spec(
    options: BenchOptions, model: str, framework: str, mode: str, seed: int, precision: str = "fp32"
):
    spec = tpb.JobSpec(
        framework=framework,
        model=model,
        dataset="synthetic",
        epochs=1,
        batch_size=options.batch_size,
        train_samples=options.batch_size * (options.warmup_steps + options.steps),
        warmup_steps=options.warmup_steps,
        seed=seed,
        skip_export=True,
        compiled=mode == "compiled",
        channels_last=options.channels_last and framework == "torch" and model not in UNITS,
        precision=precision,
    )
    if options.width is not None:
        spec.width = options.width
    if options.image_size is not None and model not in UNITS:  # NCF and GNMT take ids
        spec.image_size = options.image_size
    return spec


def _run_job(client: Client, spec: tpb.JobSpec) -> tpb.Job:
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    for _ in client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job.id)):
        pass  # the stream ends when the job does
    return client.trainer.GetJob(tpb.GetJobRequest(job_id=job.id))


def _record(job: tpb.Job) -> dict:
    return {
        "job": job.id,
        "state": tpb.JobState.Name(job.state).lower(),
        "error": job.error,
        "samples_per_second": job.steady_samples_per_second,  # per unit (images, tokens, ...)
        "unit": job.throughput_unit or "samples",
        "windows": list(job.window_samples_per_second),
        "warmup_seconds": job.warmup_seconds,
        "baseline_rss_bytes": job.baseline_rss_bytes,
        "peak_rss_bytes": job.peak_rss_bytes,
        "peak_gpu_bytes": job.peak_gpu_bytes,
        "data_peak_rss_bytes": job.data_peak_rss_bytes,
        "precision": job.precision,
        "device": job.device,
        "framework_version": job.framework_version,
        "compilation": job.fairness.get("compilation", ""),
        "layout": job.fairness.get("layout", ""),
    }


def run_training_bench(
    client: Client, options: BenchOptions, progress: Callable[[str], None] = print
) -> dict:
    """Runs every job and returns the results (see write_bench_report for their shape)."""
    checked = preflight()
    warn(checked)
    rows, lines = [], []
    rows_planned = len(options.models) * len(options.modes) * len(options.precisions)
    for model in options.models:
        for mode, precision in ((m, p) for m in options.modes for p in options.precisions):
            label = f"{mode} {precision}"
            runs: dict[str, list[dict]] = {fw: [] for fw in options.frameworks}

            def add_pair(model=model, mode=mode, precision=precision, label=label, runs=runs):
                repeat = len(runs[options.frameworks[0]])
                # A B (C), then (C) B A: drift over the run weighs on every framework alike.
                forward = options.frameworks
                order = forward if repeat % 2 == 0 else forward[::-1]
                for framework in order:
                    spec = job_spec(options, model, framework, mode, repeat, precision)
                    job = _run_job(client, spec)
                    runs[framework].append(_record(job))
                    progress(
                        f"{model} {label} {framework} repeat {repeat + 1}: "
                        + (
                            f"{job.steady_samples_per_second:,.1f} {unit_of(model)}/s"
                            if job.state == tpb.SUCCEEDED
                            else f"{tpb.JobState.Name(job.state).lower()}: {job.error}"
                        )
                    )

            stopping = None
            if options.until_decided:
                share = options.budget_s / rows_planned if options.budget_s else None
                row_line = functools.partial(_line, options, runs, model, mode, precision, label)
                stopping = until_decided(
                    add_pair, row_line, share, options.max_pairs, options.level, progress=progress
                )
            else:
                for _ in range(options.repeats):
                    add_pair()
            row: dict[str, Any] = {
                "model": model, "mode": mode, "precision": precision, "unit": unit_of(model),
                "runs": runs, "published": PUBLISHED.get(model),
            }  # fmt: skip
            if stopping is not None:
                row["stopping"] = stopping
                progress(f"{model} {label}: {describe_stopping(stopping)}")
            lines += _line(options, runs, model, mode, precision, label)
            rows.append(row)
    # With pairs added until decided, every line is judged by its anytime-valid test.
    judged = anytime_lines(lines, options.level) if options.until_decided else lines
    hardware = ", ".join(
        sorted({r["device"] for row in rows for rs in row["runs"].values() for r in rs})
    )
    return {
        "kind": "bench training",
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment(),
        "options": {k: v for k, v in options.__dict__.items()},
        "published_hardware": PUBLISHED_HARDWARE,
        "rows": rows,
        "verdicts": decide(judged, hardware, options.level) if lines else [],
        "timing": "sequential",
        "preflight": checked,
    }


def _line(
    options: BenchOptions,
    runs: dict[str, list[dict]],
    model: str,
    mode: str,
    precision: str,
    label: str,
) -> list[Line]:
    """The row's verdict lines, one per pair of frameworks, when every one of its jobs succeeded."""
    if not all(r["state"] == "succeeded" for rs in runs.values() for r in rs):
        return []
    lines = []
    for first, second in itertools.combinations(options.frameworks, 2):
        estimate = paired_ratio(
            [r["samples_per_second"] for r in runs[first]],
            [r["samples_per_second"] for r in runs[second]],
            [r["windows"] for r in runs[first]],
            [r["windows"] for r in runs[second]],
            level=options.level,
        )
        lines.append(
            Line(
                f"{model} {label}: steady training throughput", first, second, estimate,
                higher_is_better=True,
                extra={"model": model, "mode": mode, "precision": precision},
            )
        )  # fmt: skip
    return lines


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Each framework's columns, and each pair's ratio and verdict (one pair for two)."""
    frameworks = tuple(results["options"]["frameworks"])
    pairs = list(itertools.combinations(frameworks, 2))
    # The paper measured torch and tf only: its columns for those of them compared.
    paper = [fw for fw in frameworks if fw in ("torch", "tf")]
    verdicts = {
        (v["model"], v["mode"], v.get("precision", "fp32"), v["first"], v["second"]): v
        for v in results["verdicts"]
    }
    level = f"{results['options']['level']:.0%} interval"
    headers = [
        "model", "mode", "precision", "unit", *(f"{fw} per s" for fw in frameworks),
        *(h for a, b in pairs
          for h in (f"{a}/{b} [{level}]", "verdict" if len(pairs) == 1 else f"{a}/{b} verdict")),
        *(f"{fw} warm-up s" for fw in frameworks),
        *(f"{fw} peak RSS MiB (data / training)" for fw in frameworks),
        f"{' / '.join(frameworks)} peak GPU MiB",
        f"published {' / '.join(paper)} per s (GP100 2019)", f"published {'/'.join(paper)}",
    ]  # fmt: skip
    out = []
    for row in results["rows"]:
        runs = row["runs"]

        def fig(fw: str, key: str, scale: float = 1.0, fmt: str = "{:,.1f}", runs=runs) -> str:
            done = [r[key] for r in runs[fw] if r["state"] == "succeeded"]
            if not done:
                return "failed"
            # Throughput: the geometric mean over repeats; memory: the largest peak.
            return fmt.format((max(done) if "bytes" in key else _geomean(done)) / scale)

        def memory(fw: str, runs=runs) -> str:
            return f"{fig(fw, 'data_peak_rss_bytes', 2**20, '{:,.0f}')} / " + fig(
                fw, "peak_rss_bytes", 2**20, "{:,.0f}"
            )

        gpu = [r["peak_gpu_bytes"] for rs in runs.values() for r in rs]
        judged = []
        for first, second in pairs:
            key = (row["model"], row["mode"], row.get("precision", "fp32"), first, second)
            v = verdicts.get(key)
            if v is not None:
                low, high = v["interval"]
                ratio = f"{v['ratio']:.3f} [{low:.3f}, {high:.3f}]" if high else f"{v['ratio']:.3f}"
                verdict = v["winner"] or v["outcome"]
            else:
                states = {r["state"] for fw in (first, second) for r in runs[fw]}
                ratio = "-"
                # A lockstep process pair past its cap of discarded blocks is "too disturbed".
                verdict = "too disturbed" if "too disturbed" in states else "a job failed"
            judged += [ratio, verdict]
        # The paper's figures by framework, so the column follows --frameworks' order.
        published = dict(zip(("tf", "torch"), row["published"])) if row["published"] else None  # noqa: B905
        paper_ratio = (
            f"{published[paper[0]] / published[paper[1]]:.3f}"
            if published and len(paper) == 2
            else "-"
        )
        out.append([
            row["model"], row["mode"], row.get("precision", "fp32"), row.get("unit", "samples"),
            *(fig(fw, "samples_per_second") for fw in frameworks), *judged,
            *(fig(fw, "warmup_seconds", fmt="{:.2f}") for fw in frameworks),
            *(memory(fw) for fw in frameworks),
            " / ".join(fig(fw, "peak_gpu_bytes", 2**20, "{:,.0f}") for fw in frameworks)
            if any(gpu) else "- (no GPU)",
            " / ".join(f"{published[fw]:,.4g}" for fw in paper) if published and paper else "-",
            paper_ratio,
        ])  # fmt: skip
    return headers, out


def report_pages(results: dict) -> tuple[str, str]:
    """The bench's report as Markdown and as HTML, from the report kit."""
    headers, rows = table_rows(results)
    notes = [
        f"Published figures: {results['published_hardware']}; other hardware and versions,"
        " so compare ratios, not absolute numbers.",
        *(f"- {describe(v)}" for v in results["verdicts"]),
        *_timing_notes(results),
    ]
    return table_report("bench training", results, ("Training throughput", headers, rows), notes)


def _timing_notes(results: dict) -> list[str]:
    """How the jobs were timed (sequential jobs, or lockstep pairs and what they discarded),
    and what the preflight found."""
    notes = []
    if results.get("timing") == "lockstep":
        notes.append(
            "Timing: lockstep pairs (docs/lockstep.md): both arms' workers alive on this host,"
            " trained in alternating short blocks, the idle one stopped; each repeat is a fresh"
            " process pair, the unit of the interval."
        )
    elif results.get("fallback"):
        notes.append(f"Timing: sequential jobs; lockstep was asked for: {results['fallback']}.")
    notes += results.get("notes", [])
    for row in results.get("rows", []):  # --until-decided: each row's pairs, and why they stopped
        if "stopping" in row:
            notes.append(f"{row['model']} {row['mode']} {row['precision']}: "
                         f"{describe_stopping(row['stopping'])}.")  # fmt: skip
    if "preflight" in results:
        notes.append(f"Preflight: {preflight_summary(results['preflight'])}.")
    return notes


def write_bench_report(directory: Path, results: dict) -> list[Path]:
    return write_table_report(directory, "bench-training", results, report_pages(results))
