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


def _import_torch_first() -> None:
    """PyTorch's optimizers import torch._dynamo lazily, and that import crashes the process
    once TensorFlow's native libraries are loaded; imported first, it does not."""
    import torch._dynamo  # noqa: F401


def check_parity(
    model_name: str, seed: int = 0, rows: int = 64, hidden_units: tuple[int, ...] = ()
) -> Parity:
    _import_torch_first()
    import torch

    from services.tf_trainer.framework import build_model as build_keras
    from services.torch_trainer.framework import build_model as build_torch
    from services.torch_trainer.framework import model_weights

    spec = get_model_spec(model_name, hidden_units)
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


@dataclass(frozen=True)
class Divergence:
    """Where the two frameworks stand after `step` identical training steps from one start."""

    step: int
    max_abs_diff: float  # largest |torch - keras| logit on the test images
    disagreement: float  # share of test images whose predicted classes differ
    torch_accuracy: float
    keras_accuracy: float


def trajectory(model_name: str, epochs: int, seed: int = 0) -> list[Divergence]:
    """Trains both frameworks from the same shared init on the same batches, side by side, and
    measures how far apart they are after 1, 10 and 100 steps and after every epoch.

    This is what shared init buys: the same start, and for a while the same path; floating-point
    sums in different orders then let the trajectories part, which is why one run's accuracy
    difference says little and compare repeats with new seeds.
    """
    _import_torch_first()
    from services.tf_trainer.framework import TFSession
    from services.torch_trainer.framework import TorchSession
    from twinbench.api import trainer_pb2 as tpb
    from twinbench.datasets import epoch_order
    from twinbench.jobs import resolve_spec

    spec = get_model_spec(model_name)
    sessions = [
        session(resolve_spec(tpb.JobSpec(framework=fw, model=model_name, seed=seed)), spec)
        for fw, session in (("torch", TorchSession), ("tf", TFSession))
    ]
    data = load_dataset(spec.defaults.dataset, spec)
    train = [s.prepare(data.train.x) for s in sessions]
    test = [s.prepare(data.test.x) for s in sessions]
    batch = sessions[0].spec.batch_size
    batches = -(-len(data.train) // batch)

    def measure(step: int) -> Divergence:
        logits = [s.predict(x) for s, x in zip(sessions, test, strict=True)]
        predicted = [z.argmax(axis=1) for z in logits]
        return Divergence(
            step,
            float(np.abs(logits[0] - logits[1]).max()),
            float((predicted[0] != predicted[1]).mean()),
            float((predicted[0] == data.test.y).mean()),
            float((predicted[1] == data.test.y).mean()),
        )

    out, step = [], 0
    for epoch in range(1, epochs + 1):
        order = epoch_order(len(data.train), seed, epoch)
        for b in range(batches):
            rows = order[b * batch : (b + 1) * batch]
            for s, x in zip(sessions, train, strict=True):
                s.train_batch(x[rows], data.train.y[rows])
            step += 1
            if step in (1, 10, 100) or b == batches - 1:
                out.append(measure(step))
    return out
