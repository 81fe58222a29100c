"""Each architecture declared once, as data; the trainers build their framework's model from it.

A model is a sequence of layers; a `Residual` holds two such sequences (a body and a shortcut)
whose outputs are added, so ResNet and MobileNetV2 blocks are data too. Every shape rule, the
trainable parameter count and the order of the weighted layers live here, once: each trainer's
builder, the shared initial weights and the parity check all walk the same declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from twinbench.errors import InvalidArgument

ACTIVATIONS = ("relu", "relu6")  # None: linear (logits, and convolutions followed by batch norm)


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    # "valid", "same" (stride 1 and odd kernels only: symmetric in both frameworks), or an explicit
    # symmetric zero padding in pixels: Keras's own 'same' pads 0 before and 1 after at stride 2,
    # PyTorch pads both sides, so strided convolutions always say how much.
    padding: str | int = "valid"
    activation: str | None = "relu"
    stride: int = 1
    bias: bool = True


@dataclass(frozen=True)
class DepthwiseConv:
    """One k x k filter per input channel (PyTorch: groups = channels; Keras: DepthwiseConv2D)."""

    kernel: int
    stride: int = 1
    padding: int = 0
    activation: str | None = None
    bias: bool = False


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over channels, with PyTorch's conventions as the declared ones.

    momentum is PyTorch's (the weight of the new batch); Keras takes 1 - momentum. Both normalise
    with the biased batch variance; for the running variance PyTorch keeps the unbiased (n - 1)
    estimate, and the Keras builder is levelled to it (see twinbench/frameworks/tf).
    """

    activation: str | None = None
    momentum: float = 0.1
    epsilon: float = 1e-5


@dataclass(frozen=True)
class Pool:
    kind: str  # "avg" or "max"
    size: int
    stride: int | None = None  # None: the size
    # Explicit zero padding. Keras pads with zeros, PyTorch's max pooling with -inf: the same only
    # where inputs are non-negative, so a padded max pool must follow a ReLU (checked below).
    padding: int = 0


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over H and W: C x H x W becomes C."""


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dropout:
    rate: float  # equal rates in both; the masks differ, each framework drawing its own


@dataclass(frozen=True)
class Dense:
    units: int
    activation: str | None = "relu"  # the last layer has none: models output logits


@dataclass(frozen=True)
class Residual:
    """activation(body(x) + shortcut(x)); an empty shortcut is the identity."""

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    activation: str | None = None


Layer = (
    Conv | DepthwiseConv | BatchNorm | Pool | GlobalAvgPool | Flatten | Dropout | Dense | Residual
)
WEIGHTED = (Conv, DepthwiseConv, BatchNorm, Dense)
Shape = tuple[int, ...]


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv_padding(layer: Conv) -> int:
    """A Conv's padding in pixels on each side."""
    if layer.padding == "same":
        return layer.kernel // 2
    return 0 if layer.padding == "valid" else int(layer.padding)


def output_shape(layer: Layer, shape: Shape) -> Shape:
    if isinstance(layer, Conv):
        _, h, w = shape
        p = conv_padding(layer)
        k, s = layer.kernel, layer.stride
        return (layer.filters, _conv_size(h, k, s, p), _conv_size(w, k, s, p))
    if isinstance(layer, DepthwiseConv):
        c, h, w = shape
        k, s, p = layer.kernel, layer.stride, layer.padding
        return (c, _conv_size(h, k, s, p), _conv_size(w, k, s, p))
    if isinstance(layer, Pool):
        c, h, w = shape
        s = layer.stride or layer.size
        return (
            c,
            _conv_size(h, layer.size, s, layer.padding),
            _conv_size(w, layer.size, s, layer.padding),
        )
    if isinstance(layer, GlobalAvgPool):
        return shape[:1]
    if isinstance(layer, Flatten):
        size = 1
        for d in shape:
            size *= d
        return (size,)
    if isinstance(layer, Dense):
        return (layer.units,)
    if isinstance(layer, Residual):
        return _sequence_shape(layer.body, shape)
    return shape  # BatchNorm, Dropout


