"""Fairness shown for the third arm: PyTorch's weights in Flax give PyTorch's logits, batch norm
moves alike in train mode, the counts are torchvision's, and both frameworks walk the same path."""

import numpy as np
import pytest

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import epoch_order, load_dataset
from twinbench.experiments.parity import (
    PARITY_TOLERANCE,
    TRAIN_TOLERANCE,
    check_id_parity,
    check_parity,
)
from twinbench.jobs.request import resolve_spec
from twinbench.models.catalogue import MODELS, get_model_spec
from twinbench.models.imagenet import ARCHITECTURES, FINE_TUNING

pytest.importorskip("flax")

SEQUENTIAL = sorted(set(MODELS) - set(ARCHITECTURES) - set(FINE_TUNING))

pytestmark = pytest.mark.integration  # builds and runs PyTorch and JAX


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_pytorch_weights_copied_into_flax_give_the_same_logits(name):
    result = check_parity(name, seed=3, against="jax")
    assert result.ok, result
    assert result.relative <= PARITY_TOLERANCE and result.rows == 64
    assert result.parameters == result.keras_parameters == MODELS[name].parameter_count()


@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - {"vgg16"}))
def test_imagenet_architectures_match_in_flax_at_a_small_width(name):
    # Every layer kind (strided and depthwise convolutions, padded max pools, residual blocks,
    # batch norm, global pooling, dropout) at a fraction of the width.
    size = 64 if name == "alexnet" else 32
    result = check_parity(name, seed=3, width=0.125, image_size=size, against="jax")
    assert result.ok, result
    expected = get_model_spec(name, 0.125, size).parameter_count()
    assert result.parameters == result.keras_parameters == expected  # torchvision's counts
    if name in ("resnet50", "mobilenet_v2"):  # batch norm: the running statistics moved alike
        assert result.train_stats is not None and result.train_stats <= TRAIN_TOLERANCE
        assert result.train_logits is not None or name == "mobilenet_v2"  # its dropout differs
    if name == "resnet50":
        assert result.train_logits <= TRAIN_TOLERANCE


def test_fine_tuning_base_from_one_weights_file_matches_in_flax():
    result = check_parity("vgg16_finetune", seed=3, width=0.125, image_size=32, against="jax")
    assert result.ok, result
    assert "torchvision's format" in result.weights_file


@pytest.mark.parametrize("name", ["ncf", "gnmt"])
def test_id_models_match_in_flax_at_a_small_scale(name):
    result = check_id_parity(name, seed=3, scale=0.03, against="jax")
    assert result.ok, result
    assert result.relative <= PARITY_TOLERANCE and result.scale > 0
    if name == "gnmt":  # one LSTM bias vector per layer in Flax, as in Keras
        assert result.keras_parameters == result.keras_expected < result.parameters


def test_flax_running_variance_is_levelled_to_pytorchs_unbiased_one():
    import torch
    from flax import nnx

    from twinbench.frameworks.jax.models import LevelledBatchNorm

    x = np.random.default_rng(0).random((4, 2, 3, 3), dtype=np.float32) * 3
    torch_bn = torch.nn.BatchNorm2d(2, eps=1e-5, momentum=0.1).train()
    torch_bn(torch.from_numpy(x))
    nhwc = x.transpose(0, 2, 3, 1)
    variances = {}
    for layer in (nnx.BatchNorm, LevelledBatchNorm):
        bn = layer(2, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=nnx.Rngs(0))
        bn(nhwc, use_running_average=False)
        variances[layer] = np.asarray(bn.var[...])
    expected = torch_bn.running_var.detach().numpy()
    np.testing.assert_allclose(variances[LevelledBatchNorm], expected, rtol=1e-6)
    # Flax's own keeps the biased estimate: with n = 36 elements per channel, off by n/(n-1).
    np.testing.assert_allclose(
        variances[nnx.BatchNorm] - 0.9, (expected - 0.9) * 35 / 36, rtol=1e-5
    )


def _sessions(model: str, optimizer: str):
    from twinbench.frameworks.jax.session import JaxSession
    from twinbench.frameworks.torch.session import TorchSession

    spec = get_model_spec(model)
    # The MLP's tuned SGD rate; Adam at its usual 0.001 (0.0236 would diverge, and a
    # diverging run magnifies the float differences of two summation orders).
    rate = 0.0236 if optimizer == "sgd" else 0.001
    make = lambda fw: resolve_spec(  # noqa: E731
        tpb.JobSpec(
            framework=fw,
            model=model,
            optimizer=tpb.Optimizer(name=optimizer, learning_rate=rate),
        )
    )
    return TorchSession(make("torch"), spec), JaxSession(make("jax"), spec)


def _max_logit_diff(a, b, x) -> float:
    return float(np.abs(a.predict(a.prepare(x)) - b.predict(b.prepare(x))).max())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_start_same_batches_same_steps_in_torch_and_jax(optimizer):
    # Optax's SGD momentum and Adam are PyTorch's own forms (epsilon after the bias correction
    # in both), so from the shared init on the same batches they walk the same path.
    torch_session, jax_session = _sessions("mlp", optimizer)
    data = load_dataset("mnist-5k")
    assert _max_logit_diff(torch_session, jax_session, data.test.x[:64]) <= 1e-5  # shared init
    order = epoch_order(len(data.train), seed=0, epoch=1)
    tx, jx = torch_session.prepare(data.train.x), jax_session.prepare(data.train.x)
    # Adam divides each step by the gradient's own scale, so where a gradient is near zero the
    # float noise of two summation orders becomes part of the step (weights 3e-5 apart after one
    # step at lr 0.001, measured) and compounds: its paths agree for a few steps, not ten.
    steps = 10 if optimizer == "sgd" else 3
    for step in range(steps):
        rows = order[step * 64 : (step + 1) * 64]
        torch_loss, _ = torch_session.train_batch(tx[rows], data.train.y[rows])
        jax_loss, _ = jax_session.train_batch(jx[rows], data.train.y[rows])
        assert float(torch_loss) == pytest.approx(float(jax_loss), rel=1e-5)
    assert _max_logit_diff(torch_session, jax_session, data.test.x[:64]) <= 1e-4
