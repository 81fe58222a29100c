"""What this machine gives a training job, probed cheaply and without a framework: the CPUs a job
may train on, bfloat16 on the CPU, the GPUs, and the trainer's worker limit.

A trainer probes once, to refuse at creation a job it cannot run (twinbench.jobs.request's
check_runnable); each job's worker process probes again as it starts. Neither loads PyTorch or
TensorFlow for it: the gateway has neither, and a trainer should not start its framework's GPU
runtime just to count devices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from twinbench.config import Settings, load_settings
from twinbench.errors import InvalidArgument
from twinbench.jobs.precision import cpu_has_bf16

# /dev/nvidia0, /dev/nvidia1, ...: one per GPU the driver gives this machine (or container);
# /dev/nvidiactl, /dev/nvidia-uvm and the like are not GPUs.
NVIDIA_DEVICE = re.compile(r"^nvidia(\d+)$")


@dataclass(frozen=True)
class Hardware:
    cpus: int  # the CPUs a job may train on: TWINBENCH_TRAIN_CPUS within this process's affinity
    cpu_bf16: bool  # the CPU computes in bfloat16 (twinbench.jobs.precision)
    gpus: int  # NVIDIA GPUs that CUDA would show this process
    max_workers: int = 0  # TWINBENCH_MAX_WORKERS; 0: as many as the CPUs allow
    # A setting that keeps every job from running (a TWINBENCH_TRAIN_CPUS naming no usable
    # CPU): each job is refused with it, rather than the trainer refusing to start.
    problem: str = ""

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s)" if self.gpus else "no GPU"
        bf16 = "with" if self.cpu_bf16 else "without"
        return f"{self.cpus} CPU(s) for training ({bf16} bfloat16), {gpus}"


def parse_cpus(text: str) -> set[int]:
    """ "0-3,8" -> {0, 1, 2, 3, 8}."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            cpus.update(range(int(low), int(high or low) + 1))
        except ValueError:
            raise InvalidArgument(
                f"TWINBENCH_TRAIN_CPUS: {part!r} is not a CPU or a range"
            ) from None
    return cpus


def training_cpus(settings: Settings) -> list[int]:
    """The CPUs a job trains on: TWINBENCH_TRAIN_CPUS within what this process may use."""
    allowed = os.sched_getaffinity(0)
    if not settings.train_cpus:
        return sorted(allowed)
    chosen = parse_cpus(settings.train_cpus) & allowed
    if not chosen:
        raise InvalidArgument(
            f"TWINBENCH_TRAIN_CPUS={settings.train_cpus} names none of the CPUs this trainer may"
            f" use ({','.join(map(str, sorted(allowed)))})"
        )
    return sorted(chosen)


def gpu_count(dev: Path = Path("/dev"), env: Mapping[str, str] | None = None) -> int:
    """The GPUs a CUDA program started here would see: the NVIDIA device files (a container has
    only those it was given), narrowed by CUDA_VISIBLE_DEVICES as CUDA reads it: indices or
    GPU-/MIG- UUIDs, up to the first entry that names no device ("" and "-1" hide them all)."""
    env = os.environ if env is None else env
    try:
        present = sum(1 for path in dev.iterdir() if NVIDIA_DEVICE.match(path.name))
    except OSError:
        present = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    count = 0
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) < present:
            count += 1
        elif entry.startswith(("GPU-", "MIG-")):
            count += 1
        else:
            break
    return min(count, present)


def probe_hardware(settings: Settings | None = None) -> Hardware:
    settings = settings or load_settings()
    problem = ""
    try:
        cpus = len(training_cpus(settings))
    except InvalidArgument as exc:
        cpus, problem = 0, f"this trainer's settings keep every job from running: {exc}"
    return Hardware(
        cpus=cpus,
        cpu_bf16=cpu_has_bf16(),
        gpus=gpu_count(),
        max_workers=settings.max_workers,
        problem=problem,
    )
