"""A job request, free of gRPC: its checks, its defaults resolved, and the model it names."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from twinbench import __version__
from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import check_dataset_fits, check_dataset_name, check_id_dataset
from twinbench.errors import FailedPrecondition, InvalidArgument
from twinbench.jobs.hardware import Hardware
from twinbench.jobs.precision import NO_BF16, PRECISIONS
from twinbench.models.catalogue import get_model_spec
from twinbench.models.id_models import GNMT, ID_MODELS, NeuMF, id_model
from twinbench.models.imagenet import FINE_TUNING
from twinbench.models.initial_weights import INIT_MODES
from twinbench.models.spec import ModelSpec
from twinbench.models.tasks import FIRST_TOKEN
from twinbench.serving.repository import FRAMEWORK_FORMATS

log = logging.getLogger(__name__)

TERMINAL = (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELLED)
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")


# <framework>-<12 hex digits>: the prefix names the trainer that owns the job.
JOB_ID = re.compile(rf"^({'|'.join(FRAMEWORK_FORMATS)})-[0-9a-f]{{12}}$")


@dataclass(frozen=True)
class Range:
    """The values a numeric field may take: closed, or open at either end. Its text is how the
    range is written in messages, in trainer.proto and in docs/job-requests.md."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    real: bool = False  # a double, written as an interval; an integer is written low..high

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)):
            return False
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # NaN is in no range

    def __str__(self) -> str:
        if not self.real:
            return f"{int(self.low)}..{int(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


def _real(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open, real=True)


# Every numeric field of a job request and its range: the one place in code that says them. A
# field that is set is checked against it before the job is accepted (unset fields take their
# defaults, which hold to it too); trainer.proto states the same ranges (a test holds the two
# equal). Repeated fields (hidden_units): each value.
RANGES: dict[str, Range] = {
    "epochs": Range(1, 10_000),
    "batch_size": Range(1, 65_536),
    # Keras seeds NumPy's global generator with it, which takes 32 bits.
    "seed": Range(0, 2**32 - 1),
    "train_samples": Range(1, 2**31 - 1),
    "target_accuracy": _real(0, 1),  # 0: reached at the first evaluation
    "warmup_steps": Range(0, 1_000_000),
    "width": _real(0, 4, low_open=True),
    "image_size": Range(16, 1024),
    "hidden_units": Range(1, 65_536),
    "workers": Range(1, 64),
    "devices_per_worker": Range(1, 16),
    "env_steps": Range(1, 10_000_000),
    "optimizer.learning_rate": _real(0, 10, low_open=True),
    "optimizer.momentum": _real(0, 1, high_open=True),
    "optimizer.epsilon": _real(0, 1, low_open=True, high_open=True),
}
# Knobs that some models take in a narrower range: a fine-tuned base and the id models scale only
# down, and the fine-tuned VGG needs 32 pixels for its five pools.
MODEL_RANGES: dict[tuple[str, str], Range] = {
    **{("width", name): _real(0, 1, low_open=True) for name in (*FINE_TUNING, *ID_MODELS)},
    **{("image_size", name): Range(32, 1024) for name in FINE_TUNING},
}


def range_of(name: str, model: str = "") -> Range:
    """The range of the field `name` (a key of RANGES) for jobs of `model`."""
    return MODEL_RANGES.get((name, model), RANGES[name])


def _set_numbers(spec: tpb.JobSpec) -> Iterator[tuple[str, list[float]]]:
    """(name, values) of every numeric field the request sets, in RANGES' order."""
    for name in RANGES:
        owner: Message = spec
        field = name
        if name.startswith("optimizer."):
            owner, field = spec.optimizer, name.split(".", 1)[1]
        if owner.DESCRIPTOR.fields_by_name[field].is_repeated:
            values = list(getattr(owner, field))
        else:
            values = [getattr(owner, field)] if owner.HasField(field) else []
        if values:
            yield name, values