def _sequence_shape(layers: tuple[Layer, ...], shape: Shape) -> Shape:
    for layer in layers:
        shape = output_shape(layer, shape)
    return shape


def weight_shapes(layer: Layer, shape: Shape) -> list[Shape]:
    """A weighted layer's arrays in PyTorch's order and layout (twinbench's canonical one)."""
    if isinstance(layer, Conv):
        kernel = (layer.filters, shape[0], layer.kernel, layer.kernel)
        return [kernel, (layer.filters,)] if layer.bias else [kernel]
    if isinstance(layer, DepthwiseConv):
        kernel = (shape[0], 1, layer.kernel, layer.kernel)
        return [kernel, (shape[0],)] if layer.bias else [kernel]
    if isinstance(layer, BatchNorm):
        return [shape[:1]] * 4  # weight (gamma), bias (beta), running mean, running variance
    if isinstance(layer, Dense):
        return [(layer.units, shape[0]), (layer.units,)]
    return []


def trainable_size(layer: Layer, shape: Shape) -> int:
    arrays = weight_shapes(layer, shape)
    if isinstance(layer, BatchNorm):
        arrays = arrays[:2]  # the running statistics are buffers in PyTorch, non-trainable in Keras
    total = 0
    for dims in arrays:
        size = 1
        for d in dims:
            size *= d
        total += size
    return total


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


@dataclass(frozen=True)
class DQN:
    """A deep Q-learning job: what the shared loop (twinbench/training/rl.py) does around the Q-network.

    The same in both frameworks by construction: the loop, the replay buffer, the epsilon
    schedule, the environment's seeds and the TD targets are shared code; each framework only
    runs the network (a forward pass, one optimizer step on the Huber loss, the target copy).
    """

    environment: str = "CartPole-v1"
    # The schedule of RL Baselines3 Zoo's tuned DQN for CartPole-v1: 256 steps of acting, then
    # 128 optimizer steps against a target network copied just before them. Its learning rate
    # (0.0023) learned worse here than 0.0005, the model's default (see README).
    env_steps: int = 200_000  # the budget: the job stops there, or once solved
    gamma: float = 0.99
    buffer_size: int = 100_000
    learning_starts: int = 1_000  # random steps that fill the buffer before any update
    train_every: int = 256  # environment steps between bursts of optimizer steps
    gradient_steps: int = 128  # optimizer steps per burst
    epsilon_start: float = 1.0
    epsilon_end: float = 0.04
    epsilon_steps: int = 8_000  # linear decay from start to end over these steps
    target_update_steps: int = 256  # hard copy of the online network into the target network
    double: bool = False  # Double DQN targets (twinbench.training.rl.td_targets); off, as tuned
    grad_clip_norm: float = 10.0  # the global norm gradients are clipped to, in both
    # Solved: the greedy policy's mean reward over `solve_window` evaluation episodes reaches
    # this (CartPole-v1's reward threshold as Gymnasium registers it: 475 over 100 consecutive
    # trials). Evaluated (twinbench.training.rl.evaluate_greedy) once the mean of the last
    # `evaluation_gate` training episodes reaches the threshold, at most once per burst.
    solve_threshold: float = 475.0
    solve_window: int = 100
    evaluation_gate: int = 10
    max_episode_reward: float = 500.0  # CartPole-v1: 1 per step, cut at 500 steps
    actions: tuple[str, ...] = ("push left", "push right")


# What a search may set, by name: the JobSpec fields of training, and `units_<i>`, the units of the
# i-th hidden dense layer (1-based), which change the declared model itself.
SEARCHABLE = ("learning_rate", "momentum", "batch_size", "epochs")


