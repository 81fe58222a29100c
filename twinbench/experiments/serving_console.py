"""`twinbench bench serving` on the console: its options beyond the closed loop's, and what it
prints for each scenario (the sweep of paths a-e, or the server scenario), with each export's
cold start and the services' CPU per 1,000 requests."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from twinbench.config import Settings


def add_serving_options(serving: argparse.ArgumentParser) -> None:
    """The open loop's, the server scenario's and the cold start's options of `bench serving`."""
    serving.add_argument(
        "--rate",
        help="requests per second, comma-separated: paths b-d in an open loop at each rate"
        " (requests due on a schedule, each timed from when it was due) instead of a closed"
        " loop at each concurrency",
    )
    serving.add_argument(
        "--arrivals",
        choices=("poisson", "constant"),
        default="poisson",
        help="the open loop's gaps between requests (default: %(default)s)",
    )
    serving.add_argument(
        "--max-in-flight",
        type=int,
        default=1024,
        help="the open loop's bound on requests in flight; one due while it is full fails"
        " (default: %(default)s)",
    )
    serving.add_argument(
        "--scenario",
        choices=("sweep", "server", "tune"),
        default="sweep",
        help="sweep: paths a-e at each concurrency or rate; server: per export and path, the"
        " highest Poisson rate with p99 under --p99-target-ms, searched --searches times, beside"
        " perf_analyzer's own search; tune: per export, the gateway's dynamic batching (a grid"
        " of --tune-rows x --tune-delays-us) with the highest such rate, written to the export's"
        " config.pbtxt (default: %(default)s)",
    )
    serving.add_argument(
        "--tune-rows",
        default="1,4,8,16",
        help="the tune scenario's most requests merged into one frame (default: %(default)s)",
    )
    serving.add_argument(
        "--tune-delays-us",
        default="0,500,2000",
        help="the tune scenario's queue delays, microseconds (default: %(default)s)",
    )
    serving.add_argument(
        "--tune-steps",
        type=int,
        default=6,
        help="the tune scenario's rate steps per export and setting, each --seconds long:"
        " every export's budget (default: %(default)s)",
    )
    serving.add_argument(
        "--reports",
        default="reports",
        help="the tune scenario's results.json goes in a folder of its own here"
        " (default: %(default)s)",
    )
    serving.add_argument(
        "--searches",
        type=int,
        default=3,
        help="the server scenario's searches per export and path (default: %(default)s)",
    )
    serving.add_argument(
        "--min-requests",
        type=int,
        default=1000,
        help="the server scenario's requests per rate step, for its p99 (default: %(default)s)",
    )
    serving.add_argument(
        "--cold-start-repeats",
        type=int,
        default=3,
        help="fresh processes per export measuring its load, memory, first request and"
        " requests until steady; 0: none (default: %(default)s)",
    )


def _range(values: list[float] | None, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(values[0])}-{fmt(values[1])}]" if values else ""


def cold_start_lines(cold: list[dict]) -> list[str]:
    """The cold-start table: each figure's median over the repeats and their range."""
    lines = [
        f"{'cold start':<26} {'load ms':>19} {'memory MB':>17} {'first request ms':>21}"
        f" {'requests until steady':>22} {'then p50 ms':>11}"
    ]
    for c in cold:

        def ms(x: float) -> str:
            return f"{x * 1000:.1f}"

        lines.append(
            f"{c['model']:<26} {ms(c['load_s']):>7} {_range(c['load_s_range'], ms):>11}"
            f" {c['memory_mb']:>5.1f} {_range(c['memory_mb_range'], '{:.1f}'.format):>11}"
            f" {c['first_ms']:>8.2f} {_range(c['first_ms_range'], '{:.2f}'.format):>12}"
            f" {c['until_steady']:>7.0f} {_range(c['until_steady_range'], '{:.0f}'.format):>14}"
            f" {c['steady_p50_ms']:>11.3f}"
        )
    return lines


def cold_starts(services, repeats: int) -> list[dict]:
    from twinbench.experiments.cold_start import measure_cold_start
    from twinbench.serving.repository import ModelRepository

    repository = ModelRepository(services.settings.model_repository)
    threads = services.settings.serving_threads or None
    return [
        measure_cold_start(
            services.settings.model_repository,
            name,
            repository.versions(name)[-1],
            repeats,
            threads,
        )  # fmt: skip
        for name in services.names
    ]


def print_figure(f) -> None:
    """One figure of the sweep, as it comes."""
    cpu = "" if f.client_cpu is None else f"{f.client_cpu:.0%}"
    load = f"{f.concurrency:>5}" if f.rate is None else f"{f.rate:>5,.0f}"
    server = "" if f.server_cpu_s_per_1k is None else f"{f.server_cpu_s_per_1k:.3f}"
    late = "" if f.rate is None else f"{f.late:>6,} {f.over_bound:>6,} {f.failures:>6,}"
    print(
        f"{f.path:<24} {f.model:<26} {load} {f.requests:>9,} {f.p50_ms:>8.3f}"
        f" {f.p99_ms:>8.3f} {f.rps:>9,.0f} {cpu:>10} {server:>12} {late}",
        flush=True,
    )


