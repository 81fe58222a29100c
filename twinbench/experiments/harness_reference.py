"""`bench training --reference bare`: the harness timed against a bare loop of the same model.

For each framework, each repeat is a lockstep process pair (twinbench.experiments.lockstep_pairs)
whose arms are that framework's job worker (the harness: `python -m twinbench.training.worker`,
as a trainer runs it) and a bare loop (twinbench.experiments.bare_loop: what a user would write,
the same CPU set, threads, environment and step definition). They take turns in short blocks,
the idle one stopped, so drift lands on both. The harness's cost is 1 - (harness rate / bare
rate), with the interval of the lockstep estimate over process pairs (the unit). What else of
the harness runs while the bare loop trains counts against the harness: the parked job worker's
CPU during each bare block (recorded per block, about 0) is added to that block's time. No
service runs beside a lockstep pair; a trainer's own idle CPU is not in the figure, and the
report says so.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.experiments.bench_training import BenchOptions, unit_of
from twinbench.experiments.lockstep import (
    lockstep_spec,
    pair_summary,
    speed_line,
    speed_summary,
    start_arm,
)
from twinbench.experiments.lockstep_pairs import (
    ArmProcess,
    LockstepOptions,
    fit_together,
    run_process_pair,
)
from twinbench.experiments.preflight import preflight, warn
from twinbench.experiments.report_kit import environment
from twinbench.experiments.verdicts import decide
from twinbench.jobs.request import resolve_spec

HARNESS, BARE = "harness", "bare loop"
COST_LIMIT = 0.05  # the figure is "within +-5%" when its interval's half-width is at most this
# Process pairs per framework and mode by default. The harness and a bare loop of one framework
# answer the host's load alike, yet their ratio still moved by about 0.04 in log from pair to
# pair here (LeNet-5: 0.861, 0.904, 0.827), so 3 pairs (t = 4.30) gave half-widths of 9 to 10
# points, and 6 (t = 2.57) bring them near 4.
REFERENCE_PAIRS = 6


def start_bare(settings: Settings, framework: str, spec: tpb.JobSpec) -> ArmProcess:
    """The bare loop as a lockstep arm, with the job worker's environment."""
    job = tpb.Job(id=f"bare-{framework}-{uuid.uuid4().hex[:12]}", spec=resolve_spec(spec),
                  state=tpb.RUNNING, created_at=time.time())  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-m", "twinbench.experiments.bare_loop", "--framework", framework]
    return ArmProcess(BARE, command, job, env, settings.logs / "lockstep" / f"{job.id}.log")


def charged(process_pair: dict) -> dict:
    """The pair with the harness's CPU during each bare block added to that block's time: what
    the harness took from the machine while the reference trained."""
    out = copy.deepcopy(process_pair)
    for pair in out["pairs"]:
        for k, block in zip(pair["order"], pair["blocks"], strict=True):
            if k == 1:
                block["harness_cpu_s"] = max(0.0, block["parked"]["cpu_s"])
                block["seconds"] += block["harness_cpu_s"]
    return out


def cost_of(verdict: dict) -> dict:
    """The harness's cost from the line harness / bare: 1 - ratio, its interval reversed."""
    low, high = verdict["interval"]
    cost = 1 - verdict["ratio"]
    out = {"cost": cost, "low": 1 - high if high is not None else -math.inf, "high": 1 - low}
    half = (out["high"] - out["low"]) / 2
    out["within"] = half
    out["within_limit"] = half <= COST_LIMIT
    return out


