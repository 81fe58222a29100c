"""Lockstep pairs: both arms' job workers alive on one host, timed in alternating short blocks.

On a shared machine the noise is drift and transient load, and jobs minutes apart see different
machines. A lockstep pair starts both arms' workers (`python -m twinbench.training.worker`, as a
trainer would, with the same settings, so the same CPU set and thread counts) as fresh processes
here and lets only one train at a time: each trains a block of steps, reports it and stops its
whole process (twinbench.training.lockstep); then the other arm trains its block. Block pairs
come in couples, AB then BA or BA then AB (a seeded draw, recorded), so that drift within a
couple cancels; the first couple of a process pair starts with the arm that alternates between
process pairs. Every block records the parked process's CPU time and context switches (both
should be 0) and what else took the CPU (twinbench.experiments.disturbance); a block pair with a
disturbed block is discarded whole and redone, up to a cap.

The estimate: within a process pair, the mean of the block pairs' log ratios (its variance from
those paired differences is recorded); across process pairs (each a fresh pair of processes and
a new seed shared by both arms), a t interval over the pairs' means: process pairs stay the unit
of the interval, so effects that last a process's lifetime are never hidden (docs/lockstep.md).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.experiments.bench_training import (
    PUBLISHED,
    PUBLISHED_HARDWARE,
    BenchOptions,
    job_spec,
    unit_of,
)
from twinbench.experiments.lockstep_pairs import (
    FRAMEWORK_CLASSES,
    ArmProcess,
    LockstepOptions,
    LockstepUnavailable,
    fit_together,
    run_process_pair,
    worker_command,
)
from twinbench.experiments.preflight import preflight, warn
from twinbench.experiments.report_kit import environment
from twinbench.experiments.sequential import (
    MIN_LOOK_PAIRS,
    anytime_lines,
    describe_stopping,
    set_aside,
    until_decided,
)
from twinbench.experiments.verdicts import LEVEL, Estimate, Line, decide, paired_ratio
from twinbench.jobs.request import resolve_spec
from twinbench.training.loop import DEFAULT_WARMUP_STEPS

FRAMEWORK_MODULES = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}
# The first step after a resume may pay for cold caches and sleeping thread pools. When its
# extra time (over a steady step) is at least this share of a block, in the median block of
# either framework, the first step of every block (both arms) is left out of the rates.
RESUME_COST_LIMIT = 0.01
# compare's lockstep pairs, when they fill the time a run has left: at least as many as a
# stopping rule's first look takes (four), so that the t interval over them has three degrees of
# freedom at the fewest, whatever the run's earlier phases took.
FILL_MIN_PAIRS = MIN_LOOK_PAIRS


def unavailable(frameworks: Sequence[str], models: Sequence[str] = ()) -> str | None:
    """Why lockstep pairs cannot run here, or None when they can."""
    if not sys.platform.startswith("linux") or not Path("/proc/stat").exists():
        return "lockstep needs Linux (/proc, and SIGSTOP for a process group)"
    for framework in frameworks:
        if framework not in FRAMEWORK_CLASSES:
            return f"no lockstep worker for framework {framework!r}"
        if importlib.util.find_spec(FRAMEWORK_MODULES[framework]) is None:
            return (
                f"{FRAMEWORK_MODULES[framework]} is not installed here: both arms' workers must"
                " run on this host"
            )
    from twinbench.models.catalogue import MODELS

    for model in models:
        declared = MODELS.get(model)
        if declared is not None and declared.reinforcement is not None:
            return f"{model} trains in an environment, not in steps of a dataset"
    return None


# The estimate, from the recorded blocks.


def valid_pairs(process_pair: dict) -> list[dict]:
    return [p for p in process_pair["pairs"] if not p["discarded"]]


def block_rate(block: dict, drop_first: bool) -> float:
    """Samples per second of a block, without its first step when `drop_first`."""
    if drop_first and block["steps"] > 1:
        seconds = block["seconds"] - block["first_step_seconds"]
        return (block["samples"] - block["first_step_samples"]) / max(seconds, 1e-12)
    return block["samples"] / max(block["seconds"], 1e-12)


def resume_cost(process_pairs: Sequence[dict]) -> list[float | None]:
    """Per arm, the median over its valid blocks of the first step's extra time (over the
    block's steady steps) as a share of the block."""
    shares: list[list[float]] = [[], []]
    for pp in process_pairs:
        for pair in valid_pairs(pp):
            for k, block in zip(pair["order"], pair["blocks"], strict=True):
                if block["steps"] < 2:
                    continue
                rest = (block["seconds"] - block["first_step_seconds"]) / (block["steps"] - 1)
                shares[k].append((block["first_step_seconds"] - rest) / block["seconds"])
    return [float(np.median(s)) if s else None for s in shares]


