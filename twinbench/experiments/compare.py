"""`twinbench compare`: two or three arms trained in repeats, their exports served and load-tested, one report.

The arms are two frameworks (an A/B run), one framework twice (an A/A run, which shows this
machine's noise floor and must name no winner), or three (torch,tf,jax: every pair of arms is
compared, and all their lines are one Holm family). Each repeat gives both arms a new seed (the
same one in an A/B run; in an A/A run each arm its own, since one seed twice gives bit-identical
runs that prove nothing). Jobs run one at a time, in the order A B B A A B ..., so a drift of
the machine over the run weighs on both arms alike. Serving is measured in rounds that alternate
the order of the served models the same way, and each round serves another repeat's exports:
two exports of one model, even loaded in one process, can serve at a steadily different pace
(an A/A run once measured 1.26x in both of two rounds on the same two versions), so rounds on the
same two exports are not independent, and the serving verdict pairs repeats' exports, as the
accuracy verdict resamples seeds. Every verdict comes from `twinbench.experiments.verdicts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.client.console import table, watch_all
from twinbench.client.inference import infer_sample
from twinbench.client.stack import LocalStack, services
from twinbench.config import Settings
from twinbench.experiments.compare_lines import hardware_of, serving_lines, training_lines
from twinbench.experiments.compare_plan import (
    LOCAL_LOCKSTEP_BLOCK_PAIRS,
    Arm,
    CompareOptions,
    arm_pairs,
    lockstep_threads,
    plan_arms,
    run_order,
)
from twinbench.experiments.lockstep import lockstep_decides_speed, set_aside_sequential_speed
from twinbench.experiments.preflight import preflight, warn
from twinbench.experiments.preflight import summary as preflight_summary
from twinbench.experiments.report import write_report
from twinbench.experiments.results import build_results
from twinbench.experiments.sequential import anytime_lines, describe_stopping, until_decided
from twinbench.experiments.verdicts import (
    decide,
    describe,
    family_note,
)
from twinbench.jobs.hardware import training_cpus
from twinbench.jobs.request import state_name
from twinbench.rpc.channel import Client
from twinbench.serving.tensors import infer_request


def run_compare(
    settings: Settings, gateway: str, base_spec: tpb.JobSpec, options: CompareOptions
) -> int:
    began = time.monotonic()
    checked = preflight()  # what makes this machine noisy now: recorded, warned about
    warn(checked)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report_dir = options.reports.resolve() / f"{stamp}-{base_spec.model}"
    planned = options.max_pairs if options.until_decided else options.repeats
    arms = plan_arms(options.frameworks, planned, base_spec.seed)
    stopping: dict | None = None
    serving: list[dict] = []
    serving_cost: dict | None = None
    predictions: dict[str, np.ndarray] = {}
    tuned: dict[str, dict] = {}
    with services(settings, gateway, options.frameworks) as (address, stack):
        started_here = stack is not None
        if options.tuned_batching and stack is None:
            raise SystemExit(
                "--tuned-batching restarts the gateway with each export's batching: it needs"
                " the services compare starts itself (no --gateway)"
            )
        lockstep_pairs = options.lockstep_pairs
        # Unless told how many, lockstep pairs fill the run up to its time (compare_plan.py).
        fill = lockstep_pairs is None and started_here and len(arms) == 2
        if lockstep_pairs is None:
            # Lockstep runs two arms side by side; three arms keep their sequential speed lines.
            lockstep_pairs = options.max_pairs if fill else 0
        # Until decided with lockstep pairs, those pairs decide training speed (lockstep.md).
        speed_in_lockstep = options.until_decided and lockstep_decides_speed(
            lockstep_pairs, options.frameworks, base_spec.model
        )
        client = Client(address, settings)
        if options.until_decided:
            stopping = train_until_decided(
                client, arms, base_spec, settings, options, speed_in_lockstep
            )
            ran = stopping["pairs"]  # serving: at least one round per pair of exports
            options = dataclasses.replace(options, repeats=ran, rounds=max(options.rounds, ran))
            for arm in arms:
                del arm.seeds[options.repeats :]
        else:
            train_arms(client, arms, base_spec, options.repeats, export_all=options.users > 0)
        served = served_exports(arms)
        for _, export in served:  # one inference to each export through the gateway
            predictions[_served_label(export)] = infer_sample(
                client, export.model_name, options.sample, export.version
            )
        client.close()
        if options.tuned_batching and stack is not None and served:
            tuned = use_tuned_batching(stack, [e.model_name for _, e in served])
        if options.users > 0 and served:
            serving = load_test_pairs(address, settings, arms, options, report_dir, started_here)
        if stack and options.bench_seconds > 0 and served:
            serving_cost = serving_cost_of(stack, [e for _, e in served], options.bench_seconds)
    lines = training_lines(arms, settings, options.level)
    lines += serving_lines(arms, serving, options.level)
    speed: dict | None = None
    if lockstep_pairs:  # after the services stopped: nothing else of ours runs
        from twinbench.experiments.lockstep import compare_speed_pairs
        from twinbench.experiments.lockstep_pairs import LockstepOptions

        pairs = plan_arms(options.frameworks, options.max_pairs if speed_in_lockstep
                          else lockstep_pairs, base_spec.seed)  # fmt: skip
        others = set_aside_sequential_speed(lines) if speed_in_lockstep else None
        threads = lockstep_threads(options.lockstep_threads, settings.train_threads,
                                   len(training_cpus(settings)))  # fmt: skip
        if threads is not None and options.lockstep_threads is None:
            print(f"lockstep speed: {threads[0]} intra-op thread(s) per arm, one CPU fewer than"
                  " the set has, so that the host's own work does not stall a step")  # fmt: skip
        spent = time.monotonic() - began
        speed, speed_lines = compare_speed_pairs(
            settings, options.frameworks, [a.label for a in arms], base_spec,
            list(zip(pairs[0].seeds, pairs[1].seeds, strict=True)), options.level,
            LockstepOptions(block_pairs=LOCAL_LOCKSTEP_BLOCK_PAIRS, arm_threads=threads,
                            disturbance_limit=options.disturbance_limit),
            until_decided_with=others,
            budget_s=max(options.budget_s - spent, 0.0) if options.budget_s else None,
            known_peaks=[max((j.peak_rss_bytes for j in arm.jobs), default=0) for arm in arms],
            fill_until=began + options.lockstep_until_s if fill and others is None else None,
        )  # fmt: skip
        if others is not None and speed_lines:  # else the sequential line stays the speed line
            lines = others
        lines += speed_lines
    if stopping is not None:
        lines = anytime_lines(lines, options.level)
    verdict = decide(lines, hardware_of(arms), options.level)
    load = {
        "users": max(options.users, 1),
        "duration": options.duration,
        "rounds": options.rounds,
        "batch_size": options.serving_batch_size,
        "host": address,
        **load_mode(options),
        **({"batching": tuned} if options.tuned_batching else {}),
    }
    design = {
        "frameworks": list(options.frameworks),
        "a_a": len(set(options.frameworks)) == 1,
        "pairs": [[a.label, b.label] for a, b in arm_pairs(arms)],
        "repeats": options.repeats,
        "order": [arms[k].label for _, k in run_order(options.repeats, len(arms))],
        "seeds": {arm.label: arm.seeds for arm in arms},
        "hardware": hardware_of(arms),
        "level": options.level,
    }
    results = build_results(
        {arm.label: (arm.framework, arm.jobs) for arm in arms},
        serving, load, options.command, verdict, design, serving_cost,
    )  # fmt: skip
    results["preflight"] = checked
    if stopping is not None:
        results["stopping"] = stopping
        results["environment"]["stopping"] = describe_stopping(stopping)
        print(describe_stopping(stopping))
    results["environment"]["preflight"] = preflight_summary(checked)  # a row of the report
    if speed is not None:
        results["lockstep"] = speed
        # A row of the report's design table: what the pairs discarded, or why there were none.
        results["environment"]["lockstep"] = speed.get("summary", {}).get(
            "note", f"not run: {speed.get('unavailable')}"
        )
    write_report(report_dir, results)
    print_summary(arms, serving, verdict, predictions, options.sample)
    print(f"report: {report_dir / 'report.html'}")
    finished = [job for arm in arms for job in arm.jobs]
    for job in finished:
        if job.state != tpb.SUCCEEDED:
            print(f"{job.id} {state_name(job.state)}: {job.error}", file=sys.stderr)
    return 0 if all(j.state == tpb.SUCCEEDED for j in finished) else 1


def train_until_decided(
    client: Client,
    arms: list[Arm],
    base_spec: tpb.JobSpec,
    settings: Settings,
    options: CompareOptions,
    speed_in_lockstep: bool = False,
) -> dict:
    """Pairs of repeats (a new seed each, A B then B A) until every training line is decided,
    the budget is spent or max_pairs ran; every job exports (the serving rounds pair them).
    With `speed_in_lockstep`, lockstep pairs decide training speed afterwards: the repeats do
    not wait on their own speed line and take half of the budget."""
    done = [0]

    def add_pair() -> None:
        train_arms(client, arms, base_spec, done[0] + 1, export_all=True, start=done[0])
        done[0] += 1

    def lines_now() -> list:
        lines = training_lines(arms, settings, options.level)
        return set_aside_sequential_speed(lines) if speed_in_lockstep else lines

    budget = options.budget_s / 2 if options.budget_s and speed_in_lockstep else options.budget_s
    return until_decided(
        add_pair, lines_now, budget, options.max_pairs, options.level, progress=print,
    )  # fmt: skip


def train_arms(
    client: Client,
    arms: list[Arm],
    base_spec: tpb.JobSpec,
    repeats: int,
    export_all: bool = False,
    start: int = 0,
) -> None:
    """Every job, one at a time (run together, they would share the CPU and skew the timings).

    With `export_all`, every repeat exports (the serving rounds pair them); else only the last.
    """
    for repeat, k in run_order(repeats, len(arms))[len(arms) * start :]:  # from repeat `start` on
        arm = arms[k]
        spec = tpb.JobSpec()
        spec.CopyFrom(base_spec)
        spec.framework = arm.framework
        spec.seed = arm.seeds[repeat]
        spec.skip_export = not export_all and repeat < repeats - 1
        print(f"repeat {repeat + 1}/{repeats}: {arm.label}, seed {spec.seed}")
        (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
        try:
            (done,) = watch_all(client, [job])
        except KeyboardInterrupt:
            with contextlib.suppress(grpc.RpcError):  # leave no job training unwatched
                client.trainer.CancelJob(tpb.CancelJobRequest(job_id=job.id), timeout=5)
            raise
        arm.jobs.append(done)


def served_exports(arms: list[Arm]) -> list[tuple[Arm, tpb.ModelExport]]:
    """The last repeat's exports: the ones a user would serve, asked once each for a prediction."""
    out = []
    for arm in arms:
        last = arm.jobs[-1] if arm.jobs else None
        if last is not None and last.state == tpb.SUCCEEDED:
            out += [(arm, e) for e in last.exports]
    return out


