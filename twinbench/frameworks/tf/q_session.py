"""Keras's part of a DQN job: the Q-network, its target copy and one TD-loss step."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.tf.models import build_model, set_weights
from twinbench.frameworks.tf.session import TFSessionBase
from twinbench.models.initial_weights import shared_initial_weights
from twinbench.models.spec import ModelSpec


class TFQSession(TFSessionBase):
    """The online network is `self.model` (so predict and exports are the base session's);
    fp32, XLA off (DQN jobs refuse compiled and mixed-precision modes)."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        rl = model_spec.reinforcement
        if rl is None:  # the training loop makes Q-network sessions only for DQN declarations
            raise InvalidArgument(f"model {model_spec.name} is not a reinforcement-learning one")
        self.model_spec = model_spec
        self.clip_norm = rl.grad_clip_norm
        # Clipped to a global norm over all gradients, as clip_grad_norm_ does in PyTorch.
        super().__init__(spec, model_spec, clip_norm=self.clip_norm)
        with tf.device(self.device):
            self.target = build_model(model_spec)
            self.target.set_weights(self.model.get_weights())
        self.loss = keras.losses.Huber(delta=1.0)  # mean over the batch, as smooth_l1_loss
        states = self.signature()
        self._target_q = tf.function(
            lambda x: self.target(x, training=False), input_signature=states
        )
        self._td_step = tf.function(
            self._td,
            input_signature=[
                *states,
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None], tf.float32),
            ],
            jit_compile=False,
        )

    def new_model(self) -> keras.Model:
        model = build_model(self.model_spec)
        if self.spec.init == "shared":
            set_weights(
                model, self.model_spec, shared_initial_weights(self.model_spec, self.spec.seed)
            )
        return model

    def fairness(self) -> dict[str, str]:
        return {
            **super().fairness(),
            "td step": "keras.losses.Huber(delta 1, mean) on Q(s, a) gathered from the online"
            " net, in a tf.function with a fixed signature; optimizer global_clipnorm"
            f" {self.clip_norm:g}",
            "target copy": "set_weights of the online network's",
        }

    def _td(self, states, actions, targets):
        with tf.GradientTape() as tape:
            q = tf.gather(self.model(states, training=True), actions, axis=1, batch_dims=1)
            loss = self.loss(targets, q)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss

    def q_values(self, states: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return self._forward(states).numpy()

    def target_q_values(self, states: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return self._target_q(states).numpy()

    def train_step(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        with tf.device(self.device):
            return float(self._td_step(states, actions, targets).numpy())

    def update_target(self) -> None:
        self.target.set_weights(self.model.get_weights())
