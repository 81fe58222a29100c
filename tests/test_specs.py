"""One declaration, two builders: both frameworks build the same number of parameters."""

import pytest

from twinbench.errors import InvalidArgument
from twinbench.models.catalogue import MODELS, get_model_spec
from twinbench.models.id_models import ID_MODELS, id_model
from twinbench.models.imagenet import ARCHITECTURES, architecture

# The ImageNet architectures small enough for a test on a CPU: every kind of layer, few weights.
SMALL = {name: architecture(name, width=0.125, image_size=64) for name in ARCHITECTURES}
SEQUENTIAL = {name: spec for name, spec in MODELS.items() if name not in ARCHITECTURES}


def _counts(spec) -> tuple[int, int]:
    from twinbench.frameworks.tf.models import build_model as build_keras
    from twinbench.frameworks.tf.models import trainable_count
    from twinbench.frameworks.torch.models import build_model as build_torch

    torch_count = sum(p.numel() for p in build_torch(spec).parameters() if p.requires_grad)
    return torch_count, trainable_count(build_keras(spec))


@pytest.mark.parametrize("spec", [*SEQUENTIAL.values(), *SMALL.values()], ids=lambda s: s.name)
def test_both_frameworks_build_the_declared_parameter_count(spec):
    assert _counts(spec) == (spec.parameter_count(),) * 2


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


def test_imagenet_architectures_have_torchvisions_trainable_counts():
    # torchvision.models' alexnet, vgg19, resnet50 and mobilenet_v2, counted with
    # sum(p.numel() for p in model.parameters()).
    published = {
        "alexnet": 61_100_840,
        "vgg19": 143_667_240,
        "resnet50": 25_557_032,
        "mobilenet_v2": 3_504_872,
    }
    assert {name: MODELS[name].parameter_count() for name in published} == published
    assert MODELS["resnet50"].shapes()[-2] == (2048,)  # after the global average pool
    # torchvision's adaptive pools (7x7, 6x6) are left out: at 224x224 they are the identity.
    assert MODELS["vgg19"].shapes()[20] == (512, 7, 7)
    assert MODELS["alexnet"].shapes()[7] == (256, 6, 6)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_full_size_batch_norm_nets_build_torchvisions_count_in_both(name):
    # Keras counts batch norm's moving statistics as weights; they are not trainable ones.
    assert _counts(MODELS[name]) == (MODELS[name].parameter_count(),) * 2


def test_unknown_model_names_the_known_ones():
    with pytest.raises(InvalidArgument, match="lenet5"):
        get_model_spec("resnet9000")


def test_knobs_are_checked():
    assert get_model_spec("resnet50", 0.5, 96).input_shape == (3, 96, 96)
    with pytest.raises(InvalidArgument, match="width"):
        get_model_spec("vgg19", width=0)
    with pytest.raises(InvalidArgument, match="no width or image size"):
        get_model_spec("lenet5", image_size=64)
    with pytest.raises(InvalidArgument, match="larger image size"):
        get_model_spec("alexnet", image_size=32)  # three strided pools leave nothing


def test_id_models_declared_counts_and_both_builders():
    from twinbench.frameworks.tf.models import build_id_model as build_keras
    from twinbench.frameworks.tf.models import trainable_count
    from twinbench.frameworks.torch.models import build_id_model as build_torch

    # MLPerf's NCF (NeuMF on MovieLens-20M, factors 64, MLP 256-256-128-64): 31,832,577.
    assert ID_MODELS["ncf"].parameter_count() == 31_832_577
    for name in ID_MODELS:
        small = id_model(name, 0.03)
        torch_count = sum(p.numel() for p in build_torch(small).parameters())
        # Keras's LSTM has one bias vector where PyTorch's has two (their sum).
        keras_declared = small.parameter_count(1) if name == "gnmt" else small.parameter_count()
        assert torch_count == small.parameter_count()
        assert trainable_count(build_keras(small)) == keras_declared
    with pytest.raises(InvalidArgument, match="takes integer ids, not images"):
        get_model_spec("gnmt")


def test_hidden_units_change_the_declared_model_and_are_checked():
    mlp = MODELS["mlp"]
    assert mlp.hidden_units() == (456, 150, 132, 68)
    wider = get_model_spec("mlp", hidden_units=(300, 200, 150, 40))
    assert wider.hidden_units() == (300, 200, 150, 40) and wider.num_classes == 10
    assert wider.parameter_count() == (
        784 * 300 + 300 + 300 * 200 + 200 + 200 * 150 + 150 + 150 * 40 + 40 + 40 * 10 + 10
    )
    assert get_model_spec("mlp", hidden_units=()) is mlp
    with pytest.raises(InvalidArgument, match="4 hidden dense layers"):
        get_model_spec("mlp", hidden_units=(300, 200))
    with pytest.raises(InvalidArgument, match="1..65536"):
        get_model_spec("mlp", hidden_units=(300, 0, 150, 40))
