"""Each architecture declared once, as data; the trainers build their framework's model from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
class FloatRange:
    low: float
    high: float
    log: bool = False  # sampled evenly in log space: learning rates span orders of magnitude


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    values: tuple[int, ...]


Range = FloatRange | IntRange | Choice

# What a search may set, by name: the JobSpec fields of training, and `units_<i>`, the units of the
# i-th hidden dense layer (1-based), which change the declared model itself.
SEARCHABLE = ("learning_rate", "momentum", "batch_size", "epochs")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_shape: tuple[int, int, int]  # C, H, W
    layers: tuple[Layer, ...]
    defaults: TrainDefaults
    augment: Augment | None = None
    # A hyperparameter search's space (`twinbench sweep`); None: the model declares none.
    search_space: dict[str, Range] | None = field(default=None, hash=False)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].units

    def hidden_units(self) -> tuple[int, ...]:
        """Units of every dense layer but the output, in order."""
        return tuple(layer.units for layer in self.layers[:-1] if isinstance(layer, Dense))

    def with_hidden_units(self, units: Sequence[int]) -> ModelSpec:
        """The same declaration with other hidden dense widths; empty `units` keeps it as is.

        Both frameworks build from the returned declaration, so the parity check's weight
        mapping and the shared init apply to it unchanged."""
        units = tuple(units)
        if not units or units == self.hidden_units():
            return self
        hidden = self.hidden_units()
        if len(units) != len(hidden):
            raise InvalidArgument(
                f"{self.name} has {len(hidden)} hidden dense layers ({'-'.join(map(str, hidden))});"
                f" hidden_units gave {len(units)}"
            )
        if not all(1 <= u <= 65_536 for u in units):
            raise InvalidArgument(f"hidden_units must each be 1..65536, got {list(units)}")
        widths = iter(units)
        layers = tuple(
            replace(layer, units=next(widths))
            if isinstance(layer, Dense) and i < len(self.layers) - 1
            else layer
            for i, layer in enumerate(self.layers)
        )
        return replace(
            self, layers=layers, description=f"{self.description} (hidden units {list(units)})"
        )

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
}


def get_model_spec(name: str, hidden_units: Sequence[int] = ()) -> ModelSpec:
    """The declared model, with other hidden dense widths when `hidden_units` is given."""
    try:
        model = MODELS[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return model.with_hidden_units(hidden_units)