def pair_summary(process_pair: dict, drop_first: bool) -> dict | None:
    """One process pair's figures: per arm the geometric mean of its block rates, and the block
    pairs' log ratios (first arm over second) with their mean and its standard error."""
    pairs = valid_pairs(process_pair)
    if not pairs:
        return None
    logs: list[list[float]] = [[], []]
    for pair in pairs:
        for k, block in zip(pair["order"], pair["blocks"], strict=True):
            logs[k].append(math.log(block_rate(block, drop_first)))
    d = np.asarray(logs[0]) - np.asarray(logs[1])
    m = len(d)
    se = float(np.std(d, ddof=1) / math.sqrt(m)) if m >= 2 else None
    return {
        "block_pairs": m,
        "rates": [math.exp(float(np.mean(x))) for x in logs],
        "log_ratios": d.tolist(),
        "mean_log_ratio": float(d.mean()),
        "ratio": math.exp(float(d.mean())),
        "log_se": se,  # within the process pair: from the paired differences
    }


def lockstep_estimate(summaries: Sequence[dict], level: float = LEVEL) -> Estimate:
    """Across process pairs: the t interval over the pairs' mean log ratios (a pair's two
    geometric-mean rates have exactly its mean log ratio as their log ratio)."""
    first = [s["rates"][0] for s in summaries]
    second = [s["rates"][1] for s in summaries]
    estimate = paired_ratio(first, second, level=level)
    estimate.method = f"lockstep: {estimate.method}, each the mean of its block pairs"
    return estimate


# The bench.


def lockstep_spec(options: BenchOptions, model: str, framework: str, mode: str, seed: int,
                  precision: str) -> tpb.JobSpec:  # fmt: skip
    """The bench's job, made long enough for any number of blocks: the coordinator ends it."""
    spec = job_spec(options, model, framework, mode, seed, precision)
    spec.ClearField("train_samples")  # whole epochs of the synthetic set
    spec.epochs = 10_000
    return spec


def start_arm(
    settings: Settings, framework: str, spec: tpb.JobSpec, label: str, threads: int | None = None
) -> ArmProcess:
    job_id = f"{framework}-{uuid.uuid4().hex[:12]}"
    job = tpb.Job(id=job_id, spec=resolve_spec(spec), state=tpb.RUNNING,
                  created_at=time.time(), started_at=time.time())  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads is not None:  # a handicap for a positive control; the job records it as read back
        env["TWINBENCH_TRAIN_THREADS"] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = settings.logs / "lockstep" / f"{job_id}.log"
    return ArmProcess(label, worker_command(framework), job, env, log)


def starter(
    settings: Settings, framework: str, spec: tpb.JobSpec, label: str, threads: int | None = None
) -> Callable[[], ArmProcess]:
    return lambda: start_arm(settings, framework, spec, label, threads)


def _threads(lockstep: LockstepOptions, k: int) -> int | None:
    return lockstep.arm_threads[k] if lockstep.arm_threads else None


