"""One declaration, two builders: both frameworks build the same number of parameters."""

import pytest

from twinbench.errors import InvalidArgument
from twinbench.specs import MODELS, get_model_spec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_both_frameworks_build_the_declared_parameter_count(name):
    from services.tf_trainer.framework import build_model as build_keras
    from services.torch_trainer.framework import build_model as build_torch

    spec = MODELS[name]
    torch_count = sum(p.numel() for p in build_torch(spec).parameters())
    keras_count = build_keras(spec).count_params()
    assert torch_count == keras_count == spec.parameter_count()


def test_published_sizes():
    # LeNet-5 on 28x28: 156 + 2,416 + 48,120 + 10,164 + 850; the MLP 784-456-150-132-68-10.
    assert MODELS["lenet5"].parameter_count() == (
        (5 * 5 * 1 + 1) * 6
        + (5 * 5 * 6 + 1) * 16
        + (16 * 5 * 5 + 1) * 120
        + (120 + 1) * 84
        + (84 + 1) * 10
    )
    assert (
        MODELS["mlp"].parameter_count()
        == 784 * 456 + 456 + 456 * 150 + 150 + 150 * 132 + 132 + 132 * 68 + 68 + 68 * 10 + 10
    )
    assert MODELS["lenet5"].shapes()[3] == (16, 5, 5)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(InvalidArgument, match="lenet5"):
        get_model_spec("resnet9000")


def test_hidden_units_change_the_declared_model_and_are_checked():
    mlp = MODELS["mlp"]
    assert mlp.hidden_units() == (456, 150, 132, 68)
    wider = get_model_spec("mlp", (300, 200, 150, 40))
    assert wider.hidden_units() == (300, 200, 150, 40) and wider.num_classes == 10
    assert wider.parameter_count() == (
        784 * 300 + 300 + 300 * 200 + 200 + 200 * 150 + 150 + 150 * 40 + 40 + 40 * 10 + 10
    )
    assert get_model_spec("mlp", ()) is mlp
    with pytest.raises(InvalidArgument, match="4 hidden dense layers"):
        get_model_spec("mlp", (300, 200))
    with pytest.raises(InvalidArgument, match="1..65536"):
        get_model_spec("mlp", (300, 0, 150, 40))
