"""JAX's part of a DQN job: the Q-network, its target copy and one TD-loss step."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.jax.models import build_model, load_weights
from twinbench.frameworks.jax.session import JaxSessionBase
from twinbench.models.initial_weights import shared_initial_weights
from twinbench.models.spec import ModelSpec


class JaxQSession(JaxSessionBase):
    """The online network is the session's model (so predict and exports are the base
    session's); the target is a copy of its parameters. fp32, one jax.jit-ed TD step."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        rl = model_spec.reinforcement
        if rl is None:  # the training loop makes Q-network sessions only for DQN declarations
            raise InvalidArgument(f"model {model_spec.name} is not a reinforcement-learning one")
        self.model_spec = model_spec
        self.clip_norm = rl.grad_clip_norm
        # Clipped to a global norm over all gradients, as clip_grad_norm_ does in PyTorch.
        super().__init__(spec, model_spec, clip_norm=self.clip_norm)
        self.target = jax.tree.map(lambda a: a.copy(), self.params)
        self._td_step = jax.jit(self._td, donate_argnums=(0, 1))

    def new_model(self) -> nnx.Module:
        model = build_model(self.model_spec, self.spec.seed)
        if self.spec.init == "shared":
            weights = shared_initial_weights(self.model_spec, self.spec.seed)
            load_weights(model, self.model_spec, weights)
        return model

    def fairness(self) -> dict[str, str]:
        return {
            **super().fairness(),
            "td step": "optax.huber_loss (delta 1, mean) on Q(s, a) taken from the online net;"
            f" optax.clip_by_global_norm({self.clip_norm:g}) (no 1e-6 in the divisor, unlike"
            " clip_grad_norm_)",
            "target copy": "a copy of the online network's parameters",
        }

    def _td(self, params, opt_state, states, actions, targets):
        def loss_fn(params):
            q = nnx.merge(self.graphdef, params, self.rest)(states)
            chosen = jax.numpy.take_along_axis(q, actions[:, None], axis=1)[:, 0]
            return optax.huber_loss(chosen, targets, delta=1.0).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def q_values(self, states: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(self.params, self.rest, states))

    def target_q_values(self, states: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(self.target, self.rest, states))

    def train_step(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        self.params, self.opt_state, loss = self._td_step(
            self.params, self.opt_state, states, actions.astype(np.int32), targets
        )
        return float(loss)

    def update_target(self) -> None:
        self.target = jax.tree.map(lambda a: a.copy(), self.params)
