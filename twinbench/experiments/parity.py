"""The parity check: the PyTorch model's weights copied into the Keras model give the same logits.

It needs both frameworks in one process, so it is run from the CLI, never inside a service.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinbench.data.datasets import load_dataset
from twinbench.data.pretrained import base_weights
from twinbench.models.catalogue import get_model_spec
from twinbench.models.id_models import NeuMF, id_model
from twinbench.models.imagenet import ARCHITECTURES
from twinbench.models.layers import BatchNorm, Dropout

PARITY_TOLERANCE = 1e-5  # eval mode, relative to the largest |value| compared (the logits' scale)
# Train mode normalises each batch norm by the batch's own statistics, so float differences
# compound through the depth: 1.2e-4 at MobileNetV2's last layers at full size (2e-5 at width
# 0.125). A wrong conversion is far above it: Keras's own momentum (0.99) makes the moves ten times
# smaller. The variance levelling (n / (n - 1), 1e-3 and less here) is tested on its own.
TRAIN_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Parity:
    model: str
    parameters: int  # trainable, as PyTorch counts them
    keras_parameters: int  # trainable, as Keras counts them (without batch norm's moving stats)
    rows: int
    max_abs_diff: float  # eval mode: the largest |torch - keras| logit
    scale: float  # eval mode: the largest |torch logit|
    # Train mode, after one forward pass on the same batch: how far batch norm's running
    # statistics moved, the largest difference relative to each statistic's largest move (None:
    # no batch norm), and the logits relative to their scale (None: no batch norm, so nothing
    # that eval mode did not show, or dropout, which draws different masks in each).
    train_stats: float | None
    train_logits: float | None
    # What Keras should count when it differs by construction (an LSTM has one bias vector in
    # Keras, two in PyTorch); None: the same as PyTorch.
    keras_expected: int | None = None
    # A fine-tuning model's pretrained file that both frameworks loaded (a random stand-in in
    # torchvision's format, in a temporary folder, where the real one is absent).
    weights_file: str | None = None

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.scale, 1e-30)

    @property
    def ok(self) -> bool:
        train = [v for v in (self.train_stats, self.train_logits) if v is not None]
        return (
            self.keras_parameters == (self.keras_expected or self.parameters)
            and self.relative <= PARITY_TOLERANCE
            and all(v <= TRAIN_TOLERANCE for v in train)
        )


def _import_torch_first() -> None:
    """PyTorch's optimizers import torch._dynamo lazily, and that import crashes the process
    once TensorFlow's native libraries are loaded; imported first, it does not."""
    import torch._dynamo  # noqa: F401


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))


def check_parity(
    model_name: str,
    seed: int = 0,
    rows: int | None = None,
    width: float | None = None,
    image_size: int | None = None,
    hidden_units: tuple[int, ...] = (),
) -> Parity:
    """Copies PyTorch's weights into Keras and compares logits in eval mode, then one train-mode
    forward pass, which moves batch norm's running statistics in both."""
    _import_torch_first()
    import torch

    from twinbench.frameworks.tf.models import build_model as build_keras
    from twinbench.frameworks.tf.models import set_weights, trainable_count, weighted_layers
    from twinbench.frameworks.torch.models import build_model as build_torch
    from twinbench.frameworks.torch.models import load_base, model_weights, weighted_modules

    spec = get_model_spec(model_name, width, image_size, hidden_units)
    rows = rows or (16 if model_name in ARCHITECTURES or spec.pretrained else 64)
    torch.manual_seed(seed)
    torch_model = build_torch(spec).eval()  # PyTorch's own random init: any weights will do
    weights_file = None
    if spec.pretrained:  # the base from the one weights file, the top PyTorch's own init
        path, stand_in = _pretrained_file(spec, seed)
        load_base(torch_model, base_weights(spec, path))
        weights_file = (
            f"a random stand-in in torchvision's format ({path.name} absent)"
            if stand_in
            else str(path)
        )
        if stand_in:
            shutil.rmtree(path.parent, ignore_errors=True)
    with torch.no_grad():  # batch norm starts at the identity: make its mapping visible
        for module in weighted_modules(torch_model):
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = _running_statistics(module)
                for tensor in (module.weight, module.bias, mean):
                    tensor.uniform_(-0.5, 0.5)
                var.uniform_(0.5, 1.5)
    keras_model = build_keras(spec)
    set_weights(keras_model, spec, model_weights(torch_model))

    if spec.input_shape == (1, 28, 28):
        batch = load_dataset("mnist-5k", spec).test.x[:rows]
    else:
        batch = np.random.default_rng(seed).random((rows, *spec.input_shape), dtype=np.float32)
    nhwc = np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if batch.ndim == 4 else batch
    with torch.inference_mode():
        torch_logits = torch_model(torch.from_numpy(batch)).numpy()
    keras_logits = np.asarray(keras_model(nhwc, training=False))

    # Train mode: one forward pass moves batch norm's running statistics in both; the moves
    # (after - before) are compared, relative to the largest move of each statistic.
    torch_bn = [m for m in weighted_modules(torch_model) if isinstance(m, torch.nn.BatchNorm2d)]
    keras_bn = [
        layer
        for layer, (declared, _) in zip(
            weighted_layers(keras_model, spec), spec.weighted(), strict=True
        )
        if isinstance(declared, BatchNorm)
    ]
    before = [tuple(s.clone().numpy() for s in _running_statistics(m)) for m in torch_bn]
    if torch_bn:  # without batch norm, train mode differs from eval only by dropout
        torch_model.train()
        with torch.no_grad():
            torch_train = torch_model(torch.from_numpy(batch)).numpy()
        keras_train = np.asarray(keras_model(nhwc, training=True))
    stats = []
    for module, layer, (mean, var) in zip(torch_bn, keras_bn, before, strict=True):
        running_mean, running_var = (s.numpy() for s in _running_statistics(module))
        stats.append(_relative(running_mean - mean, np.asarray(layer.moving_mean) - mean))
        stats.append(_relative(running_var - var, np.asarray(layer.moving_variance) - var))
    has_dropout = any(isinstance(layer, Dropout) for layer, _, _ in spec.walk())
    return Parity(
        model=model_name,
        parameters=sum(p.numel() for p in torch_model.parameters() if p.requires_grad),
        keras_parameters=trainable_count(keras_model),
        rows=rows,
        max_abs_diff=float(np.max(np.abs(torch_logits - keras_logits))),
        scale=float(np.max(np.abs(torch_logits))),
        train_stats=max(stats) if stats else None,
        train_logits=None if has_dropout or not torch_bn else _relative(torch_train, keras_train),
        weights_file=str(weights_file) if weights_file else None,
    )


