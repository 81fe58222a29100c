"""Job requests drawn at random (hypothesis, derandomized): each one is either refused at
creation, with INVALID_ARGUMENT or FAILED_PRECONDITION, or passes every check its job's worker
makes; and a score of accepted tiny ones run, in this process, to their first training step.

Drawn: every field of the spec, in range, at and just past the edges of its range, and anywhere
in its type; names known and unknown; and, for the checks that need no training, the trainer's
hardware (CPUs, bfloat16, GPUs, its worker limit). The counts go to the run's summary (tally).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally import TALLY
from twinbench.api import trainer_pb2 as tpb
from twinbench.config import load_settings
from twinbench.errors import FailedPrecondition, InvalidArgument, JobCancelled
from twinbench.jobs import precision
from twinbench.jobs.hardware import Hardware, gpu_count, probe_hardware
from twinbench.jobs.request import (
    RANGES,
    check_ranges,
    check_runnable,
    devices_of,
    is_distributed,
    job_model,
    resolve_spec,
    workers_of,
)
from twinbench.trainer.queue import JobManager, JobStore
from twinbench.trainer.worker_group import _launch_commands

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MODELS = ["mlp", "lenet5", "mnist_cnn", "cnn3", "resnet50", "alexnet", "mobilenet_v2",
          "vgg16_finetune", "ncf", "gnmt", "dqn_cartpole", "resnet9000", ""]  # fmt: skip
DATASETS = ["", "mnist-5k", "digits", "synthetic", "mnist", "ml-1m", "CartPole-v1", "imagenet",
            "imagefolder:cats", "imagefolder:../etc"]  # fmt: skip
FRAMEWORK_PATHS = {
    "torch": "twinbench.frameworks.torch.framework:TorchFramework",
    "tf": "twinbench.frameworks.tf.framework:TFFramework",
}
COMMON = dict(
    derandomize=True,  # the same draws on every run: CI stays stable
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CREATION_DRAWS = 600
# Tiny requests drawn on this machine, and how many of the accepted ones run to their first step
# (hypothesis draws in clumps, so a fixed number of draws would run a varying number).
RUN_DRAWS = 80
RUNS = 20
# What this module's draws came to, for the checks at its end that the property was not vacuous.
# (The draws are fixed for a given code base and test selection: hypothesis also draws constants
# it finds in the code it has loaded.)
OUTCOMES: dict[str, Counter[str]] = {"drawn": Counter(), "tiny": Counter()}


def _field_type_bounds(name: str) -> tuple[int, int]:
    field = name.split(".")[-1]
    message = tpb.Optimizer if name.startswith("optimizer.") else tpb.JobSpec
    kind = message.DESCRIPTOR.fields_by_name[field].type
    return INT64 if kind == FieldDescriptor.TYPE_INT64 else INT32


def _number(name: str, style: str) -> st.SearchStrategy:
    """A value for the numeric field `name`: often unset; else inside its range, at or just past
    its edges, or anywhere its type allows (a double: NaN and the infinities too). `style`:
    "any" draws all of these alike, "valid" and "tiny" seldom leave the range ("tiny" keeps
    counts small)."""
    allowed = RANGES[name]
    if allowed.real:
        inside = st.floats(
            allowed.low, allowed.high, exclude_min=allowed.low_open, exclude_max=allowed.high_open
        )
        edges = st.sampled_from([allowed.low, allowed.high, allowed.low - 1e-9, allowed.high * 1.5,
                                 0.0, -1.0, 7.0])  # fmt: skip
        anywhere = st.floats(allow_nan=True, allow_infinity=True)
    else:
        low, high = int(allowed.low), int(allowed.high)
        type_low, type_high = _field_type_bounds(name)
        small = style == "tiny" and name != "seed"  # few steps; any seed
        top = min(high, 64) if small else high
        # hypothesis favours small integers and first branches: the top of the range first
        inside = st.one_of(st.sampled_from([top, low]), st.integers(low, top))
        edges = st.sampled_from(
            [v for v in (low, high, low - 1, high + 1, 0, -1) if type_low <= v <= type_high]
        )
        anywhere = st.integers(type_low, type_high)
    if style == "any":
        return st.one_of(st.none(), st.none(), st.none(), inside, edges, anywhere)
    # "valid": mostly unset, one in 49 past an edge; "tiny": set more often, one in 40
    kinds = ["unset", "unset", "unset", "inside"] * 12 + ["edge"]
    if style == "tiny":
        kinds = ["unset", "inside", "inside"] * 13 + ["edge"]
    return st.sampled_from(kinds).flatmap(
        lambda kind: st.none() if kind == "unset" else inside if kind == "inside" else edges
    )


KNOBS = ("resnet50", "alexnet", "mobilenet_v2", "vgg16_finetune")
# Which fields a model takes (a valid request sets no others); hidden_units: how many.
APPLIES = {
    "env_steps": lambda model: model == "dqn_cartpole",
    "width": lambda model: model in (*KNOBS, "ncf", "gnmt"),
    "image_size": lambda model: model in KNOBS,
    "train_samples": lambda model: model != "dqn_cartpole",
    "target_accuracy": lambda model: model != "dqn_cartpole",
    "workers": lambda model: model not in ("dqn_cartpole", "ncf", "gnmt"),
    "devices_per_worker": lambda model: model not in ("dqn_cartpole", "ncf", "gnmt"),
    "hidden_units": lambda model: model not in ("ncf", "gnmt", "resnet9000", ""),
}


def _hidden_layers(model: str) -> int:
    return len(job_model(tpb.JobSpec(framework="torch", model=model)).hidden_units())


def _choose(draw, style: str, good: list, bad: list):
    """One of `good`, or of `bad`: never in the "tiny" style, seldom in "valid", often in
    "any"."""
    if (
        bad
        and style != "tiny"
        and draw(st.sampled_from([False] * (2 if style == "any" else 29) + [True]))
    ):
        return draw(st.sampled_from(bad))
    return draw(st.sampled_from(good))


@st.composite
def job_specs(draw, tiny: bool = False) -> tpb.JobSpec:
    """A CreateJob request's spec. `tiny`: an MLP or LeNet-5 on small data, with few steps, that
    can run here in seconds; else any model, half of the requests mostly valid and half mostly
    not (a request with any one field wrong is refused)."""
    style = "tiny" if tiny else draw(st.sampled_from(["valid", "any"]))

    def choose(good: list, bad: list):
        return _choose(draw, style, good, bad)

    spec = tpb.JobSpec()
    spec.framework = choose(["torch", "tf"], [] if tiny else ["both", "mxnet", ""])
    if tiny:
        spec.model = choose(["mlp", "mlp", "lenet5"], [])
        spec.dataset = choose(["", "mnist-5k", "digits", "synthetic"], [])
        spec.train_samples = draw(st.integers(1, 256))
        spec.skip_export = True  # the run stops after its first step anyway
    else:
        spec.model = choose(MODELS[:-2], MODELS[-2:])
        small = spec.model in ("mlp", "lenet5", "mnist_cnn")
        fits = ["", "mnist-5k", "digits", "synthetic"] if small else ["", "synthetic"]
        spec.dataset = choose(fits if spec.model != "dqn_cartpole" else [""], DATASETS)
        spec.skip_export = draw(st.booleans())
        spec.resume, spec.compiled = (choose([False, False, True], [True]) for _ in range(2))
        spec.pretrained_weights = choose([""], ["vgg16/weights.pth", "../weights.pth"])
        formats = st.lists(st.sampled_from(["torchscript", "onnx", "savedmodel", "pt"]), max_size=2)
        spec.export_formats.extend(choose([[]], [draw(formats)]))
    spec.device = choose(["", "auto", "cpu", "cuda"], ["tpu", "CUDA"])
    spec.init = choose(["", "shared", "framework"], ["he"])
    spec.precision = choose(["", "fp32", "mixed"], ["fp16"])
    spec.channels_last = choose([False, spec.model not in ("ncf", "gnmt")], [True])
    spec.optimizer.name = choose(["", "adam", "sgd"], ["lbfgs"])
    for name in RANGES:
        if style == "valid" and name in APPLIES and not APPLIES[name](spec.model):
            if not choose([False], [True]):
                continue
        if name == "hidden_units":
            units = _number(name, style).filter(lambda v: v is not None)
            if style == "any":
                count = draw(st.integers(0, 4))
            elif APPLIES[name](spec.model):
                count = choose([0, 0, 0, _hidden_layers(spec.model)], [1, 3])
            else:
                count = choose([0], [1])
            spec.hidden_units.extend(draw(st.lists(units, min_size=count, max_size=count)))
            continue
        if tiny and name in ("train_samples", "env_steps", "width", "image_size"):
            if name in ("width", "image_size") and choose([False], [True]):
                setattr(spec, name, 1.0 if name == "width" else 28)  # refused: no such knob
            continue
        if tiny and name in ("workers", "devices_per_worker"):
            value = choose([None, None, None, 1], [0, -1, 2])
        elif tiny and name == "epochs":
            value = choose([None, 1, 2], [0])
        else:
            value = draw(_number(name, style))
        if value is None:
            continue
        if name.startswith("optimizer."):
            setattr(spec.optimizer, name.split(".", 1)[1], value)
        else:
            setattr(spec, name, value)
    return spec


hardware = st.builds(
    Hardware,
    cpus=st.integers(1, 8),
    cpu_bf16=st.booleans(),
    gpus=st.sampled_from([0, 0, 0, 1, 2, 4]),
    max_workers=st.sampled_from([0, 0, 1, 2, 4]),
)


def _gpu_folder(root: Path, gpus: int) -> Path:
    """A /dev with `gpus` NVIDIA device files, for gpu_count to read."""
    folder = root / f"dev-{gpus}"
    folder.mkdir(exist_ok=True)
    for index in range(gpus):
        (folder / f"nvidia{index}").touch()
    return folder


def worker_checks(spec: tpb.JobSpec, machine: Hardware, dev_root: Path) -> None:
    """Everything a job's worker processes check before their first step that needs no
    framework: each raises (and fails the test) where a worker would refuse the job."""
    # A worker run by Kubernetes resolves the recorded spec again: it must come back unchanged.
    assert resolve_spec(spec) == spec
    check_ranges(spec)
    model = job_model(spec)  # the training loop's first call
    # The processes the trainer starts (twinbench.trainer.worker_group), each with its own view
    # of the GPUs (TensorFlow's workers get a slice of CUDA_VISIBLE_DEVICES), and the count that
    # each worker's load_collective holds against its world size.
    if is_distributed(spec):
        commands = _launch_commands(FRAMEWORK_PATHS[spec.framework], spec, {})
        if spec.framework == "torch":
            ((command, env),) = commands
            processes = int(command[command.index("--nproc-per-node") + 1])
            envs = [env] * processes
        else:
            envs = [env for _, env in commands]
        expected = workers_of(spec) * (devices_of(spec) if spec.framework == "torch" else 1)
        assert len(envs) == expected
        dev = _gpu_folder(dev_root, machine.gpus)
        for env in envs:
            view = dataclasses.replace(machine, gpus=gpu_count(dev, env))
            check_runnable(spec, view, all_workers_here=False)
    else:
        check_runnable(spec, machine)  # the worker's own call, on the trainer's machine
    # The precision its session computes in (the sessions' own guard).
    on_gpu = spec.device != "cpu" and machine.gpus > 0
    with mock.patch.object(precision, "cpu_has_bf16", lambda: machine.cpu_bf16):
        dtype = precision.compute_dtype(spec.precision, on_gpu)
    assert dtype != "float16" or on_gpu  # never float16 on a CPU
    assert model is not None


@pytest.fixture(scope="module")
def managers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drawn-jobs")
    made = {
        fw: JobManager(
            fw,
            JobStore(folder / f"{fw}.sqlite"),
            lambda job, ctx: None,
            10**9,
            Hardware(cpus=2, cpu_bf16=False, gpus=0),  # drawn anew for each request
        )
        for fw in ("torch", "tf")
    }
    yield made, folder
    for manager in made.values():
        manager.store.close()


def _create(manager: JobManager, spec: tpb.JobSpec, outcomes: Counter[str]) -> tpb.Job | None:
    """The trainer's CreateJob: the job, or None when it was refused with one of the two codes
    (any other error fails the test)."""
    TALLY["job requests drawn"] += 1
    try:
        job = manager.create(spec)
    except FailedPrecondition:
        TALLY["job requests refused: FAILED_PRECONDITION"] += 1
        outcomes["precondition"] += 1
        return None
    except InvalidArgument:
        TALLY["job requests refused: INVALID_ARGUMENT"] += 1
        outcomes["invalid"] += 1
        return None
    TALLY["job requests accepted"] += 1
    outcomes["accepted"] += 1
    return job


@settings(max_examples=CREATION_DRAWS, **COMMON)
@given(spec=job_specs(), machine=hardware)
def test_each_request_is_refused_at_creation_or_passes_the_workers_checks(managers, spec, machine):
    made, folder = managers
    manager = made.get(spec.framework, made["torch"])
    manager.hardware = machine
    job = _create(manager, spec, OUTCOMES["drawn"])
    if job is not None:
        assert job.state == tpb.QUEUED
        worker_checks(job.spec, machine, folder)


class FirstStep:
    """A JobContext that lets one training step run, then cancels the job."""

    def __init__(self, job: tpb.Job) -> None:
        self.job = job
        self.shutting_down = False
        self.steps = 0

    def check_cancelled(self) -> None:  # called before every step
        if self.steps >= 1:
            raise JobCancelled()
        self.steps += 1

    def progress(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        pass

    def update(self, change) -> None:
        change(self.job)

    def epoch_done(self, metrics: tpb.EpochMetrics) -> None:
        self.job.epochs.append(metrics)


@pytest.fixture(scope="module")
def machine_here(tmp_path_factory):
    """This machine as its trainer sees it, the frameworks loaded in this process, and a home."""
    from twinbench.frameworks.tf.framework import TFFramework
    from twinbench.frameworks.torch.framework import TorchFramework
    from twinbench.serving.repository import ModelRepository

    home = tmp_path_factory.mktemp("first-steps")
    env = {"TWINBENCH_HOME": str(home)}
    here = load_settings(env)
    made = {
        fw: JobManager(
            fw, JobStore(home / f"{fw}.sqlite"), lambda job, ctx: None, 10**9, probe_hardware(here)
        )
        for fw in ("torch", "tf")
    }
    frameworks = {"torch": TorchFramework(), "tf": TFFramework()}
    yield made, frameworks, here, ModelRepository(here.model_repository), home
    for manager in made.values():
        manager.store.close()


@pytest.mark.integration
@settings(max_examples=RUN_DRAWS, **COMMON)
@given(spec=job_specs(tiny=True))
def test_accepted_requests_run_to_their_first_training_step(machine_here, spec):
    """Tiny requests on this machine's real hardware: each accepted one passes the worker's
    checks, and the first RUNS of them then run, as their worker would run them, until their
    first step is done."""
    from twinbench.training.loop import run_training

    made, frameworks, here, repository, home = machine_here
    manager = made[spec.framework]
    job = _create(manager, spec, OUTCOMES["tiny"])
    if job is None:
        return
    worker_checks(job.spec, manager.hardware, home)
    if is_distributed(job.spec):  # its workers are processes of their own: not run here
        TALLY["accepted draws not run: data-parallel"] += 1
        return
    if OUTCOMES["tiny"]["ran"] >= RUNS:
        TALLY["accepted draws not run: enough ran"] += 1
        return
    # The worker's first act: the same check, on its own probe of the machine.
    check_runnable(job.spec, probe_hardware(here))
    ctx = FirstStep(job)
    try:
        run_training(frameworks[job.spec.framework], repository, here, job, ctx)
    except JobCancelled:
        pass  # after its first step, as asked
    assert ctx.steps == 1
    assert job.precision in ("fp32", "mixed bfloat16", "mixed float16")
    assert job.parameter_count > 0 and job.device
    TALLY["accepted draws run to their first training step"] += 1
    OUTCOMES["tiny"]["ran"] += 1


def test_the_draws_took_every_path():
    """Runs after the two above (pytest keeps a module's order): each outcome was drawn often
    enough for the property to mean something, whatever constants hypothesis picked up."""
    drawn, tiny = OUTCOMES["drawn"], OUTCOMES["tiny"]
    if not drawn and not tiny:
        pytest.skip("the property tests did not run in this session")
    if drawn:
        assert min(drawn["accepted"], drawn["invalid"]) >= 50, drawn
        assert drawn["precondition"] >= 10, drawn
    if tiny:  # the run-to-first-step test ran (an integration test)
        assert tiny["ran"] == RUNS, tiny