def run_lockstep_bench(
    settings: Settings,
    options: BenchOptions,
    lockstep: LockstepOptions,
    progress: Callable[[str], None] = print,
) -> dict:
    """`bench training --lockstep`: each repeat a lockstep process pair. The results have the
    shape of run_training_bench's, each row with its process pairs' blocks under "lockstep"."""
    checked = preflight()
    warn(checked)
    first, second = options.frameworks
    rows, lines, notes = [], [], []
    rows_planned = len(options.models) * len(options.modes) * len(options.precisions)
    for model in options.models:
        for mode, precision in ((m, p) for m in options.modes for p in options.precisions):
            label = f"{mode} {precision}"
            process_pairs: list[dict] = []

            def add_pair(model=model, mode=mode, precision=precision, label=label,
                         process_pairs=process_pairs) -> None:  # fmt: skip
                repeat = len(process_pairs)
                specs = [lockstep_spec(options, model, fw, mode, repeat, precision)
                         for fw in options.frameworks]  # fmt: skip
                starters = [
                    starter(settings, fw, spec, fw, _threads(lockstep, k))
                    for k, (fw, spec) in enumerate(zip(options.frameworks, specs, strict=True))
                ]
                pp = run_process_pair(
                    starters,
                    repeat % 2,
                    repeat,
                    lockstep,
                    options.warmup_steps,
                    together=fit_together(process_pairs[-1] if repeat else None),
                )
                process_pairs.append(pp)
                progress(
                    f"{model} {label} process pair {repeat + 1}: {_pair_line(pp, first, second)}"
                )

            stopping = None
            if options.until_decided:
                share = options.budget_s / rows_planned if options.budget_s else None

                def row_lines(model=model, mode=mode, precision=precision,
                              process_pairs=process_pairs) -> list[Line]:  # fmt: skip
                    line = _row(model, mode, precision, options, process_pairs, lockstep)[1]
                    return [line] if line is not None else []

                stopping = until_decided(add_pair, row_lines, share, options.max_pairs,
                                         options.level, progress=progress)  # fmt: skip
                progress(f"{model} {label}: {describe_stopping(stopping)}")
            else:
                for _ in range(options.repeats):
                    add_pair()
            row, line, note = _row(model, mode, precision, options, process_pairs, lockstep)
            if stopping is not None:
                row["stopping"] = stopping
            rows.append(row)
            notes.append(note)
            if line is not None:
                lines.append(line)
    hardware = ", ".join(sorted({j["device"] for row in rows for pp in row["lockstep"]
                                 for j in pp["jobs"] if j and j["device"]}))  # fmt: skip
    return {
        "kind": "bench training",
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment(),
        "options": {**options.__dict__, "lockstep": lockstep.__dict__},
        "timing": "lockstep",
        "published_hardware": PUBLISHED_HARDWARE,
        "rows": rows,
        # With pairs added until decided, every line is judged by its anytime-valid test.
        "verdicts": decide(
            anytime_lines(lines, options.level) if options.until_decided else lines,
            hardware,
            options.level,
        )
        if lines
        else [],
        "notes": notes,
        "preflight": checked,
    }


def _pair_line(pp: dict, first: str, second: str) -> str:
    if pp["failed"]:
        return f"failed: {pp['failed']}"
    s = pair_summary(pp, drop_first=False)
    parked = max((abs(b["parked"]["cpu_s"]) for p in pp["pairs"] for b in p["blocks"]), default=0)
    text = (
        f"{len(valid_pairs(pp))} block pairs of {pp['block_steps']} steps"
        f" ({pp['discarded']} discarded), parked CPU at most {parked * 1000:.0f} ms"
    )
    if s:
        text += f", {first}/{second} {s['ratio']:.3f}"
    return text + (": too disturbed" if pp["too_disturbed"] else "")