def server_cost_lines(figures) -> list[str]:
    """The services' CPU seconds per 1,000 requests per path and export: median and range over
    the rounds and loads measured."""
    import numpy as np

    groups: dict[tuple[str, str], list[float]] = {}
    for f in figures:
        if f.server_cpu_s_per_1k is not None:
            groups.setdefault((f.path, f.model), []).append(f.server_cpu_s_per_1k)
    return [
        f"{model}, {path}: the services' CPU {float(np.median(v)):.3f} s per 1,000 requests"
        f" [{min(v):.3f}-{max(v):.3f} over {len(v)} measurements]"
        for (path, model), v in sorted(groups.items())
    ]


def sweep(services, args: argparse.Namespace, use_perf_analyzer: bool) -> list[str]:
    from twinbench.experiments.bench_serving import capacity_lines, serving_figures, summary

    rates = tuple(float(r) for r in args.rate.split(",")) if args.rate else ()
    load = "rate" if rates else "conc"
    tail = "   late   over failed" if rates else ""
    print(
        f"{'path':<24} {'model':<26} {load:>5} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'req/s':>9} {'client cpu':>10} {'cpu s/1k req':>12}{tail}"
    )
    figures = serving_figures(
        services,
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
        seconds=args.seconds,
        rounds=args.rounds,
        report=print_figure,
        perf_analyzer=use_perf_analyzer,
        rates=rates,
        arrivals=args.arrivals,
        bound=args.max_in_flight,
    )
    return (
        summary(figures) + capacity_lines(figures, args.p99_target_ms) + server_cost_lines(figures)
    )


def server(services, args: argparse.Namespace, use_perf_analyzer: bool) -> list[str]:
    from twinbench.experiments.server_scenario import (
        perf_analyzer_search,
        run_server_scenario,
        summarize,
    )

    def progress(s) -> None:
        print(f"search {s.search + 1}: {s.model}, {s.path}: {s.max_rate:,.0f}/s"
              f" ({len(s.steps)} steps)", flush=True)  # fmt: skip

    print(
        f"server scenario: the highest Poisson rate with p99 under {args.p99_target_ms:g} ms,"
        f" {args.searches} searches per export and path, >= {args.min_requests:,} requests a step"
    )

    def step(path, model, s) -> None:
        p99 = "no answer" if s.p99_ms is None else f"p99 {s.p99_ms:.2f} ms"
        print(f"  {model}, {path}: {s.rate:,.0f}/s: {s.requests:,} requests, {p99},"
              f" {s.late:,} sent late, {s.over_bound:,} over the bound, {s.failures:,} failed,"
              f" client cpu"
              f" {s.client_cpu:.0%}: {'passed' if s.passed else 'failed'}", flush=True)  # fmt: skip

    searches = run_server_scenario(
        services.stack, services.requests(), args.p99_target_ms, args.searches,
        args.min_requests, services.client_cpus, progress, step,
    )  # fmt: skip
    rows = summarize(searches)
    theirs: dict[str, str] = {}
    for name in services.names if use_perf_analyzer else []:
        ours = max((r["high"] for r in rows if r["model"] == name), default=1000.0)
        try:
            found = perf_analyzer_search(
                services.stack.gateway_address, name, args.p99_target_ms, 100.0,
                max(4 * ours, 1000.0), services.client_cpus, args.min_requests,
            )  # fmt: skip
        except RuntimeError as exc:
            theirs[name] = "failed"
            print(f"perf_analyzer on {name}: {exc}")
            continue
        rate = found["max_rate"]
        theirs[name] = "none" if rate is None else f"{rate:,.0f}"
        delayed = ", ".join(found["delayed_requests"]) or "none reported"
        done = next((r["rps"] for r in found["rows"] if r["rate"] == rate), None)
        served = "" if done is None else f"; at {rate:,.0f}/s asked it got {done:,.0f}/s answered"
        print(f"perf_analyzer on {name}: {len(found['rows'])} rates measured{served};"
              f" delayed: {delayed}")  # fmt: skip
    level = next((r["interval_level"] for r in rows if r["interval_level"]), None)
    said = f"{level:.0%} interval for the median" if level else "one search: no interval"
    lines = [
        f"{'export':<26} {'path':<24} {'max rate/s':>10} {'[range: ' + said + ']':>36}"
        f" {'perf_analyzer':>13} {'cpu s/1k req':>12} {'[range]':>15}"
    ]
    for r in rows:
        pa = theirs.get(r["model"], "-") if r["path"].startswith("d") else "-"
        cost = r["server_cpu_s_per_1k"]
        span = f"[{r['low']:,.0f}-{r['high']:,.0f}]"
        lines.append(
            f"{r['model']:<26} {r['path']:<24} {r['max_rate']:>10,.0f} {span:>36} {pa:>13}"
            f" {'' if cost is None else f'{cost:.3f}':>12}"
            f" {_range(r['server_cpu_s_per_1k_range'], '{:.3f}'.format):>15}"
        )
    if use_perf_analyzer:
        lines.append(
            "perf_analyzer searched once per export through the gateway with batching on (path d)"
            " and times each request from its actual send: past capacity its threads fall behind"
            " the schedule and the queue never shows in its p99, so it can pass rates ours fails."
        )
    return lines


