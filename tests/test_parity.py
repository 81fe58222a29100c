"""Fairness shown, not claimed: the same weights give the same logits, and the same SGD steps."""

import numpy as np
import pytest

from twinbench.api import trainer_pb2 as tpb
from twinbench.datasets import epoch_order, load_dataset
from twinbench.jobs import resolve_spec
from twinbench.parity import PARITY_TOLERANCE, check_parity
from twinbench.specs import MODELS, get_model_spec

pytestmark = pytest.mark.integration  # builds and runs both frameworks


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pytorch_weights_copied_into_keras_give_the_same_logits(name):
    result = check_parity(name, seed=3)
    assert result.ok, result
    assert result.max_abs_diff <= PARITY_TOLERANCE and result.rows == 64


def _sessions(model: str, init: str):
    from services.tf_trainer.framework import TFSession
    from services.torch_trainer.framework import TorchSession

    spec = get_model_spec(model)
    torch_spec = resolve_spec(tpb.JobSpec(framework="torch", model=model, init=init))
    tf_spec = resolve_spec(tpb.JobSpec(framework="tf", model=model, init=init))
    return TorchSession(torch_spec, spec), TFSession(tf_spec, spec)


def _max_logit_diff(a, b, x) -> float:
    return float(np.abs(a.predict(a.prepare(x)) - b.predict(b.prepare(x))).max())


@pytest.mark.parametrize("name", sorted(MODELS))
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
        assert torch_loss == pytest.approx(tf_loss, abs=1e-5)
    assert _max_logit_diff(torch_session, tf_session, data.test.x[:64]) <= 1e-5


def test_parity_and_shared_init_hold_for_tuned_hidden_units():
    units = (300, 200, 150, 40)  # what a sweep's trial may ask for
    assert check_parity("mlp", seed=1, hidden_units=units).ok
    spec = get_model_spec("mlp", units)
    from services.tf_trainer.framework import TFSession
    from services.torch_trainer.framework import TorchSession

    sessions = [
        cls(resolve_spec(tpb.JobSpec(framework=f, model="mlp", hidden_units=units)), spec)
        for cls, f in ((TorchSession, "torch"), (TFSession, "tf"))
    ]
    assert all(s.parameter_count == spec.parameter_count() for s in sessions)
    x = load_dataset("mnist-5k").test.x[:16]
    assert _max_logit_diff(*sessions, x) <= PARITY_TOLERANCE
