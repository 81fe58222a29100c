"""PyTorch's part of a DQN job: the Q-network, its target copy and one TD-loss step."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.frameworks.torch.models import build_model, load_weights
from twinbench.frameworks.torch.session import TorchSessionBase
from twinbench.models.initial_weights import shared_initial_weights
from twinbench.models.spec import ModelSpec


class TorchQSession(TorchSessionBase):
    """The online network is `self.model` (so exports and predict are the base session's);
    eager and fp32 (DQN jobs refuse compiled and mixed-precision modes)."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        rl = model_spec.reinforcement
        if rl is None:  # the training loop makes Q-network sessions only for DQN declarations
            raise InvalidArgument(f"model {model_spec.name} is not a reinforcement-learning one")
        self.model_spec = model_spec
        self.clip_norm = rl.grad_clip_norm
        super().__init__(spec, model_spec)
        self.target = copy.deepcopy(self.model).eval()

    def new_model(self) -> nn.Module:
        model = build_model(self.model_spec)
        if self.spec.init == "shared":
            load_weights(model, shared_initial_weights(self.model_spec, self.spec.seed))
        return model

    def fairness(self) -> dict[str, str]:
        return {
            **super().fairness(),
            "td step": "F.smooth_l1_loss (beta 1, mean) on Q(s, a) gathered from the online net;"
            f" clip_grad_norm_ to {self.clip_norm:g}",
            "target copy": "load_state_dict of the online network's",
        }

    def _run(self, net: nn.Module, states: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(states).to(self.device)).cpu().numpy()

    def q_values(self, states: np.ndarray) -> np.ndarray:
        return self._run(self.model, states)

    def target_q_values(self, states: np.ndarray) -> np.ndarray:
        return self._run(self.target, states)

    def train_step(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        inputs = torch.from_numpy(states).to(self.device)
        chosen = torch.from_numpy(actions).to(self.device).unsqueeze(1)
        q = self.model(inputs).gather(1, chosen).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, torch.from_numpy(targets).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return loss.item()

    def update_target(self) -> None:
        self.target.load_state_dict(self.model.state_dict())