@dataclass(frozen=True)
class Pretrained:
    """A fine-tuning job's base: its first `frozen_layers` weighted layers start from a
    torchvision state_dict file (twinbench/data/pretrained.py) and are never trained."""

    download: str  # what `twinbench data download` calls the file's source
    filename: str
    frozen_layers: int
    prefix: str = "features"  # the base's name in torchvision's state_dict
    # torchvision's preprocessing of ImageNet inputs, applied to the data in shared code
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_shape: tuple[int, ...]  # C, H, W; or (features,) for a vector input
    layers: tuple[Layer, ...]
    defaults: TrainDefaults
    augment: Augment | None = None
    # A reinforcement-learning job (the network is its Q-network); None: supervised.
    reinforcement: DQN | None = None
    # A fine-tuning job (a frozen pretrained base, a new top); None: trained from scratch.
    pretrained: Pretrained | None = None
    # A hyperparameter search's space (`twinbench sweep`); None: the model declares none.
    search_space: dict[str, Range] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for _, _, after in self.walk():
            if min(after) < 1:
                _, h, w = self.input_shape
                raise InvalidArgument(
                    f"model {self.name}: an input of {h}x{w} shrinks to nothing ({after});"
                    " use a larger image size"
                )
        _check_padded_max_pools(self.layers)

    @property
    def num_classes(self) -> int:
        last = self.layers[-1]
        assert isinstance(last, Dense)  # every declaration ends in its output layer
        return last.units

    @property
    def kind(self) -> str:
        """The job's kind: "supervised", "reinforcement" or "fine-tuning"."""
        if self.reinforcement:
            return "reinforcement"
        return "fine-tuning" if self.pretrained else "supervised"

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

    def shapes(self) -> list[Shape]:
        """The output shape (C, H, W or features) after each top-level layer."""
        shape: Shape = self.input_shape
        out = []
        for layer in self.layers:
            shape = output_shape(layer, shape)
            out.append(shape)
        return out

    def walk(self) -> Iterator[tuple[Layer, Shape, Shape]]:
        """Every layer but the Residual containers, with its input and output shapes, in
        declaration order (a block's body before its shortcut): the order of the weights."""
        yield from _walk(self.layers, self.input_shape)

    def weighted(self) -> list[tuple[Layer, Shape]]:
        """The layers with weights and their input shapes, in the order of the weights."""
        return [(layer, shape) for layer, shape, _ in self.walk() if isinstance(layer, WEIGHTED)]

    def parameter_count(self) -> int:
        """Trainable parameters (batch norm's running statistics are not)."""
        return sum(trainable_size(layer, shape) for layer, shape in self.weighted())


def _walk(layers: tuple[Layer, ...], shape: Shape) -> Iterator[tuple[Layer, Shape, Shape]]:
    for layer in layers:
        after = output_shape(layer, shape)
        if isinstance(layer, Residual):
            yield from _walk(layer.body, shape)
            yield from _walk(layer.shortcut, shape)
            shortcut = _sequence_shape(layer.shortcut, shape)
            if shortcut != after:
                raise InvalidArgument(f"a residual block adds {after} to {shortcut}")
        else:
            yield layer, shape, after
        shape = after


def _check_padded_max_pools(layers: tuple[Layer, ...]) -> None:
    previous: Layer | None = None
    for layer in layers:
        if isinstance(layer, Residual):
            _check_padded_max_pools(layer.body)
            _check_padded_max_pools(layer.shortcut)
        if isinstance(layer, Pool) and layer.kind == "max" and layer.padding:
            if getattr(previous, "activation", None) not in ACTIVATIONS:
                raise ValueError("a padded max pool must follow a ReLU (zero padding == -inf)")
        previous = layer


# ImageNet-scale architectures at their published sizes (torchvision's definitions), with two
# knobs so that a CPU can run them small: `width` multiplies every channel and hidden width,
# `image_size` is the input's height and width. At width 1 the counts are torchvision's.