def speed_summary(
    labels: Sequence[str], process_pairs: list[dict], lockstep: LockstepOptions
) -> dict:
    """What a run's process pairs add up to: the first-step decision, each pair's figures, the
    discards, the parked CPU, and a note that says it all in a sentence."""
    costs = resume_cost(process_pairs)
    drop_first = any(c is not None and c >= RESUME_COST_LIMIT for c in costs)
    parked = [b["parked"] for pp in process_pairs for p in pp["pairs"] for b in p["blocks"]]
    summary: dict[str, Any] = {
        "process_pairs": [pair_summary(pp, drop_first) for pp in process_pairs],
        "resume_cost": dict(zip(labels, costs, strict=True)),
        "first_step_dropped": drop_first,
        "block_steps": [pp["block_steps"] for pp in process_pairs],
        "discarded_block_pairs": sum(pp["discarded"] for pp in process_pairs),
        "too_disturbed": sum(pp["too_disturbed"] for pp in process_pairs),
        "failed": sum(bool(pp["failed"]) for pp in process_pairs),
        "parked_cpu_s_max": max((abs(p["cpu_s"]) for p in parked), default=0.0),
        "parked_context_switches_max": max((abs(p["context_switches"]) for p in parked),
                                           default=0),
        "disturbance_limit": lockstep.disturbance_limit,
        # each arm's intra-op threads as its workers read them back
        "threads": [sorted({job["threads"][0] for pp in process_pairs
                            if (job := (pp.get("jobs") or [None, None])[k])})
                    for k in range(2)],
    }  # fmt: skip
    cost_text = ", ".join(
        f"{label} {c:+.2%}" if c is not None else f"{label} -"
        for label, c in zip(labels, costs, strict=True)
    )
    threads = "/".join(",".join(map(str, t)) or "-" for t in summary["threads"])
    summary["note"] = (
        f"lockstep: {len(process_pairs)} process pairs, intra-op threads {threads}, blocks of"
        f" {', '.join(str(n) for n in summary['block_steps'])} steps;"
        f" {summary['discarded_block_pairs']} block pairs discarded as disturbed (limit"
        f" {lockstep.disturbance_limit:.0%} of the CPUs), {summary['too_disturbed']} process"
        f" pairs too disturbed, {summary['failed']} failed; parked CPU at most"
        f" {summary['parked_cpu_s_max'] * 1000:.0f} ms and"
        f" {summary['parked_context_switches_max']} context switches per block; the first step"
        f" after a resume costs (median share of a block) {cost_text}: "
        + ("left out of every block" if drop_first else "kept")
        + "."
    )
    return summary


def speed_line(
    question: str,
    labels: Sequence[str],
    process_pairs: list[dict],
    summary: dict,
    level: float,
    extra: dict | None = None,
) -> Line | None:
    """The verdict line of lockstep process pairs: none when a worker failed (a failure is the
    arm's own result, as a failed job is in the sequential bench) or no pair is left; a pair
    too disturbed to measure is left out and the line says so."""
    if summary["failed"]:
        return None
    complete = [
        s
        for pp, s in zip(process_pairs, summary["process_pairs"], strict=True)
        if s is not None and not pp["too_disturbed"]
    ]
    if not complete:
        return None
    detail = "process pairs: " + "; ".join(
        f"{s['ratio']:.3f} +- {s['log_se'] or 0:.3f} (log SE, {s['block_pairs']} block pairs)"
        for s in complete
    )
    detail += f"; {summary['discarded_block_pairs']} block pairs discarded as disturbed and redone"
    if summary["too_disturbed"]:
        detail += f"; {summary['too_disturbed']} more too disturbed to measure, left out"
    first, second = labels
    return Line(question, first, second, lockstep_estimate(complete, level),
                higher_is_better=True, detail=detail, extra=extra or {})  # fmt: skip


