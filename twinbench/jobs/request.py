"""A job request, free of gRPC: its checks, its defaults resolved, and the model it names."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from google.protobuf.unknown_fields import UnknownFieldSet

from twinbench import __version__
from twinbench.api import trainer_pb2 as pb
from twinbench.data.datasets import check_dataset_name, check_id_dataset
from twinbench.errors import (
    InvalidArgument,
)
from twinbench.jobs.precision import PRECISIONS
from twinbench.models.catalogue import get_model_spec
from twinbench.models.id_models import GNMT, ID_MODELS, NeuMF, id_model
from twinbench.models.initial_weights import INIT_MODES
from twinbench.models.spec import ModelSpec
from twinbench.serving.repository import FRAMEWORK_FORMATS

log = logging.getLogger(__name__)

TERMINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")


JOB_ID = re.compile(r"^(torch|tf)-[0-9a-f]{12}$")


def check_job_id(job_id: str) -> None:
    if not JOB_ID.match(job_id):
        raise InvalidArgument(
            f"{job_id[:80]!r} is not a job id (torch-<12 hex digits> or tf-<12 hex digits>)"
        )


def state_name(state: int) -> str:
    return pb.JobState.Name(state).lower()


def job_model(spec: pb.JobSpec) -> ModelSpec | NeuMF | GNMT:
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


def _refuse_unknown_fields(spec: pb.JobSpec) -> None:
    """A spec from a client newer than this service may set fields it does not know; protobuf
    would drop them silently and the job would train something else than was asked for."""
    for message, name in ((spec, "JobSpec"), (spec.optimizer, "Optimizer")):
        numbers = sorted({field.field_number for field in UnknownFieldSet(message)})
        if numbers:
            raise InvalidArgument(
                f"this service does not know {name} field(s) {', '.join(map(str, numbers))}:"
                f" the client is newer than twinbench {__version__} here; update the services"
            )


def resolve_spec(spec: pb.JobSpec) -> pb.JobSpec:
    """The spec with every default filled in, or InvalidArgument saying what to change."""
    _refuse_unknown_fields(spec)
    if spec.framework not in FRAMEWORK_FORMATS:
        raise InvalidArgument(
            f"unknown framework {spec.framework!r}; use one of {', '.join(FRAMEWORK_FORMATS)}"
        )
    model = job_model(spec)
    defaults = model.defaults
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.dataset = spec.dataset or defaults.dataset
    if isinstance(model, (NeuMF, GNMT)):
        check_dataset_name(out.dataset)
        check_id_dataset(out.dataset, model)
        for name, set_ in (("env_steps", out.HasField("env_steps")),
                           ("pretrained_weights", bool(out.pretrained_weights))):  # fmt: skip
            if set_:
                raise InvalidArgument(f"{name} is not for {model.name}")
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
        (1 <= out.epochs <= 10_000, f"epochs must be 1..10000, got {out.epochs}"),
        (1 <= out.batch_size <= 65_536, f"batch_size must be 1..65536, got {out.batch_size}"),
        (out.seed >= 0, f"seed must be 0 or more, got {out.seed}"),
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
        (opt.name in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (
            0 < opt.learning_rate <= 10,
            f"learning_rate must be in (0, 10], got {opt.learning_rate}",
        ),
        (0 <= opt.momentum < 1, f"momentum must be in [0, 1), got {opt.momentum}"),
        (0 < opt.epsilon < 1, f"epsilon must be in (0, 1), got {opt.epsilon}"),
        (
            not spec.HasField("warmup_steps") or spec.warmup_steps >= 0,
            f"warmup_steps must be 0 or more, got {spec.warmup_steps}",
        ),
        (
            not spec.HasField("train_samples") or spec.train_samples >= 1,
            f"train_samples must be 1 or more, got {spec.train_samples}",
        ),
        (
            set(out.export_formats) <= set(formats),
            f"{spec.framework} exports {', '.join(formats)}; got {', '.join(out.export_formats)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgument(message)
    check_distributed_spec(out)
    return out


def _resolve_kind(model: ModelSpec, out: pb.JobSpec) -> None:
    """What depends on the job's kind: an environment instead of a dataset, a step budget."""
    rl = model.reinforcement
    if rl is None:
        check_dataset_name(out.dataset)
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
        if not 1 <= out.env_steps <= 10_000_000:
            raise InvalidArgument(f"env_steps must be 1..10000000, got {out.env_steps}")
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


def workers_of(spec: pb.JobSpec) -> int:
    return spec.workers if spec.HasField("workers") and spec.workers > 0 else 1


def devices_of(spec: pb.JobSpec) -> int:
    if spec.HasField("devices_per_worker") and spec.devices_per_worker > 0:
        return spec.devices_per_worker
    return 1


def is_distributed(spec: pb.JobSpec) -> bool:
    return workers_of(spec) > 1 or devices_of(spec) > 1


def check_distributed_spec(spec: pb.JobSpec) -> None:
    """Refuses what a data-parallel job cannot do; called from resolve_spec."""
    workers, devices = workers_of(spec), devices_of(spec)
    if not 1 <= workers <= 64:
        raise InvalidArgument(f"workers must be 1..64, got {spec.workers}")
    if not 1 <= devices <= 16:
        raise InvalidArgument(f"devices_per_worker must be 1..16, got {spec.devices_per_worker}")
    if devices > 1 and spec.device == "cpu":
        raise InvalidArgument("devices_per_worker > 1 needs GPUs; this job asked for the CPU")
    world = workers * devices
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
