"""Every declared model by name: the catalogue the CLI, the jobs and the sweeps look models up in."""

from __future__ import annotations

from collections.abc import Sequence

from twinbench.errors import InvalidArgument
from twinbench.models.id_models import ID_MODELS
from twinbench.models.imagenet import ARCHITECTURES, FINE_TUNING, architecture, vgg16_finetune
from twinbench.models.layers import Conv, Dense, Flatten, Pool
from twinbench.models.spec import (
    DQN,
    Augment,
    Choice,
    FloatRange,
    IntRange,
    ModelSpec,
    TrainDefaults,
)

MODELS: dict[str, ModelSpec] = {
    "lenet5": ModelSpec(
        name="lenet5",
        description="LeNet-5: conv 6@5x5 same, avgpool 2, conv 16@5x5, avgpool 2, dense 120-84-10",
        input_shape=(1, 28, 28),
        layers=(
            Conv(6, 5, "same"),
            Pool("avg", 2),
            Conv(16, 5, "valid"),
            Pool("avg", 2),
            Flatten(),
            Dense(120),
            Dense(84),
            Dense(10, activation=None),
        ),
        defaults=TrainDefaults(optimizer="adam", learning_rate=0.001, batch_size=32, epochs=30),
    ),
    "mlp": ModelSpec(
        name="mlp",
        description="MLP 784-456-150-132-68-10, ReLU",
        input_shape=(1, 28, 28),
        layers=(
            Flatten(),
            Dense(456),
            Dense(150),
            Dense(132),
            Dense(68),
            Dense(10, activation=None),
        ),
        defaults=TrainDefaults(
            optimizer="sgd", learning_rate=0.0236, momentum=0.0643, batch_size=64, epochs=21
        ),
        # The Bayesian search that found the defaults above (50 runs, validation loss).
        search_space={
            "learning_rate": FloatRange(1e-4, 0.1, log=True),
            "momentum": FloatRange(0.0, 0.9),
            "batch_size": Choice((16, 32, 64, 128, 256)),
            "epochs": IntRange(20, 200),
            "units_1": IntRange(256, 512),
            "units_2": IntRange(128, 256),
            "units_3": IntRange(128, 256),
            "units_4": IntRange(32, 128),
        },
    ),
    "mnist_cnn": ModelSpec(
        name="mnist_cnn",
        description="A simple MNIST CNN: conv 32@3x3, maxpool 2, conv 64@3x3, maxpool 2, dense 128-10",
        input_shape=(1, 28, 28),
        layers=(
            Conv(32, 3),
            Pool("max", 2),
            Conv(64, 3),
            Pool("max", 2),
            Flatten(),
            Dense(128),
            Dense(10, activation=None),
        ),
        defaults=TrainDefaults(optimizer="adam", learning_rate=0.001, batch_size=64, epochs=5),
    ),
    "cnn3": ModelSpec(
        name="cnn3",
        description="CNN3 at 224x224x3: conv blocks 32/64/128 (3x3, no padding, ReLU, maxpool 2),"
        " dense 64-2; horizontal flip and rotation +-30 degrees",
        input_shape=(3, 224, 224),
        layers=(
            Conv(32, 3),
            Pool("max", 2),
            Conv(64, 3),
            Pool("max", 2),
            Conv(128, 3),
            Pool("max", 2),
            Flatten(),
            Dense(64),
            Dense(2, activation=None),
        ),
        defaults=TrainDefaults(
            optimizer="adam", learning_rate=0.001, batch_size=32, epochs=6, dataset="synthetic"
        ),
        augment=Augment(horizontal_flip=True, rotation_degrees=30.0),
    ),
    "dqn_cartpole": ModelSpec(
        name="dqn_cartpole",
        description="DQN on CartPole-v1: Q-network 4-256-256-2, ReLU, Huber TD loss",
        input_shape=(4,),  # cart position and velocity, pole angle and angular velocity
        layers=(Dense(256), Dense(256), Dense(2, activation=None)),
        defaults=TrainDefaults(
            optimizer="adam", learning_rate=0.0005, batch_size=64, epochs=1, dataset="CartPole-v1"
        ),
        reinforcement=DQN(),
    ),
    **{name: architecture(name) for name in ARCHITECTURES},
}


def get_model_spec(
    name: str,
    width: float | None = None,
    image_size: int | None = None,
    hidden_units: Sequence[int] = (),
) -> ModelSpec:
    """A declared model; the ImageNet architectures also take a width and an input size, and
    any model other hidden dense widths (`hidden_units`)."""
    if name in ARCHITECTURES:
        model = architecture(name, 1.0 if width is None else width, image_size or 224)
        return model.with_hidden_units(hidden_units)
    if name in FINE_TUNING:
        if width is not None and not 0 < width <= 1:
            raise InvalidArgument(f"width must be in (0, 1], got {width:g}")
        if image_size is not None and not 32 <= image_size <= 1024:
            raise InvalidArgument(f"image size must be in [32, 1024], got {image_size}")
        return vgg16_finetune(width or 1.0, image_size or 224).with_hidden_units(hidden_units)
    if name in ID_MODELS:
        raise InvalidArgument(
            f"model {name} takes integer ids, not images: its declaration is id_model({name!r})"
        )
    if name not in MODELS:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if width is not None or image_size is not None:
        raise InvalidArgument(
            f"model {name} has no width or image size knobs (only {', '.join(ARCHITECTURES)})"
        )
    return MODELS[name].with_hidden_units(hidden_units)