def check_ranges(spec: tpb.JobSpec) -> None:
    """InvalidArgument naming the first field set outside its range, and that range."""
    for name, values in _set_numbers(spec):
        allowed = range_of(name, spec.model)
        bad = [v for v in values if v not in allowed]
        if not bad:
            continue
        narrower = f" for {spec.model}" if (name, spec.model) in MODEL_RANGES else ""
        if name == "hidden_units":
            raise InvalidArgument(f"{name} must each be {allowed}{narrower}, got {values}")
        if allowed.real:
            raise InvalidArgument(f"{name} must be in {allowed}{narrower}, got {bad[0]:g}")
        raise InvalidArgument(f"{name} must be {allowed}{narrower}, got {bad[0]}")


def check_job_id(job_id: str) -> None:
    if not JOB_ID.match(job_id):
        raise InvalidArgument(
            f"{job_id[:80]!r} is not a job id (<framework>-<12 hex digits>, the framework one of"
            f" {', '.join(FRAMEWORK_FORMATS)})"
        )


def state_name(state: int) -> str:
    return tpb.JobState.Name(state).lower()


def job_model(spec: tpb.JobSpec) -> ModelSpec | NeuMF | GNMT:
    """The model a job trains, with the knobs its spec sets (for NCF and GNMT, `width` scales
    their widths, vocabulary and user and item counts: see specs.id_model)."""
    if spec.model in ID_MODELS:
        if spec.HasField("image_size") or spec.hidden_units:
            raise InvalidArgument(
                f"model {spec.model} takes ids: it has a width knob, no image size or hidden units"
            )
        return id_model(spec.model, spec.width if spec.HasField("width") else 1.0)
    return get_model_spec(
        spec.model,
        spec.width if spec.HasField("width") else None,
        spec.image_size if spec.HasField("image_size") else None,
        spec.hidden_units,  # checked against the declaration here too
    )


def _refuse_unknown_fields(spec: tpb.JobSpec) -> None:
    """A spec from a client newer than this service may set fields it does not know; protobuf
    would drop them silently and the job would train something else than was asked for."""
    for message, name in ((spec, "JobSpec"), (spec.optimizer, "Optimizer")):
        numbers = sorted({field.field_number for field in UnknownFieldSet(message)})
        if numbers:
            raise InvalidArgument(
                f"this service does not know {name} field(s) {', '.join(map(str, numbers))}:"
                f" the client is newer than twinbench {__version__} here; update the services"
            )