def run_reference(
    settings: Settings,
    options: BenchOptions,
    lockstep: LockstepOptions,
    progress: Callable[[str], None] = print,
) -> dict:
    """Per model, mode and framework: `options.repeats` process pairs of the job worker and the
    bare loop; rows with the harness's cost and its interval."""
    checked = preflight()
    warn(checked)
    rows, lines, notes = [], [], []
    for model in options.models:
        for mode in options.modes:
            for framework in dict.fromkeys(options.frameworks):  # each once
                process_pairs: list[dict] = []
                for repeat in range(options.repeats):
                    spec = lockstep_spec(options, model, framework, mode, repeat, "fp32")
                    starters = [
                        lambda spec=spec, fw=framework: start_arm(settings, fw, spec, HARNESS),
                        lambda spec=spec, fw=framework: start_bare(settings, fw, spec),
                    ]
                    together = fit_together(process_pairs[-1] if repeat else None)
                    pp = run_process_pair(starters, repeat % 2, repeat, lockstep,
                                          options.warmup_steps, together=together)  # fmt: skip
                    process_pairs.append(charged(pp))
                    progress(f"{model} {mode} {framework}, process pair {repeat + 1}: "
                             + _pair_text(pp))  # fmt: skip
                summary = speed_summary((HARNESS, BARE), process_pairs, lockstep)
                question = f"{model} {mode} {framework}: harness over a bare loop (lockstep)"
                line = speed_line(question, (HARNESS, BARE), process_pairs, summary,
                                  options.level, {"model": model, "mode": mode,
                                                  "framework": framework})  # fmt: skip
                row: dict[str, Any] = {"model": model, "mode": mode, "framework": framework,
                                       "unit": unit_of(model), "lockstep": process_pairs,
                                       "summary": summary}  # fmt: skip
                rows.append(row)
                notes.append(f"{model} {mode} {framework}, {summary['note']}")
                if line is not None:
                    lines.append(line)
    # Each framework's cost is its own question, read on its own: a margin-free estimate with an
    # interval, so no winner is asked of it; the lines are still decided together (Holm).
    verdicts = decide(lines, "", options.level) if lines else []
    for row in rows:
        verdict = next((v for v in verdicts if v.get("framework") == row["framework"]
                        and v["model"] == row["model"] and v["mode"] == row["mode"]), None)  # fmt: skip
        if verdict is not None:
            row["cost"] = cost_of(verdict)
            row["rates"] = _rates(row)
    return {
        "kind": "bench training --reference bare",
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment(),
        "options": {**options.__dict__, "lockstep": lockstep.__dict__, "reference": "bare"},
        "timing": "lockstep",
        "rows": rows,
        "verdicts": verdicts,
        "notes": notes,
        "preflight": checked,
    }


def _rates(row: dict) -> list[float]:
    """Harness and bare rates, the geometric mean over process pairs."""
    pairs = [s for s in row["summary"]["process_pairs"] if s is not None]
    return [math.exp(sum(math.log(s["rates"][k]) for s in pairs) / len(pairs)) for k in (0, 1)]


def _pair_text(pp: dict) -> str:
    if pp["failed"]:
        return f"failed: {pp['failed']}"
    valid = [p for p in pp["pairs"] if not p["discarded"]]
    text = f"{len(valid)} block pairs ({pp['discarded']} discarded)"
    summary = pair_summary(charged(pp), drop_first=False)
    if summary is not None:
        harness, bare = summary["rates"]
        text += f", harness {harness:,.0f} and bare {bare:,.0f} per s: {summary['ratio']:.3f}"
    return text


def describe_cost(row: dict) -> str:
    """One line: the harness's cost for a framework, with its interval and the rates."""
    head = f"{row['model']} {row['mode']} {row['framework']}"
    if "cost" not in row:
        return f"{head}: no figure (a worker failed or every pair was too disturbed)"
    c = row["cost"]
    harness, bare = row["rates"]
    high = f"{c['high']:+.1%}"
    return (
        f"{head}: harness cost {c['cost']:+.1%} [{c['low']:+.1%}, {high}] of the bare loop's"
        f" speed (harness {harness:,.0f}, bare {bare:,.0f} {row['unit']}/s;"
        f" {len(row['lockstep'])} process pairs; {'within' if c['within_limit'] else 'not within'}"
        f" +-{COST_LIMIT:.0%}: half-width {c['within']:.1%})"
    )


def report_text(results: dict) -> str:
    """The reference's report in Markdown."""
    lines = [
        "# bench training --reference bare",
        "",
        f"{results['created']}; {results['environment'].get('cpu', '')}",
        "",
        "The harness (a job worker, as a trainer runs it) timed in lockstep against a bare loop",
        "of the same model (same CPU set, threads, environment and step definition): cost = 1 -",
        "harness speed / bare speed, 95% interval over process pairs (docs/lockstep.md).",
        "",
        "| model | mode | framework | harness per s | bare per s | cost [95% interval] |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "cost" in row:
            c, (h, b) = row["cost"], row["rates"]
            lines.append(f"| {row['model']} | {row['mode']} | {row['framework']} | {h:,.0f} |"
                         f" {b:,.0f} | {c['cost']:+.1%} [{c['low']:+.1%}, {c['high']:+.1%}] |")  # fmt: skip
        else:
            lines.append(f"| {row['model']} | {row['mode']} | {row['framework']} | - | - | - |")
    lines += ["", *(f"- {note}" for note in results["notes"])]
    return "\n".join(lines) + "\n"
