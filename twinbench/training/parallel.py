"""Data-parallel jobs: who each worker is, which rows of a batch it trains on, and how the trainer
starts, watches and stops a job's worker processes.

A job with `workers` > 1 trains in several processes that step together: PyTorch's under torchrun
(DistributedDataParallel), TensorFlow's started here with a TF_CONFIG each
(MultiWorkerMirroredStrategy). Every worker takes its shard of the same seeded batch, so the
global batch is the single-worker one; the frameworks only differ in how gradients meet. Rank 0
alone talks to the trainer, checkpoints and exports; the others train and stay silent.

Gradients are combined as a weighted sum: a worker's mean-loss gradient counts n_r / n of the
global batch of n rows. That equals the single-worker gradient of the mean loss exactly, also
when a batch does not divide evenly (the last batch of an epoch), where averaging the workers'
means (DDP's default) would not.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.jobs.request import devices_of, is_distributed, workers_of

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# The service's address and key for rank 0's reports, in the workers' environment.
REPORT_ADDRESS_ENV = "TWINBENCH_JOB_REPORT"
REPORT_KEY_ENV = "TWINBENCH_JOB_REPORT_KEY"
# The job (a serialized Job) every worker reads at its start.
JOB_FILE_ENV = "TWINBENCH_JOB_FILE"
# Per-worker figures gathered to rank 0 as one float64 row each (see WorkerStats.row).
CPU_MASK_WORDS = 4  # 32 CPUs a word: 128 CPUs


@dataclass(frozen=True)
class Topology:
    """This process's place among a job's workers, from the launcher's environment (torchrun and
    the TF launcher both set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Topology:
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", env.get("RANK", "0"))),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
        )

    @property
    def writer(self) -> bool:
        """Only rank 0 reports, checkpoints and exports."""
        return self.rank == 0


def shard(rows: np.ndarray, part: int, parts: int) -> np.ndarray:
    """The `part`-th of `parts` contiguous shards of a batch's rows; sizes differ by at most one."""
    return np.array_split(rows, parts)[part]


def worker_cpus(cpus: list[int], local_rank: int, local_world_size: int) -> list[int]:
    """A worker's share of the job's CPUs: disjoint slices when there are enough, so N workers on
    C cores get C/N each (the 1-worker baseline gets all C); all of them when there are fewer."""
    if local_world_size <= 1 or len(cpus) < local_world_size:
        return cpus
    return [int(c) for c in np.array_split(cpus, local_world_size)[local_rank]]


@dataclass
class WorkerStats:
    """What one worker measured of itself; gathered to rank 0 through the job's all-reduce."""

    rank: int
    pid: int
    samples: int = 0
    steady_samples: int = 0
    steady_seconds: float = 0.0
    intra_op: int = 0
    inter_op: int = 0
    cpus: list[int] = field(default_factory=list)

    WIDTH = 7 + CPU_MASK_WORDS

    def row(self) -> np.ndarray:
        mask = [0.0] * CPU_MASK_WORDS
        for cpu in self.cpus:
            if cpu < 32 * CPU_MASK_WORDS:
                mask[cpu // 32] += float(1 << (cpu % 32))  # exact: below 2^53
        head = [self.rank, self.pid, self.samples, self.steady_samples, self.steady_seconds,
                self.intra_op, self.inter_op]  # fmt: skip
        return np.array(head + mask, dtype=np.float64)

    @classmethod
    def from_row(cls, row: np.ndarray) -> WorkerStats:
        cpus = [32 * w + b for w in range(CPU_MASK_WORDS) for b in range(32)
                if int(row[7 + w]) >> b & 1]  # fmt: skip
        return cls(int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]),
                   int(row[5]), int(row[6]), cpus)  # fmt: skip

    def record(self) -> tpb.WorkerRecord:
        return tpb.WorkerRecord(
            rank=self.rank,
            pid=self.pid,
            samples=self.samples,
            steady_samples=self.steady_samples,
            steady_seconds=self.steady_seconds,
            steady_samples_per_second=self.steady_samples / self.steady_seconds
            if self.steady_seconds > 0
            else 0.0,
            threads=tpb.Threads(intra_op=self.intra_op, inter_op=self.inter_op),
            cpu_set=self.cpus,
        )


