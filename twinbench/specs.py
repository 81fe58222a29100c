"""Each architecture declared once, as data; the trainers build their framework's model from it."""

from __future__ import annotations

from dataclasses import dataclass

from twinbench.errors import InvalidArgument


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    padding: str = (
        "valid"  # "same" is only used with stride 1 and odd kernels: symmetric in both frameworks
    )
    activation: str | None = "relu"


@dataclass(frozen=True)
class Pool:
    kind: str  # "avg" or "max"
    size: int


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dense:
    units: int
    activation: str | None = "relu"  # the last layer has none: models output logits


Layer = Conv | Pool | Flatten | Dense


@dataclass(frozen=True)
class Augment:
    """Per-step training augmentation, the same semantics in both frameworks.

    horizontal_flip: mirror left-right with probability 0.5 (never vertical).
    rotation_degrees: rotate by a uniform angle in [-d, +d] degrees, nearest-neighbour
    interpolation, zeros outside the image (Keras takes this as factor d/360).
    """

    horizontal_flip: bool = False
    rotation_degrees: float = 0.0


@dataclass(frozen=True)
class TrainDefaults:
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    epsilon: float = 1e-8  # PyTorch's Adam default, set in Keras too (its own is 1e-7)
    dataset: str = "mnist-5k"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_shape: tuple[int, int, int]  # C, H, W
    layers: tuple[Layer, ...]
    defaults: TrainDefaults
    augment: Augment | None = None

    @property
    def num_classes(self) -> int:
        return self.layers[-1].units

    def shapes(self) -> list[tuple[int, ...]]:
        """The output shape (C, H, W or features) after each layer."""
        shape: tuple[int, ...] = self.input_shape
        out = []
        for layer in self.layers:
            if isinstance(layer, Conv):
                c, h, w = shape
                if layer.padding == "valid":
                    h, w = h - layer.kernel + 1, w - layer.kernel + 1
                shape = (layer.filters, h, w)
            elif isinstance(layer, Pool):
                c, h, w = shape
                shape = (c, h // layer.size, w // layer.size)
            elif isinstance(layer, Flatten):
                size = 1
                for d in shape:
                    size *= d
                shape = (size,)
            else:
                shape = (layer.units,)
            out.append(shape)
        return out

    def parameter_count(self) -> int:
        count = 0
        shape: tuple[int, ...] = self.input_shape
        for layer, after in zip(self.layers, self.shapes(), strict=True):
            if isinstance(layer, Conv):
                count += layer.filters * (shape[0] * layer.kernel * layer.kernel + 1)
            elif isinstance(layer, Dense):
                count += layer.units * (shape[0] + 1)
            shape = after
        return count


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
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