def _served_label(export: tpb.ModelExport) -> str:
    return f"{export.model_name} v{export.version}"


def load_test_pairs(
    address: str,
    settings: Settings,
    arms: list[Arm],
    options: CompareOptions,
    report_dir: Path,
    services_ours: bool,
) -> list[dict]:
    """Two arms: their load test. Three: each pair of arms load-tested on its own, as two arms
    are, its records naming the pair (an export then appears once per pair it is in)."""
    if len(arms) == 2:
        return load_test(address, settings, arms, options, report_dir, services_ours)
    records = []
    for first, second in arm_pairs(arms):
        print(f"load test of the pair {first.label}, {second.label}")
        pair = [first, second]
        for record in load_test(address, settings, pair, options, report_dir, services_ours):
            records.append({**record, "pair": [first.label, second.label]})
    return records


# --- serving ---


def load_test(
    address: str,
    settings: Settings,
    arms: list[Arm],
    options: CompareOptions,
    report_dir: Path,
    services_ours: bool = True,
) -> list[dict]:
    """Each format's two exports loaded in alternating short blocks, round r on repeat r's
    exports (twinbench.experiments.serving_rounds); disturbed block pairs are redone only when
    the services are this run's own (else their CPU cannot be told from a neighbour's)."""
    from twinbench.experiments.serving_rounds import alternating_load_test

    report_dir.mkdir(parents=True, exist_ok=True)
    if settings.tls_ca or (settings.token and not settings.inference_open):
        # The load generator speaks plain gRPC without a token; Locust's whole rounds do both.
        from twinbench.experiments.serving_rounds import whole_rounds

        return whole_rounds(address, settings, arms, options, report_dir)
    return alternating_load_test(address, settings, arms, options, report_dir,
                                 services_ours=services_ours)  # fmt: skip


