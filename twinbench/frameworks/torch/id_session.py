"""PyTorch's session for the id-input models (NCF, GNMT): their tasks' losses and inputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.torch.models import build_id_model, load_id_weights
from twinbench.frameworks.torch.session import TorchSessionBase
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_ID_INIT, shared_id_weights
from twinbench.models.tasks import PAD_ID


class TorchIdSession(TorchSessionBase):
    """A job of an id-input model (NCF, GNMT): the loss and inputs its task says
    (twinbench/models/tasks.py), in fp32 (refused otherwise by twinbench.jobs.request)."""

    shared_init = SHARED_ID_INIT
    own_init = "PyTorch's own: embeddings N(0, 1), Linear and LSTM U(+-1/sqrt fan_in)"

    def __init__(self, spec: tpb.JobSpec, declared: NeuMF | GNMT) -> None:
        if spec.channels_last:
            raise InvalidArgument(f"model {declared.name} takes ids: channels-last is for images")
        self.declared = declared
        super().__init__(spec, declared)

    def new_model(self) -> nn.Module:
        model = build_id_model(self.declared)
        if self.spec.init == "shared":
            load_id_weights(model, shared_id_weights(self.declared, self.spec.seed))
        return model

    def fairness(self) -> dict[str, str]:
        return {**super().fairness(), "embedding gradients": "dense (nn.Embedding's default)"}

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its number of hits, as twinbench.models.tasks defines them."""
        if self.task.kind == "ranking":
            logit = logits.squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, labels.to(logit.dtype))
            return loss, ((logit > 0) == (labels == 1)).sum()
        flat = logits.reshape(-1, logits.shape[-1])
        loss = nn.functional.cross_entropy(flat, labels.reshape(-1), ignore_index=PAD_ID)
        hits = ((logits.argmax(-1) == labels) & (labels != PAD_ID)).sum()
        return loss, hits

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        labels = torch.from_numpy(y).to(self.device, non_blocking=True)
        loss, hits = self._loss(self.forward(*self.inputs(x)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), hits  # read by the loop at the end of a timed segment
