"""The `twinbench` command: start the services, train, inspect jobs and models, infer, compare."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.client import Client
from twinbench.config import FRAMEWORKS, Settings, load_settings
from twinbench.errors import TwinbenchError
from twinbench.jobs import TERMINAL, state_name
from twinbench.launcher import LocalStack, is_serving
from twinbench.specs import MODELS
from twinbench.tensors import infer_request, output_array

# --- job progress ---


class ProgressPrinter:
    """Prints epochs and state changes as lines, and batch progress on one rewritten line (TTY)."""

    def __init__(self, stream=sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lock = threading.Lock()
        self.status: dict[str, str] = {}

    def line(self, text: str) -> None:
        with self.lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self._redraw()

    def progress(self, job_id: str, text: str) -> None:
        with self.lock:
            self.status[job_id] = text
            self._redraw()

    def _redraw(self) -> None:
        if self.tty and self.status:
            self.stream.write("\r\033[K" + " | ".join(self.status.values()))
        self.stream.flush()

    def done(self, job_id: str) -> None:
        with self.lock:
            self.status.pop(job_id, None)


def watch(client: Client, job_id: str, printer: ProgressPrinter) -> tpb.Job:
    """Follows one job's event stream to its end and returns the final record."""
    framework = job_id.split("-", 1)[0]
    last: tpb.Job | None = None
    for event in client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job_id)):
        kind = event.WhichOneof("event")
        if kind == "job":
            if last is None or event.job.state != last.state:
                printer.line(f"[{framework}] {job_id}: {state_name(event.job.state)}")
            last = event.job
        elif kind == "epoch":
            e = event.epoch
            printer.line(
                f"[{framework}] epoch {e.epoch}: loss {e.train_loss:.4f} acc {e.train_accuracy:.4f}"
                f" | val loss {e.val_loss:.4f} acc {e.val_accuracy:.4f}"
                f" | {e.seconds:.2f} s, {e.samples_per_second:,.0f} samples/s"
            )
        else:
            p = event.progress
            printer.progress(
                job_id, f"{framework} e{p.epoch} {p.batch}/{p.batches} loss {p.loss:.4f}"
            )
    printer.done(job_id)
    if last is None or last.state not in TERMINAL:
        return client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
    return last


