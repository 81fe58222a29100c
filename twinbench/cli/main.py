"""The `twinbench` command: start the services, train, inspect jobs and models, infer, compare."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.console import describe_job, table, watch_all
from twinbench.client.stack import LocalStack
from twinbench.config import FRAMEWORKS, Settings, load_settings
from twinbench.errors import TwinbenchError
from twinbench.jobs.precision import PRECISIONS
from twinbench.jobs.request import state_name
from twinbench.models.declarations import ARCHITECTURES, FINE_TUNING, ID_MODELS, MODELS
from twinbench.rpc.channel import Client
from twinbench.serving.tensors import infer_request, output_array

# --- commands ---


def spec_from_args(args: argparse.Namespace, framework: str) -> tpb.JobSpec:
    spec = tpb.JobSpec(framework=framework, model=args.model, dataset=args.dataset or "")
    for field in (
        "epochs",
        "batch_size",
        "seed",
        "train_samples",
        "warmup_steps",
        "width",
        "image_size",
        "workers",
        "devices_per_worker",
        "env_steps",
    ):
        value = getattr(args, field)
        if value is not None:
            setattr(spec, field, value)
    if args.device:
        spec.device = args.device
    if args.init:
        spec.init = args.init
    if args.precision:
        spec.precision = args.precision
    if args.target_accuracy is not None:
        spec.target_accuracy = args.target_accuracy
    if args.optimizer:
        spec.optimizer.name = args.optimizer
    if args.lr is not None:
        spec.optimizer.learning_rate = args.lr
    if args.momentum is not None:
        spec.optimizer.momentum = args.momentum
    return spec


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    if args.framework == "both" and not args.overlap and not args.detach:
        # One after the other: run together, each job's figures would be taken under the other's
        # load (a job records whether that happened).
        finished = []
        for framework in FRAMEWORKS:
            spec = spec_from_args(args, framework)
            (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
            print(f"queued {job.id}")
            finished += watch_all(client, [job])
    else:
        spec = spec_from_args(args, args.framework)
        jobs = list(client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs)
        for job in jobs:
            print(f"queued {job.id}")
        if args.detach:
            return 0
        finished = watch_all(client, jobs)
    for job in finished:
        print(describe_job(job))
    return 0 if all(j.state == tpb.SUCCEEDED for j in finished) else 1


def _result(job: tpb.Job) -> str:
    """A finished job's outcome in a word: test accuracy, or whether a DQN job solved."""
    if job.state != tpb.SUCCEEDED:
        return "-"
    if job.HasField("reinforcement"):
        solved = job.reinforcement.episodes_to_solve
        return f"solved at {solved}" if solved else "not solved"
    return f"acc {job.test_accuracy:.4f}"


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    if args.show:
        print(describe_job(client.trainer.GetJob(tpb.GetJobRequest(job_id=args.show))))
        return 0
    jobs = client.trainer.ListJobs(tpb.ListJobsRequest()).jobs
    rows = [
        [
            j.id,
            state_name(j.state),
            j.spec.model,
            j.spec.dataset,
            f"{len(j.reinforcement.episode_rewards)} episodes"
            if j.HasField("reinforcement")
            else f"{len(j.epochs)}/{j.spec.epochs}",
            _result(j),
            f"{j.train_seconds:.1f}" if j.state == tpb.SUCCEEDED else "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at)),
        ]
        for j in jobs
    ]
    headers = ["job", "state", "model", "dataset", "epochs", "result", "train s", "created"]
    print(table(headers, rows) if rows else "no jobs yet; start one with `twinbench train`")
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.trainer.CancelJob(tpb.CancelJobRequest(job_id=args.job_id))
    print(f"{job.id}: {state_name(job.state)} (cancellation requested)")
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest())
    rows = [[m.name, m.version or "-", m.state, m.reason] for m in index.models]
    print(table(["model", "version", "state", "reason"], rows) if rows else "no models yet")
    return 0


