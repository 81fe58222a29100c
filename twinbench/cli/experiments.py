"""`twinbench compare`, `sweep`, `parity`, `code` and `bench`: the comparisons, from their options."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from twinbench.api import trainer_pb2 as tpb
from twinbench.cli.jobs import spec_from_args
from twinbench.client.console import table
from twinbench.client.stack import services
from twinbench.config import FRAMEWORKS, Settings
from twinbench.jobs.precision import PRECISIONS
from twinbench.models.catalogue import MODELS
from twinbench.models.id_models import ID_MODELS
from twinbench.models.imagenet import ARCHITECTURES, FINE_TUNING
from twinbench.rpc.channel import Client


def cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.compare import run_compare
    from twinbench.experiments.compare_plan import CompareOptions

    frameworks = compare_frameworks(args.frameworks)
    declared = MODELS.get(args.model)  # None for the id models (ncf, gnmt)
    reinforcement = declared is not None and declared.reinforcement is not None
    if args.repeats is None:
        args.repeats = 10 if reinforcement else 3
    if args.rounds is None:
        args.rounds = args.repeats
    if args.repeats < 1 or args.rounds < 1:
        raise SystemExit("--repeats and --rounds must be 1 or more")
    if args.lockstep_pairs is not None and args.lockstep_pairs < 0:
        raise SystemExit(f"--lockstep-pairs must be 0 or more, got {args.lockstep_pairs}")
    if args.serving_rate < 0:
        raise SystemExit(
            f"--serving-rate must be 0 (a closed loop) or more, got {args.serving_rate}"
        )
    if not 0.5 <= args.confidence < 1:
        raise SystemExit(f"--confidence must be in [0.5, 1), got {args.confidence}")
    budget_s = until_decided_args(args)
    lockstep_until_s = lockstep_until_args(args)
    spec = spec_from_args(args, "")
    if args.params:
        apply_study_params(settings, args, spec)
    options = CompareOptions(
        frameworks=frameworks,
        repeats=args.repeats,
        users=args.users,
        duration=args.duration,
        rounds=args.rounds,
        serving_batch_size=args.serving_batch_size,
        reports=Path(args.reports),
        sample=args.sample,
        bench_seconds=args.bench_seconds,
        command="twinbench " + " ".join(args.argv),
        level=args.confidence,
        lockstep_pairs=args.lockstep_pairs,  # None: the plan's default (compare_plan.py)
        lockstep_until_s=lockstep_until_s,
        until_decided=args.until_decided,
        budget_s=budget_s,
        max_pairs=args.max_pairs,
        lockstep_threads=arm_threads(args),
        disturbance_limit=args.disturbance_limit,
        serving_rate=args.serving_rate,
        arrivals=args.arrivals,
        tuned_batching=args.tuned_batching,
    )
    if len(frameworks) > 2 and args.lockstep_pairs:
        raise SystemExit(
            "--lockstep-pairs runs two arms side by side: compare three arms with"
            " --lockstep-pairs 0 (the default for three), or a pair of them with lockstep"
        )
    if reinforcement and args.until_decided:
        raise SystemExit("--until-decided takes speed, accuracy and serving lines, not dqn's")
    if reinforcement:
        from twinbench.experiments.rl_compare import run_rl_compare

        return run_rl_compare(settings, args.gateway, spec, options)
    return run_compare(settings, args.gateway, spec, options)


def compare_frameworks(value: str) -> tuple[str, ...]:
    """--frameworks of compare: two arms (torch,tf; torch,jax; jax,jax for an A/A run) or three
    (torch,tf,jax), each pair of arms then compared."""
    from twinbench.experiments.compare_plan import MAX_ARMS

    frameworks = tuple(f.strip() for f in value.split(","))
    if not 2 <= len(frameworks) <= MAX_ARMS or not set(frameworks) <= set(FRAMEWORKS):
        raise SystemExit(
            f"--frameworks takes two or three of {', '.join(FRAMEWORKS)}, e.g. torch,tf,"
            f" torch,jax, torch,torch or torch,tf,jax; got {value!r}"
        )
    return frameworks


def arm_threads(args: argparse.Namespace) -> tuple[int, int] | None:
    """--arm-threads FIRST,SECOND: each lockstep arm's intra-op threads (a positive control)."""
    if getattr(args, "arm_threads", None) is None:
        return None
    try:
        first, second = (int(x) for x in args.arm_threads.split(","))
    except ValueError:
        raise SystemExit(
            f"--arm-threads takes two counts, e.g. 1,2: {args.arm_threads!r}"
        ) from None
    if min(first, second) < 1:
        raise SystemExit(f"--arm-threads must be 1 or more each: {args.arm_threads!r}")
    return first, second