IMAGENET_CLASSES = 1000
IMAGENET_DEFAULTS = TrainDefaults(
    optimizer="sgd", learning_rate=0.01, momentum=0.9, batch_size=32, epochs=1, dataset="synthetic"
)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def alexnet(width: float = 1.0) -> tuple[Layer, ...]:
    c = lambda n: _scaled(n, width)  # noqa: E731
    return (
        Conv(c(64), 11, padding=2, stride=4),
        Pool("max", 3, 2),
        Conv(c(192), 5, padding=2),
        Pool("max", 3, 2),
        Conv(c(384), 3, padding=1),
        Conv(c(256), 3, padding=1),
        Conv(c(256), 3, padding=1),
        Pool("max", 3, 2),
        # torchvision's adaptive pool to 6x6 is the identity at 224x224 and is left out.
        Flatten(),
        Dropout(0.5),
        Dense(c(4096)),
        Dropout(0.5),
        Dense(c(4096)),
        Dense(IMAGENET_CLASSES, activation=None),
    )


def _vgg_base(repeats: tuple[int, ...], width: float) -> tuple[Layer, ...]:
    """VGG's convolutional base (torchvision's `features`): 3x3 convolutions, max pools."""
    layers: list[Layer] = []
    for channels, n in zip((64, 128, 256, 512, 512), repeats, strict=True):
        layers += [Conv(_scaled(channels, width), 3, padding=1)] * n
        layers.append(Pool("max", 2))
    return tuple(layers)


def vgg16_base(width: float = 1.0) -> tuple[Layer, ...]:
    return _vgg_base((2, 2, 3, 3, 3), width)  # configuration D: 13 convolutions


def _vgg_classifier(width: float) -> tuple[Layer, ...]:
    # torchvision's adaptive pool to 7x7 is the identity at 224x224 and is left out.
    return (
        Flatten(),
        Dense(_scaled(4096, width)),
        Dropout(0.5),
        Dense(_scaled(4096, width)),
        Dropout(0.5),
        Dense(IMAGENET_CLASSES, activation=None),
    )


def vgg16(width: float = 1.0) -> tuple[Layer, ...]:
    return (*vgg16_base(width), *_vgg_classifier(width))


def vgg19(width: float = 1.0) -> tuple[Layer, ...]:
    return (*_vgg_base((2, 2, 4, 4, 4), width), *_vgg_classifier(width))


def _bottleneck(channels: int, inputs: int, stride: int) -> Residual:
    """ResNet v1.5's bottleneck (torchvision's): the stride sits in the 3x3 convolution."""
    out = channels * 4
    shortcut: tuple[Layer, ...] = ()
    if stride != 1 or inputs != out:
        shortcut = (Conv(out, 1, stride=stride, activation=None, bias=False), BatchNorm())
    body = (
        Conv(channels, 1, activation=None, bias=False),
        BatchNorm("relu"),
        Conv(channels, 3, padding=1, stride=stride, activation=None, bias=False),
        BatchNorm("relu"),
        Conv(out, 1, activation=None, bias=False),
        BatchNorm(),
    )
    return Residual(body, shortcut, "relu")