def sample_input(
    client: Client, model: str, sample: int, version: str = ""
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One row of inputs as the served model declares them, and its truth when known: a test
    image of the embedded dataset for 1x28x28 models, a row of the synthetic data for NCF and
    GNMT, else a seeded random image (twinbench.client.inputs)."""
    from twinbench.client.inputs import model_inputs, served_inputs

    if sample < 0:
        raise SystemExit(f"--sample must be 0 or more, got {sample}")
    metadata = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=model, version=version))
    config = client.inference.ModelConfig(ipb.ModelConfigRequest(name=model, version=version))
    inputs, truth = model_inputs(served_inputs(metadata, config), rows=1, start=sample)
    return inputs, None if truth is None else truth[0]


def infer_sample(client: Client, model: str, sample: int, version: str = "") -> np.ndarray:
    """Logits of one input (see sample_input), through the gateway."""
    x, _ = sample_input(client, model, sample, version)
    return infer_one(client, model, x, version)


def infer_one(
    client: Client, model: str, x: np.ndarray | dict[str, np.ndarray], version: str = ""
) -> np.ndarray:
    request = infer_request(model, x, version=version)
    return output_array(client.inference.ModelInfer(request), "logits")[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    x, label = sample_input(client, args.model, args.sample, args.version or "")
    logits = infer_one(client, args.model, x, args.version or "")
    if (
        set(x) == {"user", "item"} and label is not None
    ):  # NCF: one logit, does the user interact with the item
        probability = 1 / (1 + np.exp(-float(logits[0])))
        truth = {0: "no interaction", 1: "interaction"}.get(int(label), "?")
        print(
            f"{args.model}: sample {args.sample}: user {int(x['user'][0])}, item"
            f" {int(x['item'][0])} -> logit {float(logits[0]):.4f}, probability of an"
            f" interaction {probability:.4f} (truth: {truth})"
        )
        return 0
    if (
        set(x) == {"source", "target"} and label is not None
    ):  # GNMT: the teacher-forced next-token predictions
        mask = label != 0
        predicted = logits.argmax(axis=-1)
        print(
            f"{args.model}: sample {args.sample}: {int(mask.sum())} target tokens, teacher-forced"
            f" token accuracy {float((predicted == label)[mask].mean()):.4f}"
        )
        print(f"  target:    {' '.join(map(str, label[mask][:20]))}")
        print(f"  predicted: {' '.join(map(str, predicted[mask][:20]))}")
        return 0
    probs = softmax(logits)
    truth = f"true class {label}" if label is not None else "a random input: no true class"
    print(f"{args.model}: sample {args.sample} -> class {int(logits.argmax())} ({truth})")
    top = np.argsort(-logits)[:10]  # ImageNet models have 1,000 classes: the ten likeliest
    rows = [[c, f"{logits[c]:.4f}", f"{probs[c]:.4f}"] for c in top]
    print(table(["class", "logit", "probability"], rows))
    return 0


def cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.experiments.compare import CompareOptions, run_compare

    frameworks = tuple(f.strip() for f in args.frameworks.split(","))
    if len(frameworks) != 2 or not set(frameworks) <= set(FRAMEWORKS):
        raise SystemExit(
            f"--frameworks takes two of {', '.join(FRAMEWORKS)}, e.g. torch,tf or torch,torch;"
            f" got {args.frameworks!r}"
        )
    declared = MODELS.get(args.model)  # None for the id models (ncf, gnmt)
    reinforcement = declared is not None and declared.reinforcement is not None
    if args.repeats is None:
        args.repeats = 10 if reinforcement else 3
    if args.rounds is None:
        args.rounds = args.repeats
    if args.repeats < 1 or args.rounds < 1:
        raise SystemExit("--repeats and --rounds must be 1 or more")
    if not 0.5 <= args.confidence < 1:
        raise SystemExit(f"--confidence must be in [0.5, 1), got {args.confidence}")
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
    )
    if reinforcement:
        from twinbench.experiments.rl_compare import run_rl_compare

        return run_rl_compare(settings, args.gateway, spec, options)
    return run_compare(settings, args.gateway, spec, options)


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
    )
    return run_sweep(settings, args.gateway, options)


def cmd_parity(args: argparse.Namespace) -> int:
    from twinbench.experiments.parity import (
        PARITY_TOLERANCE,
        TRAIN_TOLERANCE,
        check_id_parity,
        check_parity,
        trajectory,
    )

    failed = 0
    for name in args.model or [*sorted(MODELS), *ID_MODELS]:
        if name in ID_MODELS:
            result = check_id_parity(name, args.seed, args.rows, args.scale)
        else:
            sized = name in ARCHITECTURES or name in FINE_TUNING
            knobs = (args.width, args.image_size) if sized else (None, None)
            result = check_parity(name, args.seed, args.rows, *knobs)
        failed += not result.ok
        parts = [f"{result.parameters:,} trainable parameters"]
        if result.keras_parameters != result.parameters:
            parts[0] += f" (Keras, with one LSTM bias vector: {result.keras_parameters:,})"
        parts.append(
            f"{result.rows} inputs; eval: max |torch - keras| logits {result.max_abs_diff:.2e}"
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


def cmd_code(args: argparse.Namespace) -> int:
    from twinbench.experiments.code_size import compare_task, example_tasks, size_rows

    tasks = example_tasks()
    if not tasks:
        raise SystemExit("no example scripts here: `twinbench code` runs from a checkout")
    for task in args.task or tasks:
        code = compare_task(task)
        if code is None:
            raise SystemExit(f"no examples/{task}/; tasks: {', '.join(tasks)}")
        print(f"{task} ({', '.join(s['path'] for s in code['scripts'].values())}):")
        headers = ["measure", "PyTorch", "Keras", "PyTorch / Keras"]
        print("  " + table(headers, size_rows(code)).replace("\n", "\n  "))
    return 0


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.data.download import download

    root = Path(args.dir).resolve() if args.dir else settings.data
    for line in download(args.name, root):
        print(line)
    print(f"{args.name} is ready in {root / args.name}")
    return 0


def cmd_bench_training(client: Client, args: argparse.Namespace) -> int:
    from twinbench.experiments.bench_training import (
        BenchOptions,
        run_training_bench,
        table_rows,
        write_bench_report,
    )

    frameworks = tuple(f.strip() for f in args.frameworks.split(","))
    modes = tuple(m.strip() for m in args.modes.split(","))
    if len(set(frameworks)) != 2 or not set(frameworks) <= set(FRAMEWORKS):
        raise SystemExit(f"--frameworks takes two different ones of {', '.join(FRAMEWORKS)}")
    if not set(modes) <= {"default", "compiled"}:
        raise SystemExit("--modes takes default and/or compiled")
    precisions = tuple(p.strip() for p in args.precision.split(","))
    if not set(precisions) <= set(PRECISIONS):
        raise SystemExit(f"--precision takes {' and/or '.join(PRECISIONS)}")
    if min(args.repeats, args.steps, args.warmup_steps, args.batch_size) < 1:
        raise SystemExit("--repeats, --steps, --warmup-steps and --batch-size must be 1 or more")
    options = BenchOptions(
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
    )
    if args.workers:
        return cmd_bench_scaling(client, args, options)
    results = run_training_bench(client, options)
    results["options"]["command"] = "twinbench " + " ".join(args.argv)
    headers, rows = table_rows(results)
    print(table(headers, rows))
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
    from twinbench.experiments.bench_serving import (
        capacity_lines,
        perf_analyzer_command,
        run_serving_bench,
        setup,
        summary,
    )

    use_perf_analyzer = args.perf_analyzer == "on" or (
        args.perf_analyzer == "auto" and perf_analyzer_command() is not None
    )
    how = setup(settings)
    print(f"gateway front: {how['gateway_front']}; load generator: {how['load_generator']}")
    print(
        f"{'path':<24} {'model':<26} {'conc':>4} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'req/s':>9} {'client cpu':>10}"
    )

    def report(f) -> None:
        cpu = "" if f.client_cpu is None else f"{f.client_cpu:.0%}"
        print(
            f"{f.path:<24} {f.model:<26} {f.concurrency:>4} {f.requests:>9,} {f.p50_ms:>8.3f}"
            f" {f.p99_ms:>8.3f} {f.rps:>9,.0f} {cpu:>10}",
            flush=True,
        )

    figures = run_serving_bench(
        settings,
        model=args.model,
        formats=tuple(args.formats.split(",")),
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
        seconds=args.seconds,
        rounds=args.rounds,
        report=report,
        perf_analyzer=use_perf_analyzer,
        width=args.width,
    )
    for line in summary(figures) + capacity_lines(figures, args.p99_target_ms):
        print(line)
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    with LocalStack(settings) as stack:
        print(
            f"gateway {stack.gateway_address} (torch trainer {stack.address('torch_trainer')},"
            f" tf trainer {stack.address('tf_trainer')}); state and logs in {settings.home};"
            " Ctrl-C stops"
        )
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            while not stopped.wait(1.0):
                for name, proc in stack.procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited ({proc.returncode}):\n{stack.log_tail(name)}")
                        return 1
        except KeyboardInterrupt:
            pass
    return 0


def add_architecture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--width",
        type=float,
        help="channel width multiplier of alexnet, vgg16, vgg19, resnet50, mobilenet_v2 and"
        " vgg16_finetune; for ncf and gnmt, widths, vocabulary, users and items times this"
        " (default: 1)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="input height and width of alexnet, vgg16, vgg19, resnet50, mobilenet_v2 and"
        " vgg16_finetune (default: 224)",
    )


def add_spec_options(p: argparse.ArgumentParser, epochs_default: int | None) -> None:
    p.add_argument(
        "--model", choices=[*sorted(MODELS), *ID_MODELS], default="lenet5", help="(default: lenet5)"
    )
    p.add_argument(
        "--dataset",
        help="mnist-5k, digits, mnist, fashion-mnist, imagefolder:PATH (under the data folder)"
        " or synthetic; for ncf synthetic, ml-1m or ml-20m (default: the model's)",
    )
    p.add_argument(
        "--target-accuracy", type=float, help="record when validation accuracy first reaches it"
    )
    p.add_argument(
        "--epochs", type=int, default=epochs_default, help="(default: %(default)s, or the model's)"
    )
    p.add_argument("--batch-size", type=int, help="(default: the model's)")
    add_architecture_options(p)
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="(default: the model's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: the model's)")
    p.add_argument("--seed", type=int, help="(default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--train-samples", type=int, help="train on the first N rows only")
    p.add_argument(
        "--workers",
        type=int,
        help="data-parallel worker processes; --batch-size stays the global batch (default: 1)",
    )
    p.add_argument("--devices-per-worker", type=int, help="GPUs each worker trains on (default: 1)")
    p.add_argument(
        "--env-steps",
        type=int,
        help="dqn_cartpole: the budget of environment steps; a job stops there or once solved"
        " (default: the model's, 200000)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        help="training steps timed apart before the steady figures (default: 10, or half the"
        " job's steps when it has fewer than 20)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default) or mixed: float16 with loss scaling on a GPU, bfloat16 on a CPU"
        " that has bfloat16 instructions",
    )
    p.add_argument(
        "--init",
        choices=["shared", "framework"],
        help="shared: both frameworks start from the same weights (default);"
        " framework: each its own default init",
    )


def parser() -> argparse.ArgumentParser:
    settings = load_settings()
    p = argparse.ArgumentParser(prog="twinbench", description=__doc__)
    p.add_argument(
        "--gateway",
        default=settings.gateway,
        help="gateway address (default: TWINBENCH_GATEWAY or %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the three services on loopback until Ctrl-C")
    train = sub.add_parser("train", help="train a model and follow its progress")
    train.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    train.add_argument("--detach", action="store_true", help="queue the job and return")
    train.add_argument(
        "--overlap",
        action="store_true",
        help="with --framework both, train the two at the same time (default: one after the"
        " other, so neither is timed under the other's load)",
    )
    add_spec_options(train, None)
    jobs = sub.add_parser("jobs", help="list jobs, or show one in full")
    jobs.add_argument("--show", metavar="JOB_ID")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    sub.add_parser("models", help="list the served models")
    infer = sub.add_parser("infer", help="classify one test image through the gateway")
    infer.add_argument("--model", required=True, help="a served model, e.g. lenet5-torch-onnx")
    infer.add_argument("--sample", type=int, default=0, help="test image index (default: 0)")
    infer.add_argument("--version", help="(default: the newest)")
    data = sub.add_parser("data", help="dataset files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser(
        "download",
        help="fetch a dataset's files, or torchvision's VGG16 weights (sha256-checked)",
    )
    fetch.add_argument(
        "name",
        choices=["mnist", "fashion-mnist", "ml-1m", "ml-20m", "vgg16-weights"],
        help="IDX files of MNIST or Fashion-MNIST, a MovieLens zip for ncf, or the pretrained"
        " VGG16 base of vgg16_finetune",
    )
    fetch.add_argument(
        "--dir", help="data folder (default: TWINBENCH_DATA, or TWINBENCH_HOME/data)"
    )
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    serving = bench_sub.add_parser(
        "serving", help="runtime vs trainer vs gateway vs gateway with dynamic batching"
    )
    serving.add_argument("--model", choices=[*sorted(MODELS), *ID_MODELS], default="lenet5")
    serving.add_argument(
        "--width",
        type=float,
        help="the trained model's width (architectures, ncf, gnmt; default: its full width)",
    )
    serving.add_argument("--formats", default="onnx,torchscript", help="(default: %(default)s)")
    serving.add_argument("--concurrency", default="1,8,32", help="(default: %(default)s)")
    serving.add_argument(
        "--seconds", type=float, default=3.0, help="per measurement (default: %(default)s)"
    )
    serving.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternations of c and d, against a machine's drift (default: %(default)s)",
    )
    serving.add_argument(
        "--p99-target-ms",
        type=float,
        default=5.0,
        help="report each path's most requests/s with p99 under this (default: %(default)s)",
    )
    serving.add_argument(
        "--perf-analyzer",
        choices=("auto", "on", "off"),
        default="auto",
        help="also measure with Triton's perf_analyzer through the gateway (path e);"
        " auto: when it is installed (default: %(default)s)",
    )
    training = bench_sub.add_parser(
        "training",
        help="steady training throughput per model, framework and mode, as jobs on the trainers",
    )
    training.add_argument(
        "--model",
        action="append",
        choices=[*sorted(MODELS), *ID_MODELS],
        help="(default: alexnet, vgg19, resnet50, mobilenet_v2, ncf, gnmt)",
    )
    add_architecture_options(training)
    training.add_argument(
        "--frameworks", default="torch,tf", help="first,second (default: %(default)s)"
    )
    training.add_argument(
        "--modes",
        default="default,compiled",
        help="default (PyTorch eager, Keras tf.function) and/or compiled (torch.compile, XLA)"
        " (default: %(default)s)",
    )
    training.add_argument(
        "--precision",
        default="fp32",
        help="fp32 and/or mixed (bfloat16 on a CPU that has it, float16 on a GPU), e.g."
        " fp32,mixed (default: %(default)s)",
    )
    training.add_argument(
        "--channels-last",
        action="store_true",
        help="PyTorch jobs in the channels-last memory format (Keras is NHWC already)",
    )
    training.add_argument("--repeats", type=int, default=3, help="(default: %(default)s)")
    training.add_argument(
        "--workers",
        help="data-parallel worker counts, e.g. 1,2: throughput and scaling efficiency per count"
        " for both frameworks (the global batch stays --batch-size; default: one worker, no"
        " scaling table)",
    )
    training.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    training.add_argument(
        "--warmup-steps", type=int, default=3, help="timed apart (default: %(default)s)"
    )
    training.add_argument(
        "--steps", type=int, default=10, help="steady steps (default: %(default)s)"
    )
    training.add_argument("--reports", default="reports", help="(default: %(default)s)")
    parity = sub.add_parser(
        "parity", help="copy PyTorch weights into Keras and compare logits (exit 1 above 1e-5)"
    )
    parity.add_argument(
        "--model",
        action="append",
        choices=[*sorted(MODELS), *ID_MODELS],
        help="(default: every model)",
    )
    parity.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="ncf and gnmt: widths, vocabulary, users and items times this (default: 1)",
    )
    parity.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parity.add_argument(
        "--rows",
        type=int,
        help="inputs compared (default: 16 for ImageNet models, 4 sentences for gnmt, else 64)",
    )
    add_architecture_options(parity)
    parity.add_argument(
        "--trajectory",
        type=int,
        metavar="EPOCHS",
        help="also train both side by side for EPOCHS epochs (the model's defaults) and show how"
        " far apart they drift",
    )
    code = sub.add_parser(
        "code", help="the amount of code of each task's example scripts (examples/), per framework"
    )
    code.add_argument("--task", action="append", help="(default: every task)")
    compare = sub.add_parser(
        "compare", help="train in both frameworks, serve every export, compare (the main job)"
    )
    add_spec_options(compare, 5)
    compare.add_argument(
        "--frameworks",
        default="torch,tf",
        help="the two arms, first over second in every ratio; one framework twice (torch,torch)"
        " is an A/A run that shows the noise floor (default: %(default)s)",
    )
    compare.add_argument(
        "--repeats",
        type=int,
        help="training runs per arm, each with a new seed, in the order A B B A ...;"
        " verdicts rest on these pairs (default: 3; 10 seeds for dqn_cartpole)",
    )
    compare.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="level of every interval; a report names a false winner in at most 1 - this of"
        " runs (default: %(default)s)",
    )
    compare.add_argument(
        "--users",
        type=int,
        default=8,
        help="Locust users per served model; 0 skips load (default: 8)",
    )
    compare.add_argument(
        "--duration", default="5s", help="Locust run time per model and round (default: 5s)"
    )
    compare.add_argument(
        "--rounds",
        type=int,
        help="serving rounds, the models' order alternating; round r serves repeat r's exports,"
        " and serving verdicts pair the repeats' exports (default: the repeats)",
    )
    compare.add_argument(
        "--serving-batch-size", type=int, default=1, help="images per request (default: 1)"
    )
    compare.add_argument("--reports", default="reports", help="report folder (default: reports)")
    compare.add_argument("--sample", type=int, default=0, help="test image to infer (default: 0)")
    compare.add_argument(
        "--params",
        metavar="best-of:STUDY",
        help="train with a tuned study's best settings (e.g. best-of:mlp/tf, from `twinbench"
        " sweep`), its epochs included; they override the options above",
    )
    compare.add_argument("--storage", help="the study's storage, as for `twinbench sweep`")
    compare.add_argument(
        "--bench-seconds",
        type=float,
        default=2.0,
        help="per serving-cost measurement, when compare starts the services; 0 skips"
        " (default: %(default)s)",
    )
    sweep = sub.add_parser(
        "sweep",
        help="Optuna: tune each framework (TPE), compare both at the same points, cross-check",
    )
    sweep.add_argument("--model", choices=sorted(MODELS), default="mlp", help="(default: mlp)")
    sweep.add_argument(
        "--trials",
        type=int,
        default=50,
        help="finished (completed or pruned) trials per framework's study (default: %(default)s)",
    )
    sweep.add_argument(
        "--paired",
        type=int,
        help="points trained in both frameworks at the same settings (default: --trials)",
    )
    sweep.add_argument(
        "--epochs",
        type=int,
        help="cap on each trial's epochs, for small machines (default: none, the searched ones)",
    )
    sweep.add_argument(
        "--cross-repeats",
        type=int,
        default=3,
        help="repeats of each framework's best settings in both frameworks; 0 skips"
        " (default: %(default)s)",
    )
    sweep.add_argument(
        "--name", help="the sweep's studies are NAME/torch, NAME/tf, NAME/paired (default: model)"
    )
    sweep.add_argument(
        "--storage",
        help="a database URL (postgresql://..., sqlite:///...) that sweeps on several machines"
        " share, or a journal file (default: TWINBENCH_HOME/sweeps/journal.log)",
    )
    sweep.add_argument(
        "--resume", action="store_true", help="continue the sweep NAME where it stopped"
    )
    sweep.add_argument("--seed", type=int, default=0, help="samplers and jobs (default: 0)")
    sweep.add_argument("--dataset", help="(default: the model's)")
    sweep.add_argument("--train-samples", type=int, help="train on the first N rows only")
    sweep.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        help="seconds between a running trial's heartbeats; a trial silent for 6 of them is"
        " orphaned, marked failed and tried again (default: %(default)s)",
    )
    sweep.add_argument(
        "--prune-after",
        type=int,
        default=5,
        help="finished trials of a framework's study before it prunes: a trial whose validation"
        " loss at an epoch is worse than the median of the earlier trials' there is stopped and"
        " its job cancelled (default: %(default)s)",
    )
    sweep.add_argument("--reports", default="reports", help="report folder (default: reports)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    settings = load_settings()
    try:
        if args.command == "up":
            return cmd_up(settings, args)
        if args.command == "compare":
            return cmd_compare(settings, args)
        if args.command == "sweep":
            return cmd_sweep(settings, args)
        if args.command == "parity":
            return cmd_parity(args)
        if args.command == "data":
            return cmd_data(settings, args)
        if args.command == "code":
            return cmd_code(args)
        if args.command == "bench" and args.bench_command == "training":
            return cmd_bench_training(Client(args.gateway, settings), args)
        if args.command == "bench":
            return cmd_bench(settings, args)
        client = Client(args.gateway, settings)
        handler = {
            "train": cmd_train,
            "jobs": cmd_jobs,
            "cancel": cmd_cancel,
            "models": cmd_models,
            "infer": cmd_infer,
        }[args.command]
        return handler(client, args)
    except grpc.RpcError as exc:
        print(f"twinbench: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except TwinbenchError as exc:
        print(f"twinbench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