def use_tuned_batching(stack: LocalStack, names: list[str]) -> dict[str, dict]:
    """The gateway restarted with each served model's tuned batching (its config.pbtxt, from
    `bench serving --scenario tune`); models without one keep the gateway's settings."""
    from twinbench.experiments.batching_tune import batch_models_setting

    text, found = batch_models_setting(stack.settings.model_repository, names)
    untuned = sorted(set(names) - set(found))
    print(f"tuned batching: {text or 'none found'}"
          + (f"; the gateway's settings for {', '.join(untuned)}" if untuned else ""))  # fmt: skip
    stack.extra_env["TWINBENCH_BATCH_MODELS"] = text
    stack.restart("gateway")
    return found


def load_mode(options: CompareOptions) -> dict:
    """The serving blocks' load for results.json: an open loop's rate, arrivals and bound (none
    for the closed loop), and whether each export was served with its tuned batching."""
    from twinbench.experiments.serving_rounds import OPEN_LOOP_BOUND

    out: dict = {"tuned_batching": options.tuned_batching}
    if options.serving_rate:
        out.update(rate=options.serving_rate, arrivals=options.arrivals,
                   max_in_flight=OPEN_LOOP_BOUND)  # fmt: skip
    return out


def serving_cost_of(stack: LocalStack, exports: list, seconds: float) -> dict:
    """The serving benchmark's paths b-d on compare's own stack, for the report."""
    from twinbench.data.datasets import load_dataset
    from twinbench.experiments.bench_serving import bench_stack, ratios, setup, summary
    from twinbench.experiments.serving_rounds import WARM_S

    print(f"serving cost: the trainers directly, the gateway, with batching ({seconds:g} s each)")
    how = setup(stack.settings)
    image = load_dataset("mnist-5k").test.x[:1]
    requests = {
        e.model_name: infer_request(e.model_name, image, version=e.version).SerializeToString()
        for e in exports
    }
    # Every export has served the load test already: a new connection's first calls are all
    # that is cold, and the serving blocks' quarter second of them suffices here too.
    figures = bench_stack(stack, requests, (1, 32), seconds, report=lambda f: None,
                          warm_up_s=WARM_S)  # fmt: skip
    for line in summary(figures):
        print(line)
    from twinbench.experiments.cold_start import cold_starts_of

    versions = [(e.model_name, int(e.version)) for e in exports]
    return {
        "figures": [dataclasses.asdict(f) for f in figures],
        "summary": ratios(figures),
        "cold_start": cold_starts_of(stack.settings.model_repository, versions, repeats=2),
        "note": "load from one process beside the services, sharing their CPUs"
        " (twinbench bench serving gives the load a CPU of its own)",
        **how,
    }


