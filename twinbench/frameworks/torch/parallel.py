"""PyTorch's data-parallel jobs: DistributedDataParallel in processes started by torchrun."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.errors import InvalidArgument
from twinbench.frameworks.torch.session import TorchSession
from twinbench.models.spec import ModelSpec
from twinbench.training.parallel import Topology
from twinbench.training.session import Framework

# DDP's default: gradients travel in buckets of this many MiB, all-reduced while backward runs.
BUCKET_MB = 25
# How long a collective may wait for a peer. A dead peer is usually seen at once (its sockets
# close); this bounds the rest. Rank 0 may also evaluate and export alone between collectives.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass
class _Weight:
    """This worker's share of the global batch in the current step."""

    value: float = 1.0


# No annotations: DDP checks a hook's annotations against the classes themselves, and this
# module's annotations are strings (from __future__ import annotations).
def _weighted_sum(state, bucket):  # noqa: ANN001, ANN201
    """DDP's all-reduce with each worker's mean-loss gradient weighted by its share of the rows:
    the sum is the single-worker gradient of the global batch's mean loss, uneven shards too
    (DDP's default divides by the world size, which is right only for equal shards)."""
    buffer = bucket.buffer()
    buffer.mul_(state.value)
    future = dist.all_reduce(buffer, async_op=True).get_future()
    return future.then(lambda f: f.value()[0])


class TorchCollective:
    def __init__(self, topology: Topology, spec: tpb.JobSpec) -> None:
        self.topology = topology
        gpu = spec.device in ("auto", "cuda") and torch.cuda.is_available()
        if spec.device == "cuda" and not gpu:
            raise InvalidArgument("device 'cuda' was asked for, but this worker sees no GPU")
        if gpu:
            # One process per GPU: a bare "cuda" device in the session is this worker's GPU.
            torch.cuda.set_device(topology.local_rank % torch.cuda.device_count())
        self.backend = "nccl" if gpu else "gloo"
        dist.init_process_group(self.backend, timeout=COLLECTIVE_TIMEOUT)  # torchrun's env://
        self.weight = _Weight()

    def new_session(
        self, framework: Framework, spec: tpb.JobSpec, model: ModelSpec, data: Dataset
    ) -> TorchSession:
        session = TorchSession(spec, model)
        ddp = DistributedDataParallel(
            session.model,
            device_ids=[torch.cuda.current_device()] if self.backend == "nccl" else None,
            bucket_cap_mb=BUCKET_MB,
        )
        ddp.register_comm_hook(self.weight, _weighted_sum)
        # The session trains through `forward`; evaluation, checkpoints and exports keep using
        # the bare model, which DDP shares (the same parameters).
        session.forward = torch.compile(ddp) if spec.compiled else ddp
        return session

    def set_batch(self, local_rows: int, global_rows: int) -> None:
        self.weight.value = local_rows / global_rows

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        if self.backend == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def communication(self) -> tpb.Communication:
        return tpb.Communication(
            launcher="torchrun (torch.distributed.run), c10d rendezvous",
            strategy="DistributedDataParallel, one process per replica",
            backend=self.backend,
            all_reduce=f"{self.backend} all-reduce of gradient buckets during backward, through a"
            " comm hook that weighs each worker's gradient by its share of the batch",
            bucket_bytes=BUCKET_MB * 1024 * 1024,
            sharding="twinbench: contiguous shards of each seeded global batch"
            " (no DistributedSampler)",
        )

    def close(self) -> None:
        dist.barrier()
        dist.destroy_process_group()
