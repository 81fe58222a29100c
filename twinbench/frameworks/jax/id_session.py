"""JAX's session for the id-input models (NCF, GNMT): their tasks' losses and inputs."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.jax.models import build_id_model, load_id_weights
from twinbench.frameworks.jax.session import JaxSessionBase
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_ID_INIT, shared_id_weights
from twinbench.models.tasks import PAD_ID


class JaxIdSession(JaxSessionBase):
    """A job of an id-input model (NCF, GNMT): the loss and inputs its task says
    (twinbench/models/tasks.py), one jax.jit-ed step, in fp32."""

    shared_init = SHARED_ID_INIT
    own_init = "Flax's own: embeddings N(0, 1) scaled by variance_scaling, Glorot uniform kernels"

    def __init__(self, spec: tpb.JobSpec, declared: NeuMF | GNMT) -> None:
        if spec.channels_last:
            raise InvalidArgument(f"model {declared.name} takes ids: channels-last is for images")
        self.declared = declared
        super().__init__(spec, declared)
        self._train_step = jax.jit(self._step, donate_argnums=(0, 2))

    def new_model(self) -> nnx.Module:
        model = build_id_model(self.declared, self.spec.seed)
        if self.spec.init == "shared":
            load_id_weights(model, shared_id_weights(self.declared, self.spec.seed))
        return model

    def fairness(self) -> dict[str, str]:
        return {
            **super().fairness(),
            "embedding gradients": "dense (jax.grad of a gather is a dense scatter-add)",
            "lstm": "one kernel in x 4h, one recurrent kernel, one bias (PyTorch's two summed),"
            " gates i, f, g, o, (c, h) carry from zeros; jax.lax.scan over time",
        }

    def _loss(self, logits, labels):
        """The batch's mean loss and its number of hits, as twinbench.models.tasks defines them."""
        if self.task.kind == "ranking":
            logit = logits[:, 0]
            loss = optax.sigmoid_binary_cross_entropy(logit, labels.astype(logit.dtype)).mean()
            return loss, ((logit > 0) == (labels == 1)).sum()
        valid = labels != PAD_ID  # ignore_index: the mean over the non-pad tokens
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss = (losses * valid).sum() / valid.sum()
        return loss, ((logits.argmax(-1) == labels) & valid).sum()

    def _step(self, params, rest, opt_state, xs, y):
        def loss_fn(params):
            logits = nnx.merge(self.graphdef, params, rest)(*xs)
            return self._loss(logits, y)

        (loss, hits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, hits

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        self.steps += 1
        labels = jax.device_put(y, self.device)
        self.params, self.opt_state, loss, hits = self._train_step(
            self.params, self.rest, self.opt_state, self.inputs(x), labels
        )
        loss.block_until_ready()  # the step is done when train_batch returns, as in the others
        return loss, hits
