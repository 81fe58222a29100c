"""The parity check: the PyTorch model's weights copied into the Keras model give the same logits.

It needs both frameworks in one process, so it is run from the CLI, never inside a service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinbench.datasets import load_dataset
from twinbench.init import keras_layout
from twinbench.specs import get_model_spec

PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Parity:
    model: str
    parameters: int
    rows: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE


def check_parity(model_name: str, seed: int = 0, rows: int = 64) -> Parity:
    import torch

    from services.tf_trainer.framework import build_model as build_keras
    from services.torch_trainer.framework import build_model as build_torch
    from services.torch_trainer.framework import model_weights

    spec = get_model_spec(model_name)
    torch.manual_seed(seed)
    torch_model = build_torch(spec).eval()  # PyTorch's own random init: any weights will do
    keras_model = build_keras(spec)
    keras_model.set_weights(keras_layout(spec, model_weights(torch_model)))

    source = "mnist-5k" if spec.input_shape == (1, 28, 28) else "synthetic"
    batch = load_dataset(source, spec).test.x[:rows]
    with torch.inference_mode():
        torch_logits = torch_model(torch.from_numpy(batch)).numpy()
    keras_logits = keras_model(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)), training=False)
    diff = float(np.max(np.abs(torch_logits - np.asarray(keras_logits))))
    count = sum(p.numel() for p in torch_model.parameters())
    return Parity(model_name, count, rows, diff)
