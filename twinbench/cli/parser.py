"""The `twinbench` command's arguments: every subcommand and option, with its default in the help."""

from __future__ import annotations

import argparse

from twinbench.config import load_settings
from twinbench.experiments.disturbance import DISTURBANCE_LIMIT
from twinbench.experiments.serving_console import add_serving_options
from twinbench.jobs.precision import PRECISIONS
from twinbench.models.catalogue import MODELS
from twinbench.models.id_models import ID_MODELS


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
    up = sub.add_parser("up", help="start the gateway and the trainers on loopback until Ctrl-C")
    up.add_argument(
        "--frameworks",
        default="",
        help="the trainers to start, e.g. torch,tf (default: every installed one; jax needs"
        " requirements/jax_trainer.txt)",
    )
    train = sub.add_parser("train", help="train a model and follow its progress")
    train.add_argument("--framework", choices=["torch", "tf", "jax", "both", "all"], default="both")
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
    serving.add_argument(
        "--framework",
        choices=["torch", "tf", "jax"],
        default="torch",
        help="the framework whose exports are served (default: %(default)s)",
    )
    serving.add_argument(
        "--formats",
        default="",
        help="the exports served (default: onnx and the framework's own: onnx,torchscript,"
        " onnx,savedmodel or onnx,stablehlo)",
    )
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
    add_serving_options(serving)
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
        "--frameworks",
        default="torch,tf",
        help="first,second or three (torch,tf,jax: a line per pair; not with --lockstep)"
        " (default: %(default)s)",
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
    training.add_argument(
        "--repeats", type=int, help="(default: 3; 6 process pairs with --reference bare)"
    )
    add_until_decided(training, "repeats")
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
    lockstep = training.add_argument_group(
        "lockstep", "both arms on this host, timed in alternating short blocks (docs/lockstep.md)"
    )
    lockstep.add_argument(
        "--lockstep",
        action="store_true",
        help="each repeat a fresh pair of job workers here (no services), the idle one stopped;"
        " sequential jobs on the trainers where both cannot run here",
    )
    lockstep.add_argument(
        "--block-seconds",
        type=float,
        default=0.5,
        help="each block's length, the faster arm's (default: %(default)s)",
    )
    lockstep.add_argument(
        "--block-steps", type=int, help="steps per block (default: from --block-seconds)"
    )
    lockstep.add_argument(
        "--block-pairs",
        type=int,
        default=10,
        help="undisturbed block pairs per process pair (default: %(default)s)",
    )
    lockstep.add_argument(
        "--disturbance-limit",
        type=float,
        default=DISTURBANCE_LIMIT,
        help="a block pair is redone when, in either block, other processes and steal took more"
        " than this share of the job's CPUs (default: %(default)s)",
    )
    add_arm_threads(lockstep)
    lockstep.add_argument(
        "--reference",
        choices=["bare"],
        help="bare: time each framework's job worker in lockstep against a bare loop of the same"
        " model here, and report the harness's cost per framework (docs/lockstep.md)",
    )
    lockstep.add_argument(
        "--max-discards",
        type=int,
        help="redone block pairs per process pair before it is too disturbed (default: as many"
        " as --block-pairs)",
    )
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
        "--frameworks",
        default="torch,tf",
        choices=["torch,tf", "torch,jax"],
        help="PyTorch's weights copied into Keras (torch,tf) or Flax (torch,jax)"
        " (default: %(default)s)",
    )
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
        "compare",
        help="train in two or three frameworks, serve every export, compare (the main job)",
    )
    add_spec_options(compare, 5)
    compare.add_argument(
        "--frameworks",
        default="torch,tf",
        help="the two arms, first over second in every ratio (torch,jax); one framework twice"
        " (torch,torch) is an A/A run that shows the noise floor; three (torch,tf,jax) compare"
        " every pair, all lines one Holm family (default: %(default)s)",
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
        help="concurrent callers per served model in the load test; 0 skips load (default: 8)",
    )
    compare.add_argument(
        "--duration",
        default="5s",
        help="load per model and round, in alternating 1 s blocks (default: 5s)",
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
    compare.add_argument(
        "--serving-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="load each export in an open loop of R requests/s (each timed from when it fell"
        " due) instead of --users callers in a closed loop (default: the closed loop)",
    )
    compare.add_argument(
        "--arrivals",
        choices=("poisson", "constant"),
        default="poisson",
        help="with --serving-rate, the gaps between requests (default: %(default)s)",
    )
    compare.add_argument(
        "--tuned-batching",
        action="store_true",
        help="serve each export with the dynamic batching `twinbench bench serving"
        " --scenario tune` wrote to its config.pbtxt (default: the gateway's settings)",
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
        default=0.5,
        help="per serving-cost measurement, when compare starts the services; 0 skips"
        " (default: %(default)s; `twinbench bench serving` measures the same paths at length)",
    )
    add_until_decided(compare, "repeats", "the most lockstep pairs that fill a run")
    compare.add_argument(
        "--lockstep-pairs",
        type=int,
        default=None,
        help="after the repeats, also time training speed in this many lockstep process pairs on"
        " this host, both arms alive and trained in alternating short blocks (docs/lockstep.md);"
        " 0: none (default: as many as fill the run up to --lockstep-until when compare starts"
        " the services on this host itself, else none)",
    )
    compare.add_argument(
        "--lockstep-until",
        metavar="DURATION",
        default="5m40s",
        help="without --lockstep-pairs: add lockstep pairs (at least 4, at most --max-pairs)"
        " while the next one, as long as the last, ends within this time of the run's start,"
        " e.g. 5m40s, 15m (default: %(default)s)",
    )
    add_arm_threads(compare)
    compare.add_argument(
        "--disturbance-limit",
        type=float,
        default=DISTURBANCE_LIMIT,
        help="lockstep pairs and serving blocks: a block pair is redone when, in either block,"
        " other processes and steal took more than this share of the CPUs (default: %(default)s)",
    )
    sweep = sub.add_parser(
        "sweep",
        help="Optuna: tune each framework (TPE), compare both at the same points, cross-check",
    )
    sweep.add_argument("--model", choices=sorted(MODELS), default="mlp", help="(default: mlp)")
    sweep.add_argument(
        "--frameworks",
        default="torch,tf",
        help="the two frameworks tuned and compared, first over second, e.g. torch,jax"
        " (default: %(default)s)",
    )
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


def add_arm_threads(command) -> None:
    command.add_argument(
        "--arm-threads",
        metavar="FIRST,SECOND",
        help="lockstep pairs only: each arm's intra-op threads, e.g. 1,2 to handicap the first"
        " arm in a positive control (default: the settings' own, the same for both)",
    )


def add_until_decided(
    command: argparse.ArgumentParser, unit: str, max_pairs_also: str = ""
) -> None:
    """--until-decided, --budget and --max-pairs: add pairs until every line is decided.
    `max_pairs_also`: what else --max-pairs bounds in this command."""
    command.add_argument(
        "--until-decided",
        action="store_true",
        help=f"instead of a fixed number of {unit}, add pairs (a new seed for both arms, A B B A"
        " ...) until every line names a winner or is equivalent, looking after every pair from"
        " the fourth (fewer can decide nothing), with anytime-valid tests (docs/verdicts.md)",
    )
    command.add_argument(
        "--budget",
        metavar="DURATION",
        help="with --until-decided: stop adding pairs once this time is spent, e.g. 20m, 1h,"
        " 1h30m (default: no budget)",
    )
    command.add_argument(
        "--max-pairs",
        type=int,
        default=20,
        help="with --until-decided: stop after this many pairs (default: %(default)s)"
        + (f"; also {max_pairs_also}" if max_pairs_also else ""),
    )
