"""TensorFlow's data-parallel jobs: MultiWorkerMirroredStrategy across worker processes (from
TF_CONFIG), MirroredStrategy across the GPUs of one worker."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context  # its key-value store has no public API

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.errors import InvalidArgument
from twinbench.frameworks.tf.session import TFSession
from twinbench.models.spec import ModelSpec
from twinbench.training.parallel import Topology, devices_of
from twinbench.training.session import Framework

# How long a collective may wait for a peer before it fails (a dead peer is normally seen sooner
# by the coordination service; the trainer stops the others as soon as one dies).
COLLECTIVE_TIMEOUT_S = 1800.0
# Set by rank 0 in the coordination service once past the final barrier (see TFCollective.close).
PASSED_BARRIER_KEY = "twinbench/rank-0-passed-the-final-barrier"


class DistributedTFSession(TFSession):
    """A TFSession whose variables are mirrored by `strategy` and whose step sums the replicas'
    gradients, each weighted by its share of the global batch (see twinbench.training.parallel)."""

    def __init__(
        self, spec: tpb.JobSpec, model_spec: ModelSpec, strategy: tf.distribute.Strategy
    ) -> None:
        self.strategy = strategy
        self.global_rows = 1
        with strategy.scope():  # variables and optimizer slots become mirrored ones
            super().__init__(spec, model_spec)
        c, h, w = self.input_shape
        self._replicas = strategy.num_replicas_in_sync // max(1, _workers())
        self._distributed_step = tf.function(
            self._run_step,
            input_signature=[
                tf.TensorSpec([None, h, w, c], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.float32),
            ],
            jit_compile=False,
        )

    def _weighted_step(self, x, y, weight):
        if self.augment is not None:
            x = self.augment(x, training=True)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), tf.float32)  # as TFSession's step
            # The loss function, not the Loss object: under a strategy Keras's Loss divides by the
            # number of replicas itself, and here the weight says each replica's share.
            per_row = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.reduce_mean(per_row)
            weighted = loss * weight
        grads = tape.gradient(weighted, self.model.trainable_variables)
        # In a replica context Keras's optimizer all-reduces (sums) the gradients first.
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.int32))
        return loss, hits

    def _run_step(self, x, y, weight):
        return self.strategy.run(self._weighted_step, args=(x, y, weight))

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        if self._replicas == 1:
            loss, hits = self._distributed_step(x, y, np.float32(len(x) / self.global_rows))
            loss, hits = (self.strategy.experimental_local_results(v)[0] for v in (loss, hits))
            return float(loss.numpy()), int(hits.numpy())
        # Several GPUs in this worker: its shard is split again, one part per local replica.
        parts = np.array_split(np.arange(len(x)), self._replicas)

        def value(ctx: tf.distribute.ValueContext, arrays: tuple[np.ndarray, ...]):
            return arrays[ctx.replica_id_in_sync_group % self._replicas]

        xs = tuple(x[p] for p in parts)
        ys = tuple(y[p] for p in parts)
        ws = tuple(np.float32(len(p) / self.global_rows) for p in parts)
        args = [
            self.strategy.experimental_distribute_values_from_function(
                lambda ctx, a=arrays: value(ctx, a)
            )
            for arrays in (xs, ys, ws)
        ]
        loss, hits = self.strategy.run(self._weighted_step, args=tuple(args))
        losses = self.strategy.experimental_local_results(loss)
        counts = self.strategy.experimental_local_results(hits)
        total = sum(float(v.numpy()) * len(p) for v, p in zip(losses, parts, strict=True))
        return total / max(1, len(x)), sum(int(v.numpy()) for v in counts)


def _workers() -> int:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return len(config.get("cluster", {}).get("worker", [])) or 1


class TFCollective:
    def __init__(self, topology: Topology, spec: tpb.JobSpec) -> None:
        self.topology = topology
        gpus = tf.config.list_physical_devices("GPU") if spec.device != "cpu" else []
        if spec.device == "cuda" and not gpus:
            raise InvalidArgument("device 'cuda' was asked for, but this worker sees no GPU")
        devices = devices_of(spec)
        if devices > 1 and len(gpus) < devices:
            raise InvalidArgument(
                f"devices_per_worker {devices} needs as many GPUs; this worker sees {len(gpus)}"
            )
        self.gpu = bool(gpus)
        if _workers() > 1:
            implementation = (
                tf.distribute.experimental.CommunicationImplementation.NCCL
                if gpus
                else tf.distribute.experimental.CommunicationImplementation.RING
            )
            self.options = tf.distribute.experimental.CommunicationOptions(
                implementation=implementation, timeout_seconds=COLLECTIVE_TIMEOUT_S
            )
            # Created first, before the runtime runs anything: it reads TF_CONFIG and starts
            # this worker's server.
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=self.options
            )
            self.kind = "MultiWorkerMirroredStrategy"
        else:
            self.options = None
            names = [f"/gpu:{i}" for i in range(devices)] if gpus else ["/cpu:0"]
            self.strategy = tf.distribute.MirroredStrategy(names)
            self.kind = "MirroredStrategy"
        self.sessions: list[DistributedTFSession] = []
        self._sum = tf.function(self._replica_sum)
        self._barrier = tf.function(lambda: self._replica_sum(tf.zeros([1], tf.float64)))

    def _replica_sum(self, values):
        local = max(1, self.strategy.num_replicas_in_sync // max(1, _workers()))

        def replica_fn(v):
            # Every local replica contributes its worker's values once in all: 1/local each.
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, v / local
            )

        summed = self.strategy.run(replica_fn, args=(values,))
        return self.strategy.experimental_local_results(summed)[0]

    def new_session(
        self, framework: Framework, spec: tpb.JobSpec, model: ModelSpec, data: Dataset
    ) -> DistributedTFSession:
        session = DistributedTFSession(spec, model, self.strategy)
        self.sessions.append(session)
        return session

    def set_batch(self, local_rows: int, global_rows: int) -> None:
        for session in self.sessions:
            session.global_rows = global_rows

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return self._sum(tf.constant(values, dtype=tf.float64)).numpy()

    def communication(self) -> tpb.Communication:
        if self.options is not None:
            implementation = self.options.implementation.name
            how = f"CollectiveAllReduce, {implementation}" + (
                " (NCCL)" if self.gpu else " (gRPC ring between workers)"
            )
            launcher = "the trainer: one process per worker, each with its TF_CONFIG"
        else:
            how = "MirroredStrategy's cross-device all-reduce (NCCL on GPUs)"
            launcher = "the trainer: one process"
        return tpb.Communication(
            launcher=launcher,
            strategy=f"tf.distribute.{self.kind}, custom training loop (strategy.run)",
            backend="nccl" if self.gpu else "ring",
            all_reduce=f"{how}: Keras's optimizer sums the gradients, each replica's weighted"
            " by its share of the batch; one all-reduce of all gradients per step",
            bucket_bytes=0,  # CommunicationOptions.bytes_per_pack 0: TensorFlow packs itself
            sharding="twinbench: contiguous shards of each seeded global batch, fed per worker;"
            " no distributed dataset, so tf.data auto-sharding is off",
        )

    def close(self) -> None:
        self._barrier()
        if self.options is None:
            return
        # The barrier is a ring all-reduce, in which a worker pulls its peers' parts: one that has
        # all it needs may return while rank 0 still pulls from it, and if it left then, rank 0's
        # barrier failed ("Socket closed"). So the others stay until rank 0 has passed it too, as
        # it says through the coordination service that rank 0 hosts.
        if self.topology.rank == 0:
            context.context().set_config_key_value(PASSED_BARRIER_KEY, "1")
            return
        try:
            context.context().get_config_key_value(
                PASSED_BARRIER_KEY, int(COLLECTIVE_TIMEOUT_S * 1000)
            )
        except tf.errors.UnavailableError:
            pass  # rank 0 has left already, which it does only once past the barrier
