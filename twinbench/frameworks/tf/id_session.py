"""Keras's session for the id-input models (NCF, GNMT): their tasks' losses and inputs."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.tf.models import build_id_model, set_id_weights
from twinbench.frameworks.tf.session import TFSessionBase
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_ID_INIT, shared_id_weights
from twinbench.models.tasks import PAD_ID, Task


class _IdServing(tf.Module):
    """The exported signature of an id-input model: its task's INT64 inputs, logits out."""

    def __init__(self, model: keras.Model, task: Task) -> None:
        super().__init__()
        self.model = model
        self.serve = tf.function(
            lambda *inputs: {"logits": self.model(list(inputs), training=False)},
            input_signature=[
                tf.TensorSpec([None, *i.shape], tf.int64, name=i.name) for i in task.inputs
            ],
        )


class TFIdSession(TFSessionBase):
    """A job of an id-input model (NCF, GNMT): the loss and inputs its task says
    (twinbench/models/tasks.py), a tf.function step with fixed signatures, in fp32 (refused
    otherwise by twinbench.jobs.request)."""

    shared_init = SHARED_ID_INIT
    own_init = (
        "Keras's own: embeddings U(-0.05, 0.05), Glorot uniform kernels, orthogonal recurrent"
        " kernels, zero biases but the forget gates' 1"
    )

    def __init__(self, spec: tpb.JobSpec, declared: NeuMF | GNMT) -> None:
        if spec.channels_last:
            raise InvalidArgument(f"model {declared.name} takes ids: channels-last is for images")
        self.declared = declared
        super().__init__(spec, declared)
        if self.task.kind == "ranking":
            # Default reduction "sum_over_batch_size": the mean over the batch, as PyTorch's.
            self.loss = keras.losses.BinaryCrossentropy(from_logits=True)
        else:
            # With ignore_class, "sum_over_batch_size" weighs each unmasked token total/valid:
            # the mean over the non-pad tokens, as PyTorch's ignore_index with reduction "mean".
            self.loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=PAD_ID
            )
        labels = tf.TensorSpec([None, *self.task.output_shape[:-1]], tf.int64)
        self._train_step = tf.function(
            self._step,
            input_signature=[self.signature(), labels],
            jit_compile=bool(spec.compiled),
        )

    def new_model(self) -> keras.Model:
        model = build_id_model(self.declared)
        if self.spec.init == "shared":
            set_id_weights(model, shared_id_weights(self.declared, self.spec.seed))
        return model

    def fairness(self) -> dict[str, str]:
        return {
            **super().fairness(),
            "embedding gradients": "sparse (tf.IndexedSlices, Keras's default); the optimizer"
            " updates every row as with dense ones",
        }

    def _step(self, xs, y):
        with tf.GradientTape() as tape:
            logits = self.model(xs, training=True)
            if self.task.kind == "ranking":
                loss = self.loss(tf.cast(y[:, None], logits.dtype), logits)
                hits = tf.equal(logits[:, 0] > 0, tf.equal(y, 1))
            else:
                loss = self.loss(y, logits)
                hits = tf.logical_and(tf.equal(tf.argmax(logits, axis=-1), y), y != PAD_ID)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss, tf.reduce_sum(tf.cast(hits, tf.int32))

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self.device):
            loss, hits = self._train_step(self.task.split(x), y)
        return loss, hits  # read by the loop at the end of a timed segment

    def serving_module(self) -> _IdServing:
        return _IdServing(self.model, self.task)