def lockstep_until_args(args: argparse.Namespace) -> float:
    """--lockstep-until in seconds: how long the run may take while lockstep pairs fill it."""
    from twinbench.experiments.sequential import MIN_LOOK_PAIRS, parse_duration

    if args.lockstep_pairs is None and args.max_pairs < MIN_LOOK_PAIRS:  # lockstep.FILL_MIN_PAIRS
        raise SystemExit(f"--max-pairs must be {MIN_LOOK_PAIRS} or more: the fewest lockstep"
                         " pairs that fill a run")  # fmt: skip
    try:
        return parse_duration(args.lockstep_until)
    except ValueError as error:
        raise SystemExit(f"--lockstep-until: {error}") from None


def until_decided_args(args: argparse.Namespace) -> float | None:
    """--budget in seconds (None: no budget), checked with --until-decided and --max-pairs."""
    from twinbench.experiments.sequential import MIN_LOOK_PAIRS, parse_duration

    if args.budget is not None and not args.until_decided:
        raise SystemExit("--budget goes with --until-decided")
    if args.until_decided and args.max_pairs < MIN_LOOK_PAIRS:
        raise SystemExit(f"--max-pairs must be {MIN_LOOK_PAIRS} or more (the first look)")
    try:
        return parse_duration(args.budget) if args.budget is not None else None
    except ValueError as error:
        raise SystemExit(f"--budget: {error}") from None


def apply_study_params(settings: Settings, args: argparse.Namespace, spec: tpb.JobSpec) -> None:
    """`--params best-of:STUDY`: a tuned study's best settings, the epochs its best trial trained."""
    from twinbench.experiments.sweep_studies import apply_params, best_of, format_params

    kind, _, study = args.params.partition(":")
    if kind != "best-of" or not study:
        raise SystemExit(f"--params takes best-of:STUDY (e.g. best-of:mlp/tf), got {args.params!r}")
    params, epochs = best_of(settings, args.storage, study)
    apply_params(spec, {**params, "epochs": epochs})
    print(f"settings of {study}'s best trial: {format_params({**params, 'epochs': epochs})}")