class Collective(Protocol):
    """A framework's side of a data-parallel job (one per worker process)."""

    topology: Topology

    def new_session(self, framework, spec: tpb.JobSpec, model, data): ...

    def set_batch(self, local_rows: int, global_rows: int) -> None:
        """The weight of this worker's gradient in the next step: local_rows / global_rows."""

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum over all workers (every worker must call it, in the same order)."""

    def communication(self) -> tpb.Communication: ...

    def close(self) -> None:
        """A final barrier: no worker leaves before rank 0 has exported."""


class DataParallel:
    """What the shared training loop does differently with several workers (and nothing with one)."""

    def __init__(
        self,
        collective: Collective | None = None,
        threads: tuple[int, int] = (0, 0),
        cpus: list[int] | None = None,
    ) -> None:
        self.collective = collective
        self.topology = collective.topology if collective else Topology()
        self.parts = self.topology.world_size
        self.stats = WorkerStats(self.topology.rank, os.getpid(), intra_op=threads[0],
                                 inter_op=threads[1], cpus=list(cpus or []))  # fmt: skip
        self._steps = 0
        self.warmup_steps = 0  # set by the training loop once it knows the job's steps

    @property
    def writer(self) -> bool:
        return self.topology.writer

    def new_session(self, framework, spec: tpb.JobSpec, model, data):
        if self.collective is None:
            return framework.new_session(spec, model, data)
        return self.collective.new_session(framework, spec, model, data)

    def mine(self, rows: np.ndarray) -> np.ndarray:
        """This worker's rows of a global batch (all of them with one worker)."""
        if self.collective is None:
            return rows
        local = shard(rows, self.topology.rank, self.parts)
        self.collective.set_batch(len(local), len(rows))
        return local

    def step_done(self, seconds: float, samples: int, steps: int = 1) -> None:
        """`steps` steps timed together, all in the warm-up or all after it (StepTimer)."""
        self._steps += steps
        self.stats.samples += samples
        if self._steps > self.warmup_steps:
            self.stats.steady_samples += samples
            self.stats.steady_seconds += seconds

    def epoch_sums(self, loss_sum: float, correct: int) -> tuple[float, int]:
        """The epoch's loss sum and correct count over all workers' shards."""
        if self.collective is None:
            return loss_sum, correct
        total = self.collective.all_sum(np.array([loss_sum, correct], dtype=np.float64))
        return float(total[0]), int(round(total[1]))

    def gather(self) -> list[WorkerStats]:
        """Every worker's figures, on every worker."""
        if self.collective is None:
            return [self.stats]
        rows = np.zeros((self.parts, WorkerStats.WIDTH), dtype=np.float64)
        rows[self.topology.rank] = self.stats.row()
        return [WorkerStats.from_row(r) for r in self.collective.all_sum(rows)]

    def describe(self, job: tpb.Job, workers: list[WorkerStats]) -> None:
        """World size, every worker's figures (from `gather`) and the communication settings."""
        job.world_size = self.parts
        if self.collective is None:
            return
        del job.workers[:]
        job.workers.extend(w.record() for w in workers)
        job.communication.CopyFrom(self.collective.communication())

    def close(self) -> None:
        if self.collective is not None:
            self.collective.close()


def load_collective(framework, spec: tpb.JobSpec, topology: Topology) -> Collective | None:
    """The framework's collective for a data-parallel job; None for a single-process one."""
    if not is_distributed(spec):
        return None
    # PyTorch runs a process per device; TensorFlow a process per worker, mirroring its devices.
    expected = workers_of(spec) * (devices_of(spec) if framework.name == "torch" else 1)
    if topology.world_size != expected:
        raise InvalidArgument(
            f"the job asks for {workers_of(spec)} worker(s) x {devices_of(spec)} device(s), but"
            f" {topology.world_size} process(es) were started for it"
        )
    module, _, name = framework.distributed.partition(":")
    import importlib

    return getattr(importlib.import_module(module), name)(topology, spec)


def connect_to_service() -> Connection | None:
    """Rank 0's connection to the trainer that started the job; None where it was not started by
    one (the other ranks, or a worker run by Kubernetes)."""
    address = os.environ.get(REPORT_ADDRESS_ENV)
    if not address:
        return None
    host, _, port = address.rpartition(":")
    return Client((host, int(port)), authkey=bytes.fromhex(os.environ[REPORT_KEY_ENV]))


def announce(topology: Topology) -> None:
    """Writes rank-<r>.pid where the launcher watches (local mode only)."""
    folder = os.environ.get("TWINBENCH_DISTRIBUTED_DIR")
    if not folder:
        return
    path = Path(folder) / f"rank-{topology.rank}.pid"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)


def leave(topology: Topology) -> None:
    """Marks this worker's normal exit, so that the launcher does not take it for a death."""
    folder = os.environ.get("TWINBENCH_DISTRIBUTED_DIR")
    if folder:
        (Path(folder) / f"rank-{topology.rank}.done").write_text("")


def tf_config_from_pod_index(env: MutableMapping[str, str] | None = None) -> None:
    """TF_CONFIG and the rank variables for a TensorFlow worker run by Kubernetes as one pod of an
    indexed Job inside a JobSet (what a TrainJob of the twinbench-tensorflow runtime creates).

    Kubeflow Trainer has no TensorFlow policy that would write TF_CONFIG, so each pod builds it
    from what it knows: the worker count (TWINBENCH_TF_WORKERS), its own index
    (JOB_COMPLETION_INDEX, set by Kubernetes for indexed Jobs) and the JobSet's name, from which
    JobSet's stable pod hostnames follow: <jobset>-node-0-<index>.<jobset>."""
    env = os.environ if env is None else env
    if "TF_CONFIG" in env or "TWINBENCH_TF_WORKERS" not in env:
        return
    workers, index = int(env["TWINBENCH_TF_WORKERS"]), int(env.get("JOB_COMPLETION_INDEX", "0"))
    name, port = env["TWINBENCH_JOBSET_NAME"], env.get("TWINBENCH_TF_PORT", "2222")
    hosts = [f"{name}-node-0-{i}.{name}:{port}" for i in range(workers)]
    config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    env["TF_CONFIG"] = json.dumps(config)
    env.update(RANK=str(index), WORLD_SIZE=str(workers), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")


def die_with_parent() -> None:
    """A worker whose launcher is killed dies with it (Linux), rather than wait in a collective."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