def watch_all(client: Client, jobs: list[tpb.Job]) -> list[tpb.Job]:
    printer = ProgressPrinter()
    results: dict[str, tpb.Job] = {}

    def follow(job: tpb.Job) -> None:
        results[job.id] = watch(client, job.id, printer)

    threads = [threading.Thread(target=follow, args=(job,), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[job.id] for job in jobs]


# --- tables ---


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def describe_job(job: tpb.Job) -> str:
    spec, opt = job.spec, job.spec.optimizer
    lines = [
        f"job {job.id}: {state_name(job.state)}" + (f" ({job.error})" if job.error else ""),
        f"  spec: {spec.framework} {spec.model} on {spec.dataset}, {spec.epochs} epochs,"
        f" batch {spec.batch_size}, {opt.name} lr {opt.learning_rate:g}"
        + (f" momentum {opt.momentum:g}" if opt.name == "sgd" else f" eps {opt.epsilon:g}")
        + f", seed {spec.seed}, device {spec.device}, init {spec.init}",
        f"  ran on: {job.device or '-'} ({job.framework_version or '-'}),"
        f" {job.parameter_count:,} parameters",
    ]
    if job.epochs:
        headers = [
            "epoch",
            "train loss",
            "train acc",
            "val loss",
            "val acc",
            "seconds",
            "samples/s",
        ]
        rows = [
            [
                e.epoch,
                f"{e.train_loss:.4f}",
                f"{e.train_accuracy:.4f}",
                f"{e.val_loss:.4f}",
                f"{e.val_accuracy:.4f}",
                f"{e.seconds:.2f}",
                f"{e.samples_per_second:,.0f}",
            ]
            for e in job.epochs
        ]
        lines.append("  " + table(headers, rows).replace("\n", "\n  "))
    if job.state == tpb.SUCCEEDED:
        lines.append(
            f"  test: loss {job.test_loss:.4f}, accuracy {job.test_accuracy:.4f}"
            f"\n  time: train {job.train_seconds:.2f} s, of which warm-up (first step)"
            f" {job.warmup_seconds:.3f} s; steady {job.steady_samples_per_second:,.0f} samples/s"
            f"\n  memory: peak RSS {job.peak_rss_bytes / 2**20:.0f} MiB, peak GPU "
            + (f"{job.peak_gpu_bytes / 2**20:.0f} MiB" if job.peak_gpu_bytes else "- (CPU)")
        )
        if spec.HasField("target_accuracy"):
            lines.append(
                f"  target val accuracy {spec.target_accuracy:g}: "
                + (
                    f"epoch {job.target_epoch}, after {job.time_to_target_seconds:.2f} s"
                    if job.target_epoch
                    else "not reached"
                )
            )
        n = job.num_classes
        if n and len(job.confusion_matrix) == n * n:
            matrix = np.array(job.confusion_matrix).reshape(n, n)
            lines.append("  confusion matrix (rows: true class):")
            lines += ["    " + " ".join(f"{v:4d}" for v in row) for row in matrix]
    if job.fairness:
        lines.append("  settings that differ by default between the frameworks, as set here:")
        lines += [f"    {key}: {value}" for key, value in sorted(job.fairness.items())]
    for e in job.exports:
        lines.append(
            f"  export {e.model_name} v{e.version}: {e.path} sha256 {e.sha256[:12]}"
            f" max|diff| {e.max_abs_diff:.2e}"
        )
    return "\n".join(lines)


# --- commands ---


def spec_from_args(args: argparse.Namespace, framework: str) -> tpb.JobSpec:
    spec = tpb.JobSpec(framework=framework, model=args.model, dataset=args.dataset or "")
    for field in ("epochs", "batch_size", "seed", "train_samples"):
        value = getattr(args, field)
        if value is not None:
            setattr(spec, field, value)
    if args.device:
        spec.device = args.device
    if args.init:
        spec.init = args.init
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
    jobs = list(
        client.trainer.CreateJob(
            tpb.CreateJobRequest(spec=spec_from_args(args, args.framework))
        ).jobs
    )
    for job in jobs:
        print(f"queued {job.id}")
    if args.detach:
        return 0
    finished = watch_all(client, jobs)
    for job in finished:
        print(describe_job(job))
    return 0 if all(j.state == tpb.SUCCEEDED for j in finished) else 1


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
            f"{len(j.epochs)}/{j.spec.epochs}",
            f"{j.test_accuracy:.4f}" if j.state == tpb.SUCCEEDED else "-",
            f"{j.train_seconds:.1f}" if j.state == tpb.SUCCEEDED else "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at)),
        ]
        for j in jobs
    ]
    headers = ["job", "state", "model", "dataset", "epochs", "test acc", "train s", "created"]
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


