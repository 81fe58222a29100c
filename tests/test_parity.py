"""Fairness shown, not claimed: the same weights give the same logits, and the same SGD steps."""

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

SEQUENTIAL = sorted(set(MODELS) - set(ARCHITECTURES) - set(FINE_TUNING))

pytestmark = pytest.mark.integration  # builds and runs both frameworks


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_pytorch_weights_copied_into_keras_give_the_same_logits(name):
    result = check_parity(name, seed=3)
    assert result.ok, result
    assert result.relative <= PARITY_TOLERANCE and result.rows == 64
    assert result.train_stats is None and result.train_logits is None  # no batch norm


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_imagenet_architectures_match_at_a_small_width(name):
    # Every layer kind at a fraction of the width; the mappings are the full-size ones.
    result = check_parity(name, seed=3, width=0.125, image_size=64)
    assert result.ok, result
    assert (
        result.parameters
        == result.keras_parameters
        == get_model_spec(name, 0.125, 64).parameter_count()
    )
    if name in ("resnet50", "mobilenet_v2"):  # batch norm: the running statistics moved alike
        assert result.train_stats is not None and result.train_stats <= TRAIN_TOLERANCE
    if name == "resnet50":  # no dropout: train-mode logits compare too
        assert result.train_logits <= TRAIN_TOLERANCE


def test_fine_tuning_base_from_one_weights_file_matches_at_a_small_width():
    # No vgg16-weights file here: both frameworks load a random one in torchvision's format.
    result = check_parity("vgg16_finetune", seed=3, width=0.125, image_size=32)
    assert result.ok, result
    assert result.relative <= PARITY_TOLERANCE and "torchvision's format" in result.weights_file
    assert result.parameters == get_model_spec("vgg16_finetune", 0.125, 32).parameter_count()


def test_keras_running_variance_is_levelled_to_pytorchs_unbiased_one():
    import keras
    import torch

    from twinbench.frameworks.tf.models import LevelledBatchNorm

    x = np.random.default_rng(0).random((4, 2, 3, 3), dtype=np.float32) * 3
    torch_bn = torch.nn.BatchNorm2d(2, eps=1e-5, momentum=0.1).train()
    torch_bn(torch.from_numpy(x))
    nhwc = x.transpose(0, 2, 3, 1)
    variances = {}
    for layer in (keras.layers.BatchNormalization, LevelledBatchNorm):
        bn = layer(momentum=0.9, epsilon=1e-5)
        bn(nhwc, training=True)
        variances[layer] = np.asarray(bn.moving_variance)
    expected = torch_bn.running_var.detach().numpy()
    np.testing.assert_allclose(variances[LevelledBatchNorm], expected, rtol=1e-6)
    # Keras's own keeps the biased estimate: with n = 36 elements per channel, off by n/(n-1).
    unbiased_part = expected - 0.9
    np.testing.assert_allclose(
        variances[keras.layers.BatchNormalization] - 0.9, unbiased_part * 35 / 36, rtol=1e-5
    )


def _sessions(model: str, init: str):
    from twinbench.frameworks.tf.session import TFSession
    from twinbench.frameworks.torch.session import TorchSession

    spec = get_model_spec(model)
    torch_spec = resolve_spec(tpb.JobSpec(framework="torch", model=model, init=init))
    tf_spec = resolve_spec(tpb.JobSpec(framework="tf", model=model, init=init))
    return TorchSession(torch_spec, spec), TFSession(tf_spec, spec)


def _max_logit_diff(a, b, x) -> float:
    return float(np.abs(a.predict(a.prepare(x)) - b.predict(b.prepare(x))).max())


@pytest.mark.parametrize("name", [n for n in SEQUENTIAL if MODELS[n].kind == "supervised"])
def test_shared_init_starts_both_frameworks_at_the_same_point(name):
    spec = get_model_spec(name)
    source = "mnist-5k" if spec.input_shape == (1, 28, 28) else "synthetic"
    x = load_dataset(source, spec).test.x[:16]
    assert _max_logit_diff(*_sessions(name, "shared"), x) <= PARITY_TOLERANCE
    assert _max_logit_diff(*_sessions(name, "framework"), x) > 1e-3  # each its own: they differ


def test_same_start_same_batches_same_sgd_steps():
    # SGD with momentum has the same update in both at a constant learning rate, so both
    # frameworks should walk the same path; Adam differs in where epsilon sits.
    torch_session, tf_session = _sessions("mlp", "shared")
    data = load_dataset("mnist-5k")
    order = epoch_order(len(data.train), seed=0, epoch=1)
    tx, fx = torch_session.prepare(data.train.x), tf_session.prepare(data.train.x)
    for step in range(10):
        rows = order[step * 64 : (step + 1) * 64]
        torch_loss, _ = torch_session.train_batch(tx[rows], data.train.y[rows])
        tf_loss, _ = tf_session.train_batch(fx[rows], data.train.y[rows])
        assert float(torch_loss) == pytest.approx(float(tf_loss), abs=1e-5)
    assert _max_logit_diff(torch_session, tf_session, data.test.x[:64]) <= 1e-5


@pytest.mark.parametrize("name", ["ncf", "gnmt"])
def test_id_models_match_at_a_small_scale(name):
    # Embeddings, LSTMs (two PyTorch biases summed into Keras's one), residual LSTM stacks and
    # dot-product attention.
    result = check_id_parity(name, seed=3, scale=0.03)
    assert result.ok, result
    assert result.relative <= PARITY_TOLERANCE and result.scale > 0


def test_parity_and_shared_init_hold_for_tuned_hidden_units():
    units = (300, 200, 150, 40)  # what a sweep's trial may ask for
    assert check_parity("mlp", seed=1, hidden_units=units).ok
    spec = get_model_spec("mlp", hidden_units=units)
    from twinbench.frameworks.tf.session import TFSession
    from twinbench.frameworks.torch.session import TorchSession

    sessions = [
        cls(resolve_spec(tpb.JobSpec(framework=f, model="mlp", hidden_units=units)), spec)
        for cls, f in ((TorchSession, "torch"), (TFSession, "tf"))
    ]
    assert all(s.parameter_count == spec.parameter_count() for s in sessions)
    x = load_dataset("mnist-5k").test.x[:16]
    assert _max_logit_diff(*sessions, x) <= PARITY_TOLERANCE