def _row(
    model: str,
    mode: str,
    precision: str,
    options: BenchOptions,
    process_pairs: list[dict],
    lockstep: LockstepOptions,
) -> tuple[dict, Line | None, str]:
    summary = speed_summary(options.frameworks, process_pairs, lockstep)
    drop_first = summary["first_step_dropped"]
    runs: dict[str, list[dict]] = {fw: [] for fw in options.frameworks}
    for pp, s in zip(process_pairs, summary["process_pairs"], strict=True):
        state = ("failed" if pp["failed"] else "too disturbed" if pp["too_disturbed"]
                 else "succeeded")  # fmt: skip
        for k, fw in enumerate(options.frameworks):
            job = pp["jobs"][k] or {}
            warm = pp["warmup"][k]
            runs[fw].append({
                "job": job.get("job", ""), "state": state, "error": pp["failed"] or "",
                "samples_per_second": s["rates"][k] if s else 0.0,
                "unit": job.get("unit", "samples"),
                "windows": [block_rate(b, drop_first) for p in valid_pairs(pp)
                            for kk, b in zip(p["order"], p["blocks"], strict=True) if kk == k],
                "warmup_seconds": warm["seconds"] if warm else 0.0,
                "baseline_rss_bytes": job.get("baseline_rss_bytes", 0),
                "peak_rss_bytes": job.get("peak_rss_bytes", 0), "peak_gpu_bytes": 0,
                "data_peak_rss_bytes": job.get("data_peak_rss_bytes", 0),
                "precision": job.get("precision", precision), "device": job.get("device", ""),
                "framework_version": job.get("framework_version", ""),
                "compilation": job.get("compilation", ""), "layout": job.get("layout", ""),
            })  # fmt: skip
    row: dict[str, Any] = {
        "model": model, "mode": mode, "precision": precision, "unit": unit_of(model),
        "runs": runs, "published": PUBLISHED.get(model), "lockstep": process_pairs,
        "summary": summary,
    }  # fmt: skip
    line = speed_line(
        f"{model} {mode} {precision}: steady training throughput (lockstep)",
        options.frameworks, process_pairs, summary, options.level,
        {"model": model, "mode": mode, "precision": precision},
    )  # fmt: skip
    note = f"{model} {mode} {precision}, {summary['note']}"
    if line is None:
        note += " No verdict: a worker failed, or no process pair was left to measure."
    return row, line, note


# Beside compare's repeats.


def speed_spec(spec: tpb.JobSpec, framework: str, seed: int) -> tpb.JobSpec:
    """A compare job as a lockstep arm: the same model, data and settings, for speed only."""
    out = tpb.JobSpec()
    out.CopyFrom(spec)
    out.framework = framework
    out.seed = seed
    out.epochs = 10_000  # longer than any run needs: the coordinator ends it
    out.skip_export = True
    out.ClearField("target_accuracy")
    return out


def another_pair_fits(durations: Sequence[float], now: float, deadline: float,
                      min_pairs: int = FILL_MIN_PAIRS) -> bool:  # fmt: skip
    """Whether to start another lockstep pair when they fill a run's time: always below
    `min_pairs`, else only when one more, as long as the last one took, ends by `deadline`.

    The count then follows how long pairs take, never what they measured, and the t interval
    over the pairs keeps its coverage (simulated in tests/test_verdict_simulations.py, with pair
    times that lengthen as one arm slows)."""
    if len(durations) < min_pairs:
        return True
    return now + durations[-1] <= deadline


SPEED_QUESTION = "faster to train, in lockstep (steady samples/s)"
SEQUENTIAL_SPEED_QUESTION = "faster to train (steady samples/s)"  # compare_lines.training_lines


def lockstep_decides_speed(pairs: int, frameworks: Sequence[str], model: str) -> bool:
    """Whether compare's lockstep pairs, added until decided, will decide training speed: they
    are asked for and can run here."""
    return pairs > 0 and unavailable(frameworks, [model]) is None


def set_aside_sequential_speed(lines: Sequence[Line]) -> list[Line]:
    """compare's lines with the sequential repeats' speed line set aside: lockstep pairs decide
    that question, and the repeats (minutes apart on a shared machine) rarely could."""
    return [set_aside(x) if x.question == SEQUENTIAL_SPEED_QUESTION else x for x in lines]


