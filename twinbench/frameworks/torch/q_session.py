"""PyTorch's part of a DQN job: the Q-network, its target copy and one TD-loss step."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from twinbench.api import trainer_pb2 as pb
from twinbench.frameworks.torch.session import (
    TorchSession,
    build_model,
    device_name,
    load_weights,
    make_optimizer,
    optimizer_fairness,
    pick_device,
)
from twinbench.models.initial_weights import SHARED_INIT, shared_initial_weights
from twinbench.models.spec import ModelSpec


class TorchQSession(TorchSession):
    """The online network is `self.model` (so exports and predict are TorchSession's)."""

    def __init__(self, spec: pb.JobSpec, model_spec: ModelSpec) -> None:
        self.spec, self.model_spec = spec, model_spec
        self.device = pick_device(spec.device)
        torch.manual_seed(spec.seed)
        model = build_model(model_spec)
        if spec.init == "shared":
            load_weights(model, shared_initial_weights(model_spec, spec.seed))
        self.model = model.to(self.device)
        self.target = copy.deepcopy(self.model).eval()
        self.input_shape = model_spec.input_shape
        self.parameter_count = sum(p.numel() for p in self.model.parameters())
        self.device_name = device_name(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), spec.optimizer)
        self.augment = None
        self.clip_norm = model_spec.reinforcement.grad_clip_norm

    def fairness(self) -> dict[str, str]:
        return {
            "init": SHARED_INIT
            if self.spec.init == "shared"
            else "PyTorch's own: Kaiming uniform (a=sqrt 5), biases U(+-1/sqrt fan_in)",
            "optimizer": optimizer_fairness(self.spec.optimizer),
            "td step": "F.smooth_l1_loss (beta 1, mean) on Q(s, a) gathered from the online net;"
            f" clip_grad_norm_ to {self.clip_norm:g}",
            "target copy": "load_state_dict of the online network's",
            "compilation": "eager (no torch.compile)",
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