def resnet50(width: float = 1.0) -> tuple[Layer, ...]:
    stem = _scaled(64, width)
    layers: list[Layer] = [
        Conv(stem, 7, padding=3, stride=2, activation=None, bias=False),
        BatchNorm("relu"),
        Pool("max", 3, 2, padding=1),
    ]
    inputs = stem
    for stage, (channels, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        channels = _scaled(channels, width)
        for block in range(blocks):
            layers.append(_bottleneck(channels, inputs, 2 if stage and not block else 1))
            inputs = channels * 4
    return (*layers, GlobalAvgPool(), Dense(IMAGENET_CLASSES, activation=None))


def _divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of 8, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(channels: int, kernel: int, stride: int = 1, activation: str | None = "relu6"):
    return (
        Conv(channels, kernel, padding=kernel // 2, stride=stride, activation=None, bias=False),
        BatchNorm(activation),
    )


def mobilenet_v2(width: float = 1.0) -> tuple[Layer, ...]:
    inputs = _divisible(32 * width)
    layers: list[Layer] = list(_conv_bn(inputs, 3, 2))
    # (expansion t, channels c, repeats n, first stride s), the paper's Table 2.
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):  # fmt: skip
        out = _divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = round(inputs * t)
            body = (
                *(_conv_bn(hidden, 1) if t != 1 else ()),
                DepthwiseConv(3, stride, padding=1),
                BatchNorm("relu6"),
                *_conv_bn(out, 1, activation=None),  # the linear bottleneck
            )
            # Blocks that keep the shape add their input back; the others have no shortcut at all.
            layers += [Residual(body)] if stride == 1 and inputs == out else list(body)
            inputs = out
    return (
        *layers,
        *_conv_bn(_divisible(1280 * max(1.0, width)), 1),
        GlobalAvgPool(),
        Dropout(0.2),
        Dense(IMAGENET_CLASSES, activation=None),
    )


@dataclass(frozen=True)
class Architecture:
    build: Callable[[float], tuple[Layer, ...]]  # the layers at a width multiplier
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    "alexnet": Architecture(alexnet, "AlexNet (torchvision's, one GPU): 5 convs, 3 dense, dropout"),
    "vgg16": Architecture(vgg16, "VGG-16 (configuration D): 13 3x3 convs, 3 dense, dropout"),
    "vgg19": Architecture(vgg19, "VGG-19 (configuration E): 16 3x3 convs, 3 dense, dropout"),
    "resnet50": Architecture(
        resnet50, "ResNet-50 v1.5: bottleneck blocks 3-4-6-3, batch norm, stride in the 3x3"
    ),
    "mobilenet_v2": Architecture(
        mobilenet_v2,
        "MobileNetV2: inverted residuals, depthwise 3x3, ReLU6, linear bottlenecks, width 1.0",
    ),
}


