"""The verdict lines of a comparison: training speed, accuracy, time to target, failed runs and
serving, each from the paired repeats of a pair of its arms (every pair, with three arms), all
decided together by twinbench.experiments.verdicts (one Holm family)."""

from __future__ import annotations

import os
import statistics

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.experiments.compare_plan import FORMAT_GROUPS, Arm, arm_pairs
from twinbench.experiments.report_kit import cpu_name
from twinbench.experiments.verdicts import (
    Line,
    accuracy_ratio,
    failed_runs,
    paired_ratio,
    paired_with_failures,
)
from twinbench.jobs.request import state_name


def hardware_of(arms: list[Arm]) -> str:
    """What the training ran on, for every verdict: CPU only, or the GPUs by name."""
    return describe_hardware({job.device for arm in arms for job in arm.jobs if job.device})


def describe_hardware(job_devices: set[str]) -> str:
    """The devices jobs reported, as a verdict states them (compare's and sweep's)."""
    devices = sorted(job_devices)
    cpu = f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    gpus = [d for d in devices if d != "cpu"]
    return f"GPU: {', '.join(gpus)}; host {cpu}" if gpus else f"CPU only: {cpu}"


def _pairs(arms: list[Arm]) -> list[tuple[tpb.Job, tpb.Job]]:
    """The repeats in which both arms' jobs succeeded."""
    first, second = arms
    return [
        (a, b)
        for a, b in zip(first.jobs, second.jobs, strict=False)
        if a.state == tpb.SUCCEEDED and b.state == tpb.SUCCEEDED
    ]


def training_lines(arms: list[Arm], settings: Settings, level: float) -> list[Line]:
    """Every pair of arms' training lines, pair after pair."""
    return [
        line
        for pair in arm_pairs(arms)
        for line in _pair_training_lines(list(pair), settings, level)
    ]


def _pair_training_lines(arms: list[Arm], settings: Settings, level: float) -> list[Line]:
    first, second = arms[0].label, arms[1].label
    # Jobs that failed are a result with a line of their own, beside the lines of the repeats
    # in which both arms' jobs finished.
    crashed = [
        (a.state != tpb.SUCCEEDED, b.state != tpb.SUCCEEDED)
        for a, b in zip(arms[0].jobs, arms[1].jobs, strict=False)
    ]
    failures: list[Line] = []
    if any(x or y for x, y in crashed):
        failures.append(
            Line(
                "finishes its training jobs (share of jobs that did not fail)",
                first,
                second,
                failed_runs([x for x, _ in crashed], [y for _, y in crashed], level),
                higher_is_better=True,
                detail="; ".join(
                    f"{j.id} {state_name(j.state)}: {j.error}"
                    for arm in arms
                    for j in arm.jobs
                    if j.state != tpb.SUCCEEDED
                ),
            )
        )
    pairs = [(a, b) for a, b in _pairs(arms) if a.steady_seconds and b.steady_seconds]
    if not pairs:
        return failures
    lines = [
        Line(
            "faster to train (steady samples/s)",
            first,
            second,
            paired_ratio(
                [a.steady_samples_per_second for a, _ in pairs],
                [b.steady_samples_per_second for _, b in pairs],
                [list(a.window_samples_per_second) for a, _ in pairs],
                [list(b.window_samples_per_second) for _, b in pairs],
                level=level,
            ),
            higher_is_better=True,
            detail=_range_detail(
                [a.steady_samples_per_second for a, _ in pairs],
                [b.steady_samples_per_second for _, b in pairs],
                "{:,.0f} samples/s",
            ),
        )
    ]
    labels = _test_labels(pairs[0][0], settings)
    with_predictions = [
        (a, b)
        for a, b in pairs
        if len(a.test_predictions) == len(labels) == len(b.test_predictions)
    ]
    if with_predictions:
        right_a = np.array([np.asarray(a.test_predictions) == labels for a, _ in with_predictions])
        right_b = np.array([np.asarray(b.test_predictions) == labels for _, b in with_predictions])
        lines.append(
            Line(
                "more accurate (test accuracy)",
                first,
                second,
                accuracy_ratio(right_a, right_b, level=level),
                higher_is_better=True,
                detail=_range_detail(
                    [a.test_accuracy for a, _ in with_predictions],
                    [b.test_accuracy for _, b in with_predictions],
                    "{:.4f}",
                ),
            )
        )
    spec = pairs[0][0].spec
    if spec.HasField("target_accuracy"):
        # Every repeat counts: a run that never reached the target is censored at its end (its
        # training time), a failed one is the worst; mixed pairs go to an exact sign test.
        everyone = list(zip(arms[0].jobs, arms[1].jobs, strict=False))
        reached = [(a, b) for a, b in everyone if a.target_epoch and b.target_epoch]
        question = f"faster to {spec.target_accuracy:g} validation accuracy (seconds, warm-up in)"
        note = f"reached by both in {len(reached)} of {len(everyone)} repeats" + "".join(
            f"; {arm.label} alone in {n}"
            for arm, n in (
                (arms[0], sum(bool(a.target_epoch and not b.target_epoch) for a, b in everyone)),
                (arms[1], sum(bool(b.target_epoch and not a.target_epoch) for a, b in everyone)),
            )
            if n
        )
        times = [(_to_target(a), _to_target(b)) for a, b in everyone]
        lines.append(
            Line(
                question,
                first,
                second,
                paired_with_failures(
                    [t for (t, _), _ in times],
                    [t for _, (t, _) in times],
                    [c for (_, c), _ in times],
                    [c for _, (_, c) in times],
                    level=level,
                ),
                higher_is_better=False,
                detail=note,
            )
        )
    return lines + failures


