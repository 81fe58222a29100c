"""The ImageNet architectures of the PyTorch paper's throughput table (AlexNet, VGG, ResNet-50,
MobileNetV2) at any width and input size, and the VGG16 fine-tuning model built on VGG16's base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twinbench.errors import InvalidArgument
from twinbench.models.layers import (
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    Pool,
    Residual,
)
from twinbench.models.spec import Augment, ModelSpec, Pretrained, TrainDefaults

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