def architecture(name: str, width: float = 1.0, image_size: int = 224) -> ModelSpec:
    """An ImageNet architecture at a width multiplier and an input size (224 published)."""
    if not 0 < width <= 4:
        raise InvalidArgument(f"width must be in (0, 4], got {width:g}")
    if not 16 <= image_size <= 1024:
        raise InvalidArgument(f"image size must be in [16, 1024], got {image_size}")
    arch = ARCHITECTURES[name]
    knobs = (
        ""
        if (width, image_size) == (1.0, 224)
        else f" (width {width:g}, {image_size}x{image_size})"
    )
    return ModelSpec(
        name=name,
        description=arch.description + knobs,
        input_shape=(3, image_size, image_size),
        layers=arch.build(width),
        defaults=IMAGENET_DEFAULTS,
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


# Fine-tuning: VGG16's convolutional base pretrained on ImageNet (torchvision's weights, one file
# for both frameworks), frozen; a new top trained on an image folder (cats and dogs: the top of
# the document's model, dense 256 with dropout 0.5 before the classes).
VGG16_WEIGHTS = Pretrained("vgg16-weights", "vgg16-397923af.pth", frozen_layers=13)
FINE_TUNING = ("vgg16_finetune",)


def vgg16_finetune(width: float = 1.0, image_size: int = 224, classes: int = 2) -> ModelSpec:
    knobs = (
        ""
        if (width, image_size) == (1.0, 224)
        else f" (width {width:g}, {image_size}x{image_size})"
    )
    return ModelSpec(
        name="vgg16_finetune",
        description="VGG16's pretrained convolutional base, frozen, and a new top: dense 256,"
        f" dropout 0.5, {classes} classes; horizontal flip{knobs}",
        input_shape=(3, image_size, image_size),
        layers=(
            *vgg16_base(width),
            Flatten(),
            Dense(256),
            Dropout(0.5),
            Dense(classes, activation=None),
        ),
        defaults=TrainDefaults(
            optimizer="adam",
            learning_rate=0.0001,
            batch_size=16,
            epochs=5,
            dataset="imagefolder:cats_and_dogs",
        ),
        augment=Augment(horizontal_flip=True),
        pretrained=VGG16_WEIGHTS,
    )


MODELS["vgg16_finetune"] = vgg16_finetune()


# Models whose inputs are integer ids rather than images: declared once like the others, built by
# both trainers, checked by `twinbench parity` and trained as jobs (twinbench/models/tasks.py says what
# each is asked to do: NCF ranks user-item pairs, GNMT predicts the next target token).


@dataclass(frozen=True)
class NeuMF:
    """Neural matrix factorisation (He et al., 2017): a GMF branch (user and item embeddings
    multiplied elementwise) beside an MLP branch (the two embeddings concatenated, then dense
    ReLU layers), concatenated into one logit: does the user interact with the item."""

    name: str
    users: int
    items: int
    factors: int = 64  # GMF embedding size
    mlp: tuple[int, ...] = (256, 256, 128, 64)  # mlp[0] is both MLP embeddings concatenated

    def parameter_count(self) -> int:
        ids = self.users + self.items
        dense = sum((a + 1) * b for a, b in zip(self.mlp, self.mlp[1:]))  # noqa: B905
        return ids * self.factors + ids * self.mlp[0] // 2 + dense + self.factors + self.mlp[-1] + 1

    @property
    def defaults(self) -> TrainDefaults:
        # The NCF paper's settings (He et al., 2017): Adam, learning rate 0.001, batch 256.
        return TrainDefaults("adam", 0.001, 256, 1, dataset="synthetic")


@dataclass(frozen=True)
class GNMT:
    """A GNMT-style translation model, teacher-forced: token embeddings, a stack of LSTMs as the
    encoder, a stack of LSTMs as the decoder (both with residual connections from the third layer
    on, as GNMT), dot-product attention of the decoder's top layer over the encoder's outputs,
    Luong's attentional layer tanh(W [output, context]), and a dense layer to the vocabulary."""

    name: str
    vocab: int = 32320  # GNMT v2's shared BPE vocabulary (MLPerf's WMT16 en-de)
    hidden: int = 1024
    layers: int = 4  # in the encoder and in the decoder each
    source_length: int = 50
    target_length: int = 50

    def lstm_count(self, biases: int) -> int:
        """One LSTM layer's parameters; PyTorch keeps two bias vectors, Keras one."""
        h = self.hidden
        return 4 * h * (2 * h) + biases * 4 * h

    def parameter_count(self, lstm_biases: int = 2) -> int:
        """PyTorch's count by default; Keras's has one bias vector per LSTM layer fewer."""
        h = self.hidden
        embeddings = 2 * self.vocab * h
        attentional = (2 * h + 1) * h
        classifier = (h + 1) * self.vocab
        return (
            embeddings + 2 * self.layers * self.lstm_count(lstm_biases) + attentional + classifier
        )

    @property
    def defaults(self) -> TrainDefaults:
        # MLPerf's GNMT reference: Adam, learning rate 0.002, batch 128.
        return TrainDefaults("adam", 0.002, 128, 1, dataset="synthetic")


ID_MODELS: dict[str, NeuMF | GNMT] = {
    # MLPerf's NCF on MovieLens-20M: 138,493 users, 26,744 items, factors 64, MLP 256-256-128-64.
    "ncf": NeuMF("ncf", users=138_493, items=26_744),
    "gnmt": GNMT("gnmt"),
}


def id_model(name: str, scale: float = 1.0) -> NeuMF | GNMT:
    """An id-input model, its widths and vocabulary (or user and item counts) times `scale`."""
    if name not in ID_MODELS:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(ID_MODELS)}")
    if not 0 < scale <= 1:
        raise InvalidArgument(f"scale must be in (0, 1], got {scale:g}")
    model = ID_MODELS[name]
    if scale == 1:
        return model
    s = lambda n: max(2, round(n * scale))  # noqa: E731
    if isinstance(model, NeuMF):
        mlp = tuple(2 * s(n // 2) for n in model.mlp)
        return replace(
            model, users=s(model.users), items=s(model.items), factors=s(model.factors), mlp=mlp
        )
    return replace(model, vocab=s(model.vocab), hidden=s(model.hidden))


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