def resolve_spec(spec: tpb.JobSpec) -> tpb.JobSpec:
    """The spec with every default filled in, or InvalidArgument saying what to change."""
    _refuse_unknown_fields(spec)
    if spec.framework not in FRAMEWORK_FORMATS:
        raise InvalidArgument(
            f"unknown framework {spec.framework!r}; use one of {', '.join(FRAMEWORK_FORMATS)}"
        )
    check_ranges(spec)
    model = job_model(spec)
    defaults = model.defaults
    out = tpb.JobSpec()
    out.CopyFrom(spec)
    out.dataset = spec.dataset or defaults.dataset
    if isinstance(model, (NeuMF, GNMT)):
        check_dataset_name(out.dataset)
        check_id_dataset(out.dataset, model)
        for name, set_ in (("env_steps", out.HasField("env_steps")),
                           ("pretrained_weights", bool(out.pretrained_weights)),
                           ("channels_last", out.channels_last)):  # fmt: skip
            if set_:
                raise InvalidArgument(f"{name} is not for {model.name}")
        if isinstance(model, GNMT) and model.vocab <= FIRST_TOKEN:
            raise InvalidArgument(
                f"width {spec.width:g} leaves {model.name} a vocabulary of {model.vocab} tokens,"
                " too small to hold any but the reserved ones; use a larger width"
            )
    else:
        _resolve_kind(model, out)
    out.epochs = spec.epochs if spec.HasField("epochs") else defaults.epochs
    out.batch_size = spec.batch_size if spec.HasField("batch_size") else defaults.batch_size
    out.seed = spec.seed if spec.HasField("seed") else 0
    out.device = spec.device or "auto"
    out.init = spec.init or "shared"
    out.precision = spec.precision or "fp32"
    opt = out.optimizer
    opt.name = opt.name or defaults.optimizer
    if not opt.HasField("learning_rate"):
        opt.learning_rate = defaults.learning_rate
    if not opt.HasField("momentum"):
        opt.momentum = defaults.momentum if opt.name == defaults.optimizer else 0.0
    if not opt.HasField("epsilon"):
        opt.epsilon = defaults.epsilon
    formats = FRAMEWORK_FORMATS[spec.framework]
    if not out.export_formats:
        out.export_formats.extend(formats)

    checks = [
        (out.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {out.device!r}"),
        (out.init in INIT_MODES, f"init must be one of {', '.join(INIT_MODES)}, got {out.init!r}"),
        (
            out.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {out.precision!r}",
        ),
        (
            out.precision == "fp32" or spec.model not in ID_MODELS,
            f"{spec.model} trains in fp32 only: mixed precision is built for the image models",
        ),
        # JAX's sessions build fp32 NHWC models only: refused here, before a job is queued
        (
            out.precision == "fp32" or spec.framework != "jax",
            "jax trains in fp32 only: mixed precision is not built for its sessions",
        ),
        (
            not out.channels_last or spec.framework != "jax",
            "channels_last is for PyTorch: JAX's convolutions are NHWC already",
        ),
        (opt.name in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (
            set(out.export_formats) <= set(formats),
            f"{spec.framework} exports {', '.join(formats)}; got {', '.join(out.export_formats)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgument(message)
    check_ranges(out)  # the defaults filled in hold to the table too
    check_distributed_spec(out)
    return out


def _resolve_kind(model: ModelSpec, out: tpb.JobSpec) -> None:
    """What depends on the job's kind: an environment instead of a dataset, a step budget."""
    rl = model.reinforcement
    if rl is None:
        check_dataset_name(out.dataset)
        check_dataset_fits(out.dataset, model)
        if out.HasField("env_steps"):
            raise InvalidArgument(
                f"env_steps is for reinforcement-learning models, not {model.name}"
            )
    else:
        if out.dataset != rl.environment:
            raise InvalidArgument(
                f"{model.name} learns in the environment {rl.environment}, not a dataset"
                f" ({out.dataset!r})"
            )
        if not out.HasField("env_steps"):
            out.env_steps = rl.env_steps
        # What only a supervised job can honour: refused rather than silently ignored.
        for name, set_ in (("train_samples", out.HasField("train_samples")),
                           ("target_accuracy", out.HasField("target_accuracy")),
                           ("resume", out.resume), ("compiled", out.compiled),
                           ("precision", out.precision not in ("", "fp32")),
                           ("workers", out.workers > 1)):  # fmt: skip
            if set_:
                raise InvalidArgument(f"{name} is not supported for {model.name}, a DQN job")
    if out.pretrained_weights and not model.pretrained:
        raise InvalidArgument(f"pretrained_weights is for fine-tuning models, not {model.name}")
    if model.pretrained:
        from twinbench.data.pretrained import weights_path

        weights_path(model, Path("."), out.pretrained_weights)  # refuses paths out of the folder


def workers_of(spec: tpb.JobSpec) -> int:
    return spec.workers if spec.HasField("workers") and spec.workers > 0 else 1


def devices_of(spec: tpb.JobSpec) -> int:
    if spec.HasField("devices_per_worker") and spec.devices_per_worker > 0:
        return spec.devices_per_worker
    return 1


def is_distributed(spec: tpb.JobSpec) -> bool:
    return workers_of(spec) > 1 or devices_of(spec) > 1


# The frameworks with a data-parallel collective (their adapter's `distributed`); JAX has none.
DATA_PARALLEL_FRAMEWORKS = ("torch", "tf")


def check_distributed_spec(spec: tpb.JobSpec) -> None:
    """Refuses what a data-parallel job cannot do; called from resolve_spec."""
    for name in ("workers", "devices_per_worker"):
        if spec.HasField(name) and getattr(spec, name) not in RANGES[name]:
            raise InvalidArgument(f"{name} must be {RANGES[name]}, got {getattr(spec, name)}")
    workers, devices = workers_of(spec), devices_of(spec)
    if devices > 1 and spec.device == "cpu":
        raise InvalidArgument("devices_per_worker > 1 needs GPUs; this job asked for the CPU")
    world = workers * devices
    if world > 1 and spec.framework not in DATA_PARALLEL_FRAMEWORKS:
        raise FailedPrecondition(
            f"the {spec.framework} trainer trains on one process and one device: data-parallel"
            " jobs (workers or devices_per_worker above 1) are built for torch and tf only"
        )
    if world > 1:
        from twinbench.models.id_models import ID_MODELS

        if spec.model in ID_MODELS:
            raise InvalidArgument(
                f"{spec.model} does not train data-parallel (workers and devices_per_worker are"
                " for the image models)"
            )
    if world > 1 and spec.precision not in ("", "fp32"):
        raise InvalidArgument(
            "data-parallel jobs train in fp32 for now: mixed precision runs with one worker"
        )
    if world > 1 and spec.batch_size < world:
        raise InvalidArgument(
            f"batch_size {spec.batch_size} is the global batch: it must give each of the"
            f" {world} replicas a row at least"
        )


def check_runnable(spec: tpb.JobSpec, hardware: Hardware, all_workers_here: bool = True) -> None:
    """FailedPrecondition when `hardware` cannot run the job (a spec resolve_spec returned) as it
    asks: what a job's worker process and its training loop would otherwise refuse only once the
    job had started.

    A trainer calls it before it accepts a job, for its own host, where it starts every worker of
    the job. Each worker process calls it again as it starts; one worker of several (its
    processes placed by the trainer or by a cluster) passes `all_workers_here=False` and is held
    only to what it needs itself.
    """
    if hardware.problem:
        raise FailedPrecondition(hardware.problem)
    device = spec.device or "auto"
    on_gpu = device != "cpu" and hardware.gpus > 0
    where = f"this trainer has {hardware.describe()}"
    if device == "cuda" and not hardware.gpus:
        raise FailedPrecondition(
            f"device 'cuda' was asked for, but {where} (no /dev/nvidia* device, or"
            " CUDA_VISIBLE_DEVICES hides them); use device auto or cpu"
        )
    if spec.precision == "mixed" and not on_gpu and not hardware.cpu_bf16:
        raise FailedPrecondition(NO_BF16)
    workers, devices = workers_of(spec), devices_of(spec)
    if devices > 1 and not on_gpu:
        raise FailedPrecondition(
            f"devices_per_worker {devices} trains each worker on {devices} GPUs, but {where}; use 1"
        )
    # Every replica on a GPU of its own: two on one GPU fail in NCCL.
    replicas = workers * devices if all_workers_here else devices
    if on_gpu and replicas > 1 and replicas > hardware.gpus:
        raise FailedPrecondition(
            f"the job trains {replicas} replicas (workers x devices_per_worker), each on a GPU of"
            f" its own, but {where}; ask for fewer, or device cpu"
        )
    if not all_workers_here:
        return
    # PyTorch starts a process per replica, TensorFlow one per worker.
    processes = workers * (devices if spec.framework == "torch" else 1)
    if processes > hardware.cpus:
        raise FailedPrecondition(
            f"the job starts {processes} worker processes, more than the {hardware.cpus} CPU(s)"
            " this trainer trains on (TWINBENCH_TRAIN_CPUS, within its CPU affinity); ask for"
            f" {hardware.cpus} or fewer"
        )
    if hardware.max_workers and workers > hardware.max_workers:
        raise FailedPrecondition(
            f"workers {workers} is more than this trainer allows"
            f" (TWINBENCH_MAX_WORKERS={hardware.max_workers})"
        )