def _pretrained_file(spec, seed: int) -> tuple[Path, bool]:
    """The pretrained file the jobs would use (twinbench data download), or, where it is
    absent or made for another width, a random one in torchvision's format made for the check."""
    from twinbench.config import load_settings
    from twinbench.data.pretrained import WeightsFileError, make_random_weights_file, weights_path

    path = weights_path(spec, load_settings().data)
    try:
        base_weights(spec, path)
        return path, False
    except WeightsFileError:
        stand_in = Path(tempfile.mkdtemp(prefix="twinbench-parity-")) / spec.pretrained.filename
        return make_random_weights_file(spec, stand_in, seed), True


def check_id_parity(model_name: str, seed: int = 0, rows: int | None = None, scale: float = 1.0):
    """The parity check of the id-input models (NCF, GNMT): PyTorch's weights in Keras, the same
    ids in, logits compared relative to their scale. Neither has batch norm or dropout, so train
    mode computes what eval mode does."""
    _import_torch_first()
    import torch

    from twinbench.frameworks.tf.models import build_id_model as build_keras
    from twinbench.frameworks.tf.models import set_id_weights, trainable_count
    from twinbench.frameworks.torch.models import build_id_model as build_torch
    from twinbench.frameworks.torch.models import id_model_weights

    declared = id_model(model_name, scale)
    torch.manual_seed(seed)
    torch_model = build_torch(declared).eval()
    keras_model = build_keras(declared)
    set_id_weights(keras_model, id_model_weights(torch_model))
    rng = np.random.default_rng(seed)
    keras_expected = None
    if isinstance(declared, NeuMF):
        rows = rows or 64
        inputs = [rng.integers(0, declared.users, rows), rng.integers(0, declared.items, rows)]
    else:
        rows = rows or 4
        inputs = [
            rng.integers(0, declared.vocab, (rows, declared.source_length)),
            rng.integers(0, declared.vocab, (rows, declared.target_length)),
        ]
        keras_expected = declared.parameter_count(lstm_biases=1)
    with torch.inference_mode():
        torch_logits = torch_model(*(torch.from_numpy(x) for x in inputs)).numpy()
    keras_logits = np.asarray(keras_model(inputs, training=False))
    return Parity(
        model=model_name,
        parameters=sum(p.numel() for p in torch_model.parameters()),
        keras_parameters=trainable_count(keras_model),
        rows=rows,
        max_abs_diff=float(np.max(np.abs(torch_logits - keras_logits))),
        scale=float(np.max(np.abs(torch_logits))),
        train_stats=None,
        train_logits=None,
        keras_expected=keras_expected,
    )


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
    from twinbench.api import trainer_pb2 as tpb
    from twinbench.data.datasets import epoch_order
    from twinbench.frameworks.tf.session import TFSession
    from twinbench.frameworks.torch.session import TorchSession
    from twinbench.jobs.request import resolve_spec

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


def _running_statistics(module):
    """A batch norm's running mean and variance (always kept here: track_running_stats is on)."""
    assert module.running_mean is not None and module.running_var is not None
    return module.running_mean, module.running_var
