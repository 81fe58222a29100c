"""Keras's part of a DQN job: the Q-network, its target copy and one TD-loss step."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from twinbench.api import trainer_pb2 as pb
from twinbench.frameworks.tf.session import (
    TFSession,
    _gpu_name,
    build_model,
    make_optimizer,
    optimizer_fairness,
    pick_device,
    set_weights,
    trainable_count,
)
from twinbench.models.initial_weights import SHARED_INIT, shared_initial_weights
from twinbench.models.spec import ModelSpec


class TFQSession(TFSession):
    """The online network is `self.model` (so exports are TFSession's)."""

    def __init__(self, spec: pb.JobSpec, model_spec: ModelSpec) -> None:
        self.spec, self.model_spec = spec, model_spec
        self.device = pick_device(spec.device)
        self.input_shape = model_spec.input_shape
        keras.utils.set_random_seed(spec.seed)
        with tf.device(self.device):
            self.model = build_model(model_spec)
            self.target = build_model(model_spec)
            if spec.init == "shared":
                set_weights(self.model, model_spec, shared_initial_weights(model_spec, spec.seed))
            self.target.set_weights(self.model.get_weights())
        self.fp32_model = self.model  # fp32 only (DQN jobs refuse mixed precision)
        self.compute_dtype, self.precision = None, "fp32"
        self.parameter_count = trainable_count(self.model)
        self.device_name = "cpu" if "CPU" in self.device else _gpu_name()
        # Clipped to a global norm over all gradients, as clip_grad_norm_ does in PyTorch.
        clip = model_spec.reinforcement.grad_clip_norm
        self.optimizer = make_optimizer(spec.optimizer, global_clipnorm=clip)
        self.loss = keras.losses.Huber(delta=1.0)  # mean over the batch, as smooth_l1_loss
        self.augment = None
        states = tf.TensorSpec([None, *self.input_shape], tf.float32)
        self._q = tf.function(lambda x: self.model(x, training=False), input_signature=[states])
        self._target_q = tf.function(
            lambda x: self.target(x, training=False), input_signature=[states]
        )
        self._forward = self._q
        self._td_step = tf.function(
            self._step,
            input_signature=[
                states,
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None], tf.float32),
            ],
            jit_compile=False,
        )

    def fairness(self) -> dict[str, str]:
        return {
            "init": SHARED_INIT
            if self.spec.init == "shared"
            else "Keras's own: Glorot uniform, zero biases",
            "optimizer": optimizer_fairness(self.spec.optimizer),
            "td step": "keras.losses.Huber(delta 1, mean) on Q(s, a) gathered from the online"
            " net, in a tf.function with a fixed signature; optimizer global_clipnorm"
            f" {self.model_spec.reinforcement.grad_clip_norm:g}",
            "target copy": "set_weights of the online network's",
            "compilation": "tf.function with fixed signatures, XLA off (jit_compile=False)",
        }

    def _step(self, states, actions, targets):
        with tf.GradientTape() as tape:
            q = tf.gather(self.model(states, training=True), actions, axis=1, batch_dims=1)
            loss = self.loss(targets, q)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # states are vectors: no layout to change

    def q_values(self, states: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return self._q(states).numpy()

    def target_q_values(self, states: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return self._target_q(states).numpy()

    def train_step(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        with tf.device(self.device):
            return float(self._td_step(states, actions, targets).numpy())

    def update_target(self) -> None:
        self.target.set_weights(self.model.get_weights())