def _to_target(job: tpb.Job) -> tuple[float, bool]:
    """(seconds, censored): the time to the target; a run that never reached it at its end,
    censored; a failed run, the worst."""
    if job.state != tpb.SUCCEEDED:
        return float("inf"), False
    if job.target_epoch:
        return max(job.time_to_target_seconds, 1e-9), False
    return max(job.train_seconds, 1e-9), True


def _test_labels(job: tpb.Job, settings: Settings) -> np.ndarray:
    from twinbench.data.datasets import load_dataset
    from twinbench.jobs.request import job_model

    data = load_dataset(job.spec.dataset, job_model(job.spec), settings.data)
    return data.test.y


def _range_detail(first: list[float], second: list[float], fmt: str) -> str:
    def span(values: list[float]) -> str:
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(min(values))} to {fmt.format(max(values))}"

    return f"{span(first)} vs {span(second)}"


def serving_lines(arms: list[Arm], serving: list[dict], level: float) -> list[Line]:
    """Every pair of arms' serving lines; with three arms each pair was load-tested on its own
    and its records name the pair ("pair": [first, second])."""
    lines = []
    for first, second in arm_pairs(arms):
        labels = [first.label, second.label]
        own = [s for s in serving if s.get("pair", labels) == labels]
        lines += _pair_serving_lines([first, second], own, level)
    return lines


def _pair_serving_lines(arms: list[Arm], serving: list[dict], level: float) -> list[Line]:
    """Median latency per served format, first arm's exports over the second's.

    The paired unit is a pair of exports (one repeat's), not a round: rounds that served the
    same two exports again are averaged into their pair first, so a steady difference between
    two particular exports counts once, as one draw of the models a framework trains.
    """
    lines = []
    for kind, formats in FORMAT_GROUPS:
        pick = {
            s["arm"]: s for s in serving if s["format"] in formats and s["requests"] and s["rounds"]
        }
        a, b = pick.get(arms[0].label), pick.get(arms[1].label)
        if not (a and b):
            continue
        by_exports: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
            if ra["latency_ms"]["p50"] > 0 and rb["latency_ms"]["p50"] > 0:
                key = (ra.get("version", a["version"]), rb.get("version", b["version"]))
                by_exports.setdefault(key, []).append(
                    (ra["latency_ms"]["p50"], rb["latency_ms"]["p50"])
                )
        if not by_exports:
            continue
        pairs = [
            (
                statistics.geometric_mean(x for x, _ in rs),
                statistics.geometric_mean(y for _, y in rs),
            )
            for rs in by_exports.values()
        ]
        lines.append(
            Line(
                f"faster to serve, {kind} (p50 latency)",
                _versions_label(a, [va for va, _ in by_exports]),
                _versions_label(b, [vb for _, vb in by_exports]),
                paired_ratio([x for x, _ in pairs], [y for _, y in pairs], level=level),
                higher_is_better=False,
                detail=_range_detail([x for x, _ in pairs], [y for _, y in pairs], "{:.2f} ms"),
            )
        )
    return lines


def _versions_label(served: dict, versions: list[str]) -> str:
    return f"{served['model_name']} v{','.join(versions)}"
