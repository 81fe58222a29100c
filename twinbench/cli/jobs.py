"""`twinbench train`, `jobs`, `cancel`, `models` and `infer`: jobs and served models through the gateway."""

from __future__ import annotations

import argparse
import time

import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.console import describe_job, table, watch_all
from twinbench.client.inference import infer_one, sample_input
from twinbench.config import BOTH, FRAMEWORKS
from twinbench.jobs.request import state_name
from twinbench.rpc.channel import Client


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
    if args.framework in ("both", "all") and not args.overlap and not args.detach:
        # One after the other: run together, each job's figures would be taken under the other's
        # load (a job records whether that happened).
        finished = []
        for framework in BOTH if args.framework == "both" else FRAMEWORKS:
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