def tune(services, settings: Settings, args: argparse.Namespace) -> list[str]:
    """The tune scenario: the grid, each export's best setting written to its config.pbtxt (the
    bench's own export's and, for compare --tuned-batching, the same model's in the user's
    repository), and results.json."""
    import json
    import time
    from pathlib import Path

    from twinbench.experiments.batching_tune import grid, run_batching_tune, write_best

    def numbers(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    settings_grid = grid(numbers(args.tune_rows), numbers(args.tune_delays_us))
    step_s = max(args.seconds, 1.0)
    print(
        f"tune: {len(settings_grid)} batching settings, each export {args.tune_steps} Poisson"
        f" rate steps of {step_s:g} s under each, p99 under {args.p99_target_ms:g} ms (path d)"
    )

    def progress(setting, model, rate) -> None:
        print(f"  {setting}: {model}: {rate:,.0f}/s", flush=True)

    tuned = run_batching_tune(
        services.stack, services.requests(), args.p99_target_ms, settings_grid, args.tune_steps,
        step_s, services.client_cpus, progress,
    )  # fmt: skip
    written = write_best([services.settings.model_repository, settings.model_repository], tuned)
    folder = (
        Path(args.reports) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{args.model}-tune"
    )
    folder.mkdir(parents=True, exist_ok=True)
    results = {
        "scenario": "tune", "model": args.model, "p99_target_ms": args.p99_target_ms,
        "steps_per_setting": args.tune_steps, "step_seconds": step_s,
        "grid": {"max_rows": numbers(args.tune_rows), "delays_us": numbers(args.tune_delays_us)},
        "exports": tuned, "config_pbtxt": [str(p) for p in written],
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"{'export':<26} {'best batching':<28} {'max rate/s':>10}   every setting's rate/s"]
    for model, r in tuned.items():
        best = f"max {r['best']['max_rows']} rows, {r['best']['delay_us'] / 1000:g} ms delay"
        every = " ".join(
            f"{s['max_rows']}/{s['delay_us']}:{s['max_rate']:,.0f}" for s in r["scores"]
        )
        lines.append(f"{model:<26} {best:<28} {r['max_rate']:>10,.0f}   {every}")
    lines.append(
        f"written to {len(written)} config.pbtxt files; results in {folder / 'results.json'}"
    )
    return lines


def bench_formats(framework: str, asked: str) -> tuple[str, ...]:
    """--formats, or by default ONNX and the framework's own format (onnx,torchscript for torch)."""
    from twinbench.serving.repository import FRAMEWORK_FORMATS

    own = FRAMEWORK_FORMATS[framework]
    formats = tuple(f.strip() for f in asked.split(",")) if asked else ("onnx", own[0])
    wrong = [f for f in formats if f not in own]
    if wrong:
        raise SystemExit(f"--formats: {framework} exports {', '.join(own)}, not {', '.join(wrong)}")
    return formats


def bench_serving_command(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.bench_serving import bench_services, perf_analyzer_command, setup
    from twinbench.experiments.preflight import preflight, warn
    from twinbench.experiments.preflight import summary as preflight_summary

    checked = preflight()  # what makes this machine noisy now: warned here, repeated at the end
    warn(checked)
    use_perf_analyzer = args.perf_analyzer == "on" or (
        args.perf_analyzer == "auto" and perf_analyzer_command() is not None
    )
    how = setup(settings)
    print(f"gateway front: {how['gateway_front']}; load generator: {how['load_generator']}")
    framework = getattr(args, "framework", "torch")
    formats = bench_formats(framework, args.formats)
    with bench_services(settings, args.model, formats, args.width, framework) as services:
        if args.scenario == "server":
            lines = server(services, args, use_perf_analyzer)
        elif args.scenario == "tune":
            lines = tune(services, settings, args)
        else:
            lines = sweep(services, args, use_perf_analyzer)
        if args.cold_start_repeats > 0:
            lines += cold_start_lines(cold_starts(services, args.cold_start_repeats))
    for line in lines:
        print(line)
    print(f"preflight: {preflight_summary(checked)}")
    return 0