def compare_speed_pairs(
    settings: Settings,
    frameworks: Sequence[str],
    labels: Sequence[str],
    spec: tpb.JobSpec,
    seeds: Sequence[tuple[int, int]],
    level: float,
    lockstep: LockstepOptions | None = None,
    progress: Callable[[str], None] = print,
    until_decided_with: Sequence[Line] | None = None,
    budget_s: float | None = None,
    known_peaks: Sequence[int] = (),
    fill_until: float | None = None,
) -> tuple[dict, list[Line]]:
    """`compare --lockstep-pairs`: training speed in lockstep process pairs, one per seed pair,
    beside the accuracy repeats; its record for results.json and its verdict line (none where
    lockstep cannot run here: the record says why).

    With `until_decided_with` (the report's other lines, already stopped), process pairs are
    added until the speed line is decided, within `budget_s` and at most len(seeds) of them,
    each look judging every line by its anytime-valid test (sequential.py); the record then
    holds the stopping record under "stopping". `known_peaks`, each arm's peak memory in an
    earlier job of the same model, lets the first pair start both workers at once.

    With `fill_until` (a time.monotonic() deadline) instead, pairs are added while another fits
    before it (another_pair_fits), at least FILL_MIN_PAIRS and at most len(seeds)."""
    lockstep = lockstep or LockstepOptions()
    reason = unavailable(frameworks, [spec.model])
    if reason is not None:
        progress(f"lockstep: {reason}; no lockstep speed pairs")
        return {"unavailable": reason}, []
    warmup = spec.warmup_steps if spec.HasField("warmup_steps") else DEFAULT_WARMUP_STEPS
    process_pairs: list[dict] = []
    durations: list[float] = []
    planned = len(seeds)

    def add_pair() -> None:
        began = time.monotonic()
        i = len(process_pairs)
        starters = [
            starter(settings, fw, speed_spec(spec, fw, seed), label, _threads(lockstep, k))
            for k, (fw, seed, label) in enumerate(zip(frameworks, seeds[i], labels, strict=True))
        ]
        pp = run_process_pair(
            starters,
            i % 2,
            seeds[i][0],
            lockstep,
            warmup,
            together=fit_together(process_pairs[-1] if i else None, known_peaks),
        )
        process_pairs.append(pp)
        durations.append(time.monotonic() - began)
        total = (f"{planned}" if until_decided_with is None and fill_until is None
                 else f"at most {planned}")  # fmt: skip
        progress(f"lockstep speed, process pair {i + 1} ({total}): "
                 + _pair_line(pp, labels[0], labels[1]))  # fmt: skip

    def line_now() -> Line | None:
        summary = speed_summary(labels, process_pairs, lockstep)
        return speed_line(SPEED_QUESTION, labels, process_pairs, summary, level)

    stopping = None
    try:
        if until_decided_with is None and fill_until is not None:
            while len(process_pairs) < planned and another_pair_fits(
                durations, time.monotonic(), fill_until
            ):
                add_pair()
        elif until_decided_with is None:
            for _ in seeds:
                add_pair()
        else:
            others = list(until_decided_with)

            def lines_now() -> list[Line]:
                line = line_now()
                return others + ([line] if line is not None else [])

            stopping = until_decided(add_pair, lines_now, budget_s, planned, level,
                                     progress=progress, questions={SPEED_QUESTION})  # fmt: skip
            progress(f"lockstep speed: {describe_stopping(stopping)}")
    except LockstepUnavailable as exc:
        progress(f"lockstep: {exc}; no lockstep speed pairs")
        return {"unavailable": str(exc), "process_pairs": process_pairs}, []
    summary = speed_summary(labels, process_pairs, lockstep)
    line = speed_line(SPEED_QUESTION, labels, process_pairs, summary, level)
    record = {"options": lockstep.__dict__, "process_pairs": process_pairs, "summary": summary}
    if stopping is not None:
        record["stopping"] = stopping
        summary["note"] += " " + describe_stopping(stopping) + "."
    if fill_until is not None:
        record["filled"] = {"pairs": len(process_pairs), "min_pairs": FILL_MIN_PAIRS,
                            "max_pairs": planned}  # fmt: skip
        summary["note"] += (
            f" The pairs filled the run's time: {len(process_pairs)} (at least {FILL_MIN_PAIRS},"
            f" at most {planned}), each started only while it could end in time."
        )
    return record, [line] if line else []