def infer_sample(client: Client, model: str, sample: int, version: str = "") -> np.ndarray:
    """Logits of one test image of the embedded dataset, through the gateway."""
    from twinbench.datasets import load_dataset

    test = load_dataset("mnist-5k").test
    if not 0 <= sample < len(test):
        raise SystemExit(f"--sample must be 0..{len(test) - 1}")
    request = infer_request(model, test.x[sample : sample + 1], version=version)
    return output_array(client.inference.ModelInfer(request), "logits")[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    from twinbench.datasets import load_dataset

    logits = infer_sample(client, args.model, args.sample, args.version or "")
    label = load_dataset("mnist-5k").test.y[args.sample]
    probs = softmax(logits)
    print(
        f"{args.model}: sample {args.sample} -> class {int(logits.argmax())} (true class {label})"
    )
    rows = [[c, f"{logits[c]:.4f}", f"{probs[c]:.4f}"] for c in range(len(logits))]
    print(table(["class", "logit", "probability"], rows))
    return 0


@contextlib.contextmanager
def services(settings: Settings, address: str) -> Iterator[tuple[str, LocalStack | None]]:
    """The gateway's address and the stack behind it: the running one (no stack), or a local
    stack started now and stopped after."""
    if is_serving(address, tls_ca=settings.tls_ca):
        yield address, None
        return
    print(f"no gateway at {address}; starting the services (state in {settings.home})")
    with LocalStack(settings) as stack:
        yield stack.gateway_address, stack
    print("stopped the services it started")


def cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.datasets import load_dataset
    from twinbench.loadtest import run_locust
    from twinbench.report import build_results, write_report
    from twinbench.serving_stats import server_compute_ms

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report_dir = Path(args.reports).resolve() / f"{stamp}-{args.model}"
    finished: list[tpb.Job] = []
    serving: list[dict] = []
    serving_cost: dict | None = None
    with services(settings, args.gateway) as (address, stack):
        client = Client(address, settings)
        # One framework at a time: run together, they would share the CPU and skew the timings.
        for framework in FRAMEWORKS:
            spec = spec_from_args(args, framework)
            jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
            finished += watch_all(client, list(jobs))
        exports = [(job, e) for job in finished if job.state == tpb.SUCCEEDED for e in job.exports]
        predictions = {  # one inference to each export through the gateway
            e.model_name: infer_sample(client, e.model_name, args.sample, e.version)
            for _, e in exports
        }
        client.close()
        if args.users > 0 and exports:
            report_dir.mkdir(parents=True, exist_ok=True)
            inputs = report_dir / "inputs.npy"  # the same real test images for every model
            np.save(inputs, load_dataset("mnist-5k").test.x[: 64 * args.serving_batch_size])
            for job, export in exports:
                print(f"load test: {export.model_name}, {args.users} users for {args.duration}")
                stats = run_locust(
                    address, export.model_name, args.users, args.duration,
                    args.serving_batch_size, inputs, report_dir / "locust" / export.model_name,
                )  # fmt: skip
                serving.append(
                    {
                        "model_name": export.model_name,
                        "version": export.version,
                        "framework": job.spec.framework,
                        "format": export.format,
                        **stats,
                        "server_compute_ms": server_compute_ms(
                            address, settings, export.model_name
                        ),
                    }
                )
        if stack and args.bench_seconds > 0 and exports:
            serving_cost = serving_cost_of(stack, [e for _, e in exports], args.bench_seconds)
    load = {
        "users": max(args.users, 1),
        "duration": args.duration,
        "batch_size": args.serving_batch_size,
        "host": address,
    }
    command = "twinbench " + " ".join(args.argv)
    results = build_results(finished, serving, load, command, serving_cost)
    write_report(report_dir, results)
    for job in finished:
        if job.state != tpb.SUCCEEDED:
            print(f"{job.id} {state_name(job.state)}: {job.error}", file=sys.stderr)
    t = results["training"]
    print(
        table(
            ["framework", "test acc", "train s", "steady s/epoch", "export", f"sample {args.sample} ->"],
            [
                [job.spec.framework, f"{job.test_accuracy:.4f}", f"{job.train_seconds:.1f}",
                 f"{t[job.spec.framework]['steady_epoch_seconds']:.2f}",
                 f"{e.model_name} v{e.version}",
                 f"{int(predictions[e.model_name].argmax())}"
                 f" ({softmax(predictions[e.model_name]).max():.3f})"]
                for job, e in exports
            ],
        )
    )  # fmt: skip
    if serving:
        print(
            table(
                ["served model", "req/s", "p50 ms", "p99 ms", "failures"],
                [
                    [s["model_name"], f"{s['requests_per_second']:.1f}",
                     f"{s['latency_ms']['p50']:.1f}", f"{s['latency_ms']['p99']:.1f}",
                     str(s["failures"])]
                    for s in serving
                ],
            )
        )  # fmt: skip
    for v in results["verdict"]:
        print(f"{v['question']}: {v['winner']} ({v['ratio']:.2f}x; {v['detail']})")
    print(f"report: {report_dir / 'report.html'}")
    return 0 if all(j.state == tpb.SUCCEEDED for j in finished) else 1


def serving_cost_of(stack: LocalStack, exports: list, seconds: float) -> dict:
    """The serving benchmark's paths b-d on compare's own stack, for the report."""
    import dataclasses

    from twinbench.bench import bench_stack, ratios, setup, summary
    from twinbench.datasets import load_dataset

    print(f"serving cost: the trainers directly, the gateway, with batching ({seconds:g} s each)")
    how = setup(stack.settings)
    image = load_dataset("mnist-5k").test.x[:1]
    requests = {
        e.model_name: infer_request(e.model_name, image, version=e.version).SerializeToString()
        for e in exports
    }
    figures = bench_stack(stack, requests, (1, 32), seconds, report=lambda f: None)
    for line in summary(figures):
        print(line)
    return {
        "figures": [dataclasses.asdict(f) for f in figures],
        "summary": ratios(figures),
        "note": "load from one process beside the services, sharing their CPUs"
        " (twinbench bench serving gives the load a CPU of its own)",
        **how,
    }


def cmd_parity(args: argparse.Namespace) -> int:
    from twinbench.parity import PARITY_TOLERANCE, check_parity

    failed = 0
    for name in args.model or sorted(MODELS):
        result = check_parity(name, seed=args.seed)
        failed += not result.ok
        print(
            f"{name}: {result.parameters:,} parameters, {result.rows} test images,"
            f" max |torch - keras| logits {result.max_abs_diff:.2e}"
            f" ({'ok' if result.ok else 'FAILED'}, tolerance {PARITY_TOLERANCE:g})"
        )
    return 1 if failed else 0


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.download import download

    root = Path(args.dir).resolve() if args.dir else settings.data
    for line in download(args.name, root):
        print(line)
    print(f"{args.name} is ready in {root / args.name}")
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.bench import (
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


def add_spec_options(p: argparse.ArgumentParser, epochs_default: int | None) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default="lenet5", help="(default: lenet5)")
    p.add_argument(
        "--dataset",
        help="mnist-5k, digits, mnist, fashion-mnist, imagefolder:PATH (under the data folder)"
        " or synthetic (default: the model's)",
    )
    p.add_argument(
        "--target-accuracy", type=float, help="record when validation accuracy first reaches it"
    )
    p.add_argument(
        "--epochs", type=int, default=epochs_default, help="(default: %(default)s, or the model's)"
    )
    p.add_argument("--batch-size", type=int, help="(default: the model's)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="(default: the model's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: the model's)")
    p.add_argument("--seed", type=int, help="(default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--train-samples", type=int, help="train on the first N rows only")
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
    fetch = data_sub.add_parser("download", help="fetch a dataset's IDX files (sha256-checked)")
    fetch.add_argument("name", choices=["mnist", "fashion-mnist"])
    fetch.add_argument(
        "--dir", help="data folder (default: TWINBENCH_DATA, or TWINBENCH_HOME/data)"
    )
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    serving = bench_sub.add_parser(
        "serving", help="runtime vs trainer vs gateway vs gateway with dynamic batching"
    )
    serving.add_argument("--model", choices=sorted(MODELS), default="lenet5")
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
    parity = sub.add_parser(
        "parity", help="copy PyTorch weights into Keras and compare logits (exit 1 above 1e-5)"
    )
    parity.add_argument(
        "--model", action="append", choices=sorted(MODELS), help="(default: every model)"
    )
    parity.add_argument("--seed", type=int, default=0, help="(default: 0)")
    compare = sub.add_parser(
        "compare", help="train in both frameworks, serve every export, compare (the main job)"
    )
    add_spec_options(compare, 5)
    compare.add_argument(
        "--users",
        type=int,
        default=8,
        help="Locust users per served model; 0 skips load (default: 8)",
    )
    compare.add_argument(
        "--duration", default="20s", help="Locust run time per model (default: 20s)"
    )
    compare.add_argument(
        "--serving-batch-size", type=int, default=1, help="images per request (default: 1)"
    )
    compare.add_argument("--reports", default="reports", help="report folder (default: reports)")
    compare.add_argument("--sample", type=int, default=0, help="test image to infer (default: 0)")
    compare.add_argument(
        "--bench-seconds",
        type=float,
        default=2.0,
        help="per serving-cost measurement, when compare starts the services; 0 skips"
        " (default: %(default)s)",
    )
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
        if args.command == "parity":
            return cmd_parity(args)
        if args.command == "data":
            return cmd_data(settings, args)
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


if __name__ == "__main__":
    sys.exit(main())
