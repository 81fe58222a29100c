"""What a framework gives a job (a Framework that makes Sessions) and what every job does with its
session alike: the fairness record both frameworks share, and exports checked before they are
published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.errors import TwinbenchError
from twinbench.models.spec import ModelSpec
from twinbench.models.tasks import Task
from twinbench.serving.dataplane import Loader, Runtime
from twinbench.serving.repository import ModelRepository, model_name

# Largest |reloaded export - in-memory model| accepted on a test batch of logits.
EXPORT_TOLERANCE = 1e-4
EXPORT_CHECK_ROWS = 64
# Steps timed apart at the start of a job. Measured on 2 CPU cores with LeNet-5 at batch 32, the
# first step carries TensorFlow's tracing (seconds) and PyTorch's first allocations (2 to 5 times
# a steady step); from the second step both run at their steady pace, within the machine's noise.
# 10 leaves a margin for allocator growth and for autotuning on a GPU.
DEFAULT_WARMUP_STEPS = 10
# Steady steps are also timed in this many windows, for the spread of speed within one job.
STEADY_WINDOWS = 10

# Largest |reloaded export - in-memory model| accepted on a test batch of logits.
EXPORT_TOLERANCE = 1e-4


EXPORT_CHECK_ROWS = 64


class Session(Protocol):
    """One job's model and optimizer in one framework."""

    device_name: str
    parameter_count: int
    precision: (
        str  # what runs: "fp32", "mixed float16" or "mixed bfloat16" (twinbench.jobs.precision)
    )

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """A whole split in the framework's layout; done once per job, outside the timed loop."""

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """One optimizer step; returns the batch's mean loss and its number of correct predictions
        (per task: images, user-item pairs, or non-pad target tokens; see twinbench.models.tasks), as
        numbers or as scalars still on the device, which the loop reads with float() and int()
        only at the end of a timed segment (StepTimer)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for all of a prepared `x`, in inference mode."""

    def export(self, fmt: str, path: Path) -> None:
        """Writes the model in `fmt` at `path` (a file, or a folder for SavedModel)."""

    def peak_gpu_bytes(self) -> int: ...

    def fairness(self) -> dict[str, str]:
        """How this framework set the constants that silently differ (docs/fairness.md)."""

    def save_checkpoint(self, path: Path) -> None:
        """Weights and optimizer state, in one file."""

    def load_checkpoint(self, path: Path) -> None: ...


class Framework(Protocol):
    name: str
    version: str
    loaders: dict[str, Loader]

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        """Fixes the process's CPU thread pools before any work; returns them read back."""

    def new_session(self, spec: tpb.JobSpec, model: ModelSpec, data: Dataset) -> Session: ...


SHARED_FAIRNESS = {
    "data order": "one seeded permutation per epoch, shared by both frameworks",
    "split": "fixed, seeded in shared code; the same rows for every job",
    "evaluation": "loss and accuracy computed in shared code from each framework's logits",
    "timing": "the first warm-up steps timed apart; steady figures from every later step, the"
    " batch slicing and per-step augmentation included, evaluation excluded",
    "isolation": "a fresh process per job: its own CPU set, threads and compile cache",
}


def export_checked(
    framework: Framework,
    session: Session,
    repository: ModelRepository,
    job: tpb.Job,
    data: Dataset,
    task: Task,
    fmt: str,
    max_batch_size: int,
) -> tpb.ModelExport:
    """Writes, reloads and checks one export in a staging folder, then publishes it whole."""
    name = model_name(job.spec.model, framework.name, fmt)
    batch = data.test.x[:EXPORT_CHECK_ROWS]
    with repository.stage(name, fmt) as staging:
        session.export(fmt, staging.model_path)
        # No thread setting: this runs in the job's process, whose threads stay as the job set them.
        runtime: Runtime = framework.loaders[fmt](staging.model_path, None)
        expected = session.predict(session.prepare(batch))
        diff = float(np.max(np.abs(runtime.infer(*task.split(batch)) - expected)))
        if not diff <= EXPORT_TOLERANCE:  # also catches NaN
            raise TwinbenchError(
                f"the reloaded {fmt} export differs from the trained model by {diff:.3g} "
                f"(tolerance {EXPORT_TOLERANCE:g}); nothing was published"
            )
        info = staging.publish(
            model=job.spec.model,
            framework=framework.name,
            job_id=job.id,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            class_names=data.class_names,
            max_batch_size=max_batch_size,
            max_abs_diff=diff,
            # Only what differs from one FP32 image in, class logits out, so that exports of
            # image models stay as they were.
            inputs=() if task.kind == "classification" else task.inputs,
            output_shape=() if task.kind == "classification" else task.output_shape,
        )
    return tpb.ModelExport(
        model_name=name,
        version=str(info.version),
        format=fmt,
        path=f"{name}/{info.version}/{info.filename}",
        sha256=info.sha256,
        max_abs_diff=diff,
    )


def record_export(job: tpb.Job, export: tpb.ModelExport) -> None:
    """Adds a published export to the job's record (a change for JobContext.update)."""
    job.exports.append(export)
