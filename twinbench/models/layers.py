"""The layer vocabulary of a declaration, and every shape rule: output shapes, weight shapes and
trainable sizes, computed once for both builders, the shared initial weights and the parity check.

A `Residual` holds two sequences of layers (a body and a shortcut) whose outputs are added, so
ResNet and MobileNetV2 blocks are data too.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        return sequence_shape(layer.body, shape)
    return shape  # BatchNorm, Dropout


def sequence_shape(layers: tuple[Layer, ...], shape: Shape) -> Shape:
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