def cmd_sweep(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.sweep import run_sweep
    from twinbench.experiments.sweep_studies import SweepOptions

    for flag, value, least in (("--trials", args.trials, 1), ("--paired", args.paired, 0),
                               ("--cross-repeats", args.cross_repeats, 0),
                               ("--prune-after", args.prune_after, 0),
                               ("--epochs", args.epochs, 1)):  # fmt: skip
        if value is not None and value < least:
            raise SystemExit(f"{flag} must be {least} or more, got {value}")
    frameworks = tuple(f.strip() for f in args.frameworks.split(","))
    if len(frameworks) != 2 or len(set(frameworks)) != 2 or not set(frameworks) <= set(FRAMEWORKS):
        raise SystemExit(
            f"sweep --frameworks takes two different ones of {', '.join(FRAMEWORKS)},"
            f" e.g. torch,jax; got {args.frameworks!r}"
        )
    if not args.heartbeat > 0:
        raise SystemExit(f"--heartbeat must be more than 0 seconds, got {args.heartbeat}")
    options = SweepOptions(
        name=args.name or args.model,
        model=args.model,
        trials=args.trials,
        paired=args.trials if args.paired is None else args.paired,
        epochs=args.epochs,
        cross_repeats=args.cross_repeats,
        seed=args.seed,
        storage=args.storage,
        resume=args.resume,
        reports=Path(args.reports),
        command="twinbench " + " ".join(args.argv),
        dataset=args.dataset or "",
        train_samples=args.train_samples,
        heartbeat_s=args.heartbeat,
        prune_after=args.prune_after,
        frameworks=(frameworks[0], frameworks[1]),
    )
    return run_sweep(settings, args.gateway, options)


def cmd_parity(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.parity import (
        PARITY_TOLERANCE,
        TRAIN_TOLERANCE,
        check_id_parity,
        check_parity,
        trajectory,
    )

    failed = 0
    other = args.frameworks.split(",")[1]  # the framework PyTorch's weights are copied into
    label = {"tf": "Keras", "jax": "Flax"}[other]
    if args.trajectory and other != "tf":
        raise SystemExit("--trajectory trains PyTorch and Keras side by side: use torch,tf")
    for name in args.model or [*sorted(MODELS), *ID_MODELS]:
        if name in ID_MODELS:
            result = check_id_parity(name, args.seed, args.rows, args.scale, against=other)
        else:
            sized = name in ARCHITECTURES or name in FINE_TUNING
            knobs = (args.width, args.image_size) if sized else (None, None)
            result = check_parity(name, args.seed, args.rows, knobs[0], knobs[1], against=other)
        failed += not result.ok
        parts = [f"{result.parameters:,} trainable parameters"]
        if result.keras_parameters != result.parameters:
            parts[0] += f" ({label}, with one LSTM bias vector: {result.keras_parameters:,})"
        parts.append(
            f"{result.rows} inputs; eval: max |torch - {other}| logits {result.max_abs_diff:.2e}"
            f" = {result.relative:.2e} of their scale {result.scale:.3g}"
        )
        if result.train_stats is not None:
            parts.append(f"train mode: batch-norm statistics' moves {result.train_stats:.2e}")
        if result.train_logits is not None:
            parts.append(f"train-mode logits {result.train_logits:.2e}")
        if result.weights_file:
            parts.append(f"pretrained base from {result.weights_file}")
        verdict = "ok" if result.ok else "FAILED"
        print(
            f"{name}: {'; '.join(parts)} ({verdict}; relative tolerances:"
            f" eval {PARITY_TOLERANCE:g}, train mode {TRAIN_TOLERANCE:g})"
        )
        if args.trajectory:
            print(f"  {name} trained side by side from one init on the same batches:")
            rows = [
                [str(d.step), f"{d.max_abs_diff:.2e}", f"{d.disagreement:.1%}",
                 f"{d.torch_accuracy:.4f}", f"{d.keras_accuracy:.4f}"]
                for d in trajectory(name, args.trajectory, seed=args.seed)
            ]  # fmt: skip
            headers = ["step", "max |logit diff|", "predictions differ", "torch acc", "keras acc"]
            print("  " + table(headers, rows).replace("\n", "\n  "))
    return 1 if failed else 0


def cmd_code(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.code_size import compare_task, example_tasks, size_headers, size_rows

    tasks = example_tasks()
    if not tasks:
        raise SystemExit("no example scripts here: `twinbench code` runs from a checkout")
    for task in args.task or tasks:
        code = compare_task(task)
        if code is None:
            raise SystemExit(f"no examples/{task}/; tasks: {', '.join(tasks)}")
        print(f"{task} ({', '.join(s['path'] for s in code['scripts'].values())}):")
        print("  " + table(size_headers(code), size_rows(code)).replace("\n", "\n  "))
    return 0


def bench_options(args: argparse.Namespace):
    """`bench training`'s BenchOptions, from its arguments."""
    from twinbench.experiments.bench_training import BenchOptions

    frameworks = tuple(f.strip() for f in args.frameworks.split(","))
    modes = tuple(m.strip() for m in args.modes.split(","))
    if (
        len(set(frameworks)) != len(frameworks)
        or len(frameworks) not in (2, 3)
        or not set(frameworks) <= set(FRAMEWORKS)
    ):
        raise SystemExit(
            f"--frameworks takes two or three different ones of {', '.join(FRAMEWORKS)},"
            f" e.g. torch,tf or torch,tf,jax; got {args.frameworks!r}"
        )
    if not set(modes) <= {"default", "compiled"}:
        raise SystemExit("--modes takes default and/or compiled")
    precisions = tuple(p.strip() for p in args.precision.split(","))
    if not set(precisions) <= set(PRECISIONS):
        raise SystemExit(f"--precision takes {' and/or '.join(PRECISIONS)}")
    if args.repeats is None:
        from twinbench.experiments.harness_reference import REFERENCE_PAIRS

        args.repeats = REFERENCE_PAIRS if getattr(args, "reference", None) else 3
    if min(args.repeats, args.steps, args.warmup_steps, args.batch_size) < 1:
        raise SystemExit("--repeats, --steps, --warmup-steps and --batch-size must be 1 or more")
    return BenchOptions(
        # The PyTorch paper's table has VGG-19, not VGG-16.
        models=tuple(args.model or (*(a for a in ARCHITECTURES if a != "vgg16"), *ID_MODELS)),
        frameworks=frameworks,
        modes=modes,
        precisions=precisions,
        repeats=args.repeats,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        steps=args.steps,
        width=args.width,
        image_size=args.image_size,
        channels_last=args.channels_last,
        until_decided=args.until_decided,
        budget_s=until_decided_args(args),
        max_pairs=args.max_pairs,
    )


def cmd_bench_training(client: Client, args: argparse.Namespace) -> int:
    from twinbench.experiments.bench_training import run_training_bench

    options = bench_options(args)
    if options.until_decided and args.workers:
        raise SystemExit("--until-decided times one worker per job: leave out --workers")
    if args.workers:
        return cmd_bench_scaling(client, args, options)
    return write_training_bench(run_training_bench(client, options), args)


def cmd_bench_lockstep(settings: Settings, args: argparse.Namespace) -> int:
    """`bench training --lockstep`: lockstep pairs on this host, no services; sequential jobs on
    the trainers (started as for any command) where both arms cannot run here."""
    from twinbench.experiments.bench_training import run_training_bench
    from twinbench.experiments.lockstep import (
        LockstepOptions,
        LockstepUnavailable,
        run_lockstep_bench,
        unavailable,
    )

    options = bench_options(args)
    if len(options.frameworks) != 2:
        raise SystemExit(
            "--lockstep trains two arms side by side: give --frameworks two of them (e.g."
            " torch,jax), or leave out --lockstep to time all three in sequential jobs"
        )
    if min(args.block_pairs, args.block_steps or 2) < 1 or args.block_seconds <= 0:
        raise SystemExit("--block-pairs, --block-steps and --block-seconds must be positive")
    lockstep = LockstepOptions(
        block_pairs=args.block_pairs,
        block_seconds=args.block_seconds,
        block_steps=args.block_steps,
        disturbance_limit=args.disturbance_limit,
        max_discards=args.max_discards,
        arm_threads=arm_threads(args),
    )
    reason = unavailable(options.frameworks, options.models)
    if args.workers:
        reason = "--workers: a data-parallel job's workers are not paused in lockstep"
    results = None
    if reason is None:
        try:
            results = run_lockstep_bench(settings, options, lockstep)
        except LockstepUnavailable as exc:
            reason = str(exc)
    if results is None:
        print(f"lockstep: {reason}; timing sequential jobs instead", file=sys.stderr)
        with services(settings, args.gateway, options.frameworks) as (address, _):
            client = Client(address, settings)
            try:
                if args.workers:
                    return cmd_bench_scaling(client, args, options)
                results = run_training_bench(client, options)
            finally:
                client.close()
        results["fallback"] = reason
    return write_training_bench(results, args)


def cmd_bench_reference(settings: Settings, args: argparse.Namespace) -> int:
    """`bench training --reference bare`: each framework's job worker in lockstep with a bare
    loop of the same model, here (no services); the harness's cost per framework."""
    import json

    from twinbench.experiments.harness_reference import (
        describe_cost,
        report_text,
        run_reference,
    )
    from twinbench.experiments.lockstep import LockstepOptions, unavailable

    options = bench_options(args)
    reason = unavailable(options.frameworks, options.models)
    if reason is not None or args.workers:
        raise SystemExit(f"--reference bare runs in lockstep here: {reason or '--workers'}")
    lockstep = LockstepOptions(
        block_pairs=args.block_pairs, block_seconds=args.block_seconds,
        block_steps=args.block_steps, disturbance_limit=args.disturbance_limit,
        max_discards=args.max_discards,
    )  # fmt: skip
    results = run_reference(settings, options, lockstep)
    results["options"]["command"] = "twinbench " + " ".join(args.argv)
    for row in results["rows"]:
        print(describe_cost(row))
    directory = Path(args.reports) / f"{time.strftime('%Y%m%d-%H%M%S')}-bench-reference"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (directory / "report.md").write_text(report_text(results))
    print(f"wrote {directory / 'results.json'}\nwrote {directory / 'report.md'}")
    return 0 if all("cost" in row for row in results["rows"]) else 1


def write_training_bench(results: dict, args: argparse.Namespace) -> int:
    from twinbench.experiments.bench_training import table_rows, write_bench_report

    results["options"]["command"] = "twinbench " + " ".join(args.argv)
    headers, rows = table_rows(results)
    print(table(headers, rows))
    for note in results.get("notes", []):
        print(note)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in write_bench_report(Path(args.reports) / f"{stamp}-bench-training", results):
        print(f"wrote {path}")
    failed = any(r["state"] != "succeeded" for row in results["rows"]
                 for runs in row["runs"].values() for r in runs)  # fmt: skip
    return 1 if failed else 0


def cmd_bench_scaling(client: Client, args: argparse.Namespace, options) -> int:
    """`bench training --workers 1,2,...`: throughput and scaling efficiency per worker count."""
    from twinbench.experiments.bench_scaling import (
        ScalingOptions,
        run_scaling_bench,
        table_rows,
        write_scaling_report,
    )

    try:
        workers = tuple(sorted({int(w) for w in args.workers.split(",") if w.strip()}))
    except ValueError:
        raise SystemExit("--workers takes worker counts, e.g. 1,2") from None
    if not workers or min(workers) < 1:
        raise SystemExit("--workers takes worker counts of 1 or more, e.g. 1,2")
    if len(options.frameworks) != 2 or "jax" in options.frameworks:
        raise SystemExit(
            "--workers compares data-parallel jobs of two frameworks with a collective: torch,tf"
        )
    if tuple(options.precisions) != ("fp32",):
        raise SystemExit("--workers measures fp32 only (data-parallel jobs refuse mixed precision)")
    results = run_scaling_bench(client, ScalingOptions(options, workers))
    results["options"]["command"] = "twinbench " + " ".join(args.argv)
    headers, rows = table_rows(results)
    print(table(headers, rows))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in write_scaling_report(Path(args.reports) / f"{stamp}-bench-scaling", results):
        print(f"wrote {path}")
    failed = any(r["state"] != "succeeded" for row in results["rows"]
                 for by in row["runs"].values() for rs in by.values() for r in rs)  # fmt: skip
    return 1 if failed else 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.serving_console import bench_serving_command

    return bench_serving_command(settings, args)
