"""JAX's side of the comparison (Flax NNX, Optax): the adapter a trainer service and its job
workers load."""

from __future__ import annotations

import os

import flax
import jax
import optax

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.frameworks.jax.id_session import JaxIdSession
from twinbench.frameworks.jax.q_session import JaxQSession
from twinbench.frameworks.jax.runtime import StableHloRuntime
from twinbench.frameworks.jax.session import JaxSession
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.serving.dataplane import Loader, OnnxRuntime
from twinbench.training.rl import QSession
from twinbench.training.session import Session


class JaxFramework:
    name = "jax"
    # No data-parallel training: twinbench.jobs.request refuses such jobs for JAX before they
    # are queued (jax.distributed and sharded steps are not built).
    distributed = None
    version = f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    loaders: dict[str, Loader] = {"stablehlo": StableHloRuntime, "onnx": OnnxRuntime}

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        """XLA's CPU client has no thread setting: it runs a pool of one thread per CPU it may
        use. XLA_FLAGS's intra_op_parallelism_threads and --xla_cpu_multi_thread_eigen=false,
        the old recipe, were measured to change nothing in jax 0.10 (a 1500x1500 matmul used
        both cores either way), so they are not set. What bounds the job is its CPU set
        (twinbench.training.worker pins it before JAX starts): reported as the intra-op
        threads; inter-op 1, as XLA runs one program at a time per device."""
        return len(os.sched_getaffinity(0)), 1

    def new_session(
        self, spec: tpb.JobSpec, model: ModelSpec | NeuMF | GNMT, data: Dataset
    ) -> Session:
        if isinstance(model, (NeuMF, GNMT)):
            return JaxIdSession(spec, model)
        return JaxSession(spec, model)

    def new_rl_session(self, spec: tpb.JobSpec, model: ModelSpec) -> QSession:
        return JaxQSession(spec, model)
