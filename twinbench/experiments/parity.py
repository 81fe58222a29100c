"""The parity check: the PyTorch model's weights copied into the Keras model (or the Flax one)
give the same logits.

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
    # The framework compared with PyTorch ("tf" or "jax"); keras_parameters, keras_expected and
    # the logits compared are that framework's.
    against: str = "tf"

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
    against: str = "tf",
) -> Parity:
    """Copies PyTorch's weights into the other framework's model (Keras, or Flax with
    against="jax") and compares logits in eval mode, then one train-mode forward pass, which
    moves batch norm's running statistics in both."""
    _import_torch_first()
    import torch

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

    if spec.input_shape == (1, 28, 28):
        batch = load_dataset("mnist-5k", spec).test.x[:rows]
    else:
        batch = np.random.default_rng(seed).random((rows, *spec.input_shape), dtype=np.float32)
    nhwc = np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if batch.ndim == 4 else batch
    torch_bn = [m for m in weighted_modules(torch_model) if isinstance(m, torch.nn.BatchNorm2d)]
    side = _jax_side if against == "jax" else _keras_side
    other = side(spec, model_weights(torch_model), nhwc, bool(torch_bn))
    with torch.inference_mode():
        torch_logits = torch_model(torch.from_numpy(batch)).numpy()

    # Train mode: one forward pass moves batch norm's running statistics in both; the moves
    # (after - before) are compared, relative to the largest move of each statistic.
    before = [tuple(s.clone().numpy() for s in _running_statistics(m)) for m in torch_bn]
    if torch_bn:  # without batch norm, train mode differs from eval only by dropout
        torch_model.train()
        with torch.no_grad():
            torch_train = torch_model(torch.from_numpy(batch)).numpy()
    stats = []
    for module, (other_mean, other_var), (mean, var) in zip(
        torch_bn, other.statistics, before, strict=True
    ):
        running_mean, running_var = (s.numpy() for s in _running_statistics(module))
        stats.append(_relative(running_mean - mean, other_mean - mean))
        stats.append(_relative(running_var - var, other_var - var))
    has_dropout = any(isinstance(layer, Dropout) for layer, _, _ in spec.walk())
    return Parity(
        model=model_name,
        parameters=sum(p.numel() for p in torch_model.parameters() if p.requires_grad),
        keras_parameters=other.parameters,
        rows=rows,
        max_abs_diff=float(np.max(np.abs(torch_logits - other.logits))),
        scale=float(np.max(np.abs(torch_logits))),
        train_stats=max(stats) if stats else None,
        train_logits=None
        if has_dropout or not torch_bn or other.train_logits is None
        else _relative(torch_train, other.train_logits),
        weights_file=str(weights_file) if weights_file else None,
        against=against,
    )


@dataclass
class _Side:
    """The other framework's model on the parity batch."""

    parameters: int  # trainable
    logits: np.ndarray  # eval mode
    train_logits: np.ndarray | None  # after one train-mode pass (models with batch norm)
    statistics: list[tuple[np.ndarray, np.ndarray]]  # each batch norm's after that pass


def _keras_side(spec, weights, nhwc: np.ndarray, train: bool) -> _Side:
    from twinbench.frameworks.tf.models import build_model as build_keras
    from twinbench.frameworks.tf.models import set_weights, trainable_count, weighted_layers

    keras_model = build_keras(spec)
    set_weights(keras_model, spec, weights)
    logits = np.asarray(keras_model(nhwc, training=False))
    train_logits = np.asarray(keras_model(nhwc, training=True)) if train else None
    layers = weighted_layers(keras_model, spec)
    statistics = [
        (np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
        for layer, (declared, _) in zip(layers, spec.weighted(), strict=True)
        if isinstance(declared, BatchNorm)
    ]
    return _Side(trainable_count(keras_model), logits, train_logits, statistics)


def _jax_side(spec, weights, nhwc: np.ndarray, train: bool) -> _Side:
    """Flax's model, run compiled (jax.jit), as the jax trainer runs it."""
    import jax
    from flax import nnx

    from twinbench.frameworks.jax.models import build_model, load_weights, trainable_count

    model = build_model(spec)
    load_weights(model, spec, weights)
    graphdef, state = nnx.split(model)

    def run(state, x, train):
        model = nnx.merge(graphdef, state)
        logits = model(x, train=train, key=jax.random.key(0))
        return logits, nnx.split(model)[1]

    run = jax.jit(run, static_argnums=2)
    logits = np.asarray(run(state, nhwc, False)[0])
    train_logits, statistics = None, []
    if train:
        out, state = run(state, nhwc, True)
        train_logits = np.asarray(out)
        nnx.update(model, state)
        statistics = [
            (np.asarray(m.mean[...]), np.asarray(m.var[...]))
            for m in model.weighted()
            if isinstance(m, nnx.BatchNorm)
        ]
    return _Side(trainable_count(model), logits, train_logits, statistics)


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


def check_id_parity(
    model_name: str,
    seed: int = 0,
    rows: int | None = None,
    scale: float = 1.0,
    against: str = "tf",
):
    """The parity check of the id-input models (NCF, GNMT): PyTorch's weights in Keras (or Flax,
    against="jax"), the same ids in, logits compared relative to their scale. Neither has batch
    norm or dropout, so train mode computes what eval mode does."""
    _import_torch_first()
    import torch

    from twinbench.frameworks.torch.models import build_id_model as build_torch
    from twinbench.frameworks.torch.models import id_model_weights

    declared = id_model(model_name, scale)
    torch.manual_seed(seed)
    torch_model = build_torch(declared).eval()
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
        # One LSTM bias vector per layer, in Keras and in Flax alike (PyTorch's two summed).
        keras_expected = declared.parameter_count(lstm_biases=1)
    with torch.inference_mode():
        torch_logits = torch_model(*(torch.from_numpy(x) for x in inputs)).numpy()
    weights = id_model_weights(torch_model)
    if against == "jax":
        import jax
        from flax import nnx

        from twinbench.frameworks.jax.models import build_id_model as build_flax
        from twinbench.frameworks.jax.models import load_id_weights, trainable_count

        flax_model = build_flax(declared)
        load_id_weights(flax_model, weights)
        graphdef, state = nnx.split(flax_model)
        run = jax.jit(lambda state, *xs: nnx.merge(graphdef, state)(*xs))
        other_logits = np.asarray(run(state, *(x.astype(np.int32) for x in inputs)))
        other_count = trainable_count(flax_model)
    else:
        from twinbench.frameworks.tf.models import build_id_model as build_keras
        from twinbench.frameworks.tf.models import set_id_weights
        from twinbench.frameworks.tf.models import trainable_count as keras_count

        keras_model = build_keras(declared)
        set_id_weights(keras_model, weights)
        other_logits = np.asarray(keras_model(inputs, training=False))
        other_count = keras_count(keras_model)
    return Parity(
        model=model_name,
        parameters=sum(p.numel() for p in torch_model.parameters()),
        keras_parameters=other_count,
        rows=rows,
        max_abs_diff=float(np.max(np.abs(torch_logits - other_logits))),
        scale=float(np.max(np.abs(torch_logits))),
        train_stats=None,
        train_logits=None,
        keras_expected=keras_expected,
        against=against,
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