# --- the terminal ---


def print_summary(
    arms: list[Arm],
    serving: list[dict],
    verdict: list[dict],
    predictions: dict[str, np.ndarray],
    sample: int,
) -> None:
    rows = []
    for arm in arms:
        done = [j for j in arm.jobs if j.state == tpb.SUCCEEDED]
        if not done:
            rows.append([arm.label, f"0/{len(arm.jobs)}", "-", "-", "-"])
            continue
        speeds = [j.steady_samples_per_second for j in done]
        accs = [j.test_accuracy for j in done]
        threads = done[-1].threads
        rows.append(
            [
                arm.label,
                f"{len(done)}/{len(arm.jobs)}",
                _span(accs, "{:.4f}"),
                _span(speeds, "{:,.0f}"),
                f"{threads.intra_op}/{threads.inter_op}",
            ]
        )
    print(
        table(
            ["arm", "repeats ok", "test accuracy", "steady samples/s", "threads intra/inter"],
            rows,
        )
    )
    if predictions:
        print(
            table(
                ["served model", f"sample {sample} ->"],
                [[name, f"class {int(p.argmax())} ({_softmax(p).max():.3f})"]
                 for name, p in predictions.items()],
            )
        )  # fmt: skip
    if serving:
        print(
            table(
                ["served model", "rounds", "req/s", "p50 ms", "p99 ms", "failures"],
                [
                    [f"{s['model_name']} v{s['version']}", str(len(s["rounds"])),
                     f"{s['requests_per_second']:.1f}", f"{s['latency_ms']['p50']:.2f}",
                     f"{s['latency_ms']['p99']:.2f}", str(s["failures"])]
                    for s in serving
                ],
            )
        )  # fmt: skip
    if verdict:
        print(f"verdicts ({verdict[0]['hardware']}; {family_note(verdict)}):")
    for v in verdict:
        print("  " + describe(v))


def _span(values: list[float], fmt: str) -> str:
    mean = fmt.format(sum(values) / len(values))
    if len(values) == 1:
        return mean
    return f"{mean} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()
