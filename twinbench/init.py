"""Initial weights drawn once, framework-free, so that both frameworks start from the same point.

The weights are in PyTorch's layout (conv: out x in x kh x kw; dense: out x in, with the input of a
dense layer that follows a flatten in C, H, W order). The TF trainer converts them to Keras's
layout. The scheme is Glorot uniform with zero biases, Keras's default; PyTorch's own default
(Kaiming uniform with a = sqrt(5), uniform biases) is what `init="framework"` gives in torch.
"""

from __future__ import annotations

import numpy as np

from twinbench.specs import Conv, Dense, ModelSpec

INIT_MODES = ("shared", "framework")
SHARED_INIT = "shared: Glorot uniform, zero biases, drawn from the seed in shared code"

Weights = list[tuple[np.ndarray, np.ndarray]]  # (kernel, bias) per conv or dense layer, in order


def shared_initial_weights(spec: ModelSpec, seed: int) -> Weights:
    rng = np.random.default_rng([seed, 0x1217])
    weights: Weights = []
    shape: tuple[int, ...] = spec.input_shape
    for layer, after in zip(spec.layers, spec.shapes(), strict=True):
        if isinstance(layer, Conv):
            receptive = layer.kernel * layer.kernel
            kernel_shape = (layer.filters, shape[0], layer.kernel, layer.kernel)
            fan_in, fan_out = shape[0] * receptive, layer.filters * receptive
        elif isinstance(layer, Dense):
            kernel_shape = (layer.units, shape[0])
            fan_in, fan_out = shape[0], layer.units
        else:
            shape = after
            continue
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=kernel_shape).astype(np.float32)
        weights.append((kernel, np.zeros(kernel_shape[0], dtype=np.float32)))
        shape = after
    return weights


def keras_layout(spec: ModelSpec, weights: Weights) -> list[np.ndarray]:
    """The same weights as Keras's get_weights() orders and shapes them (NHWC, kernels in x out)."""
    out: list[np.ndarray] = []
    shapes = [spec.input_shape, *spec.shapes()]
    flattened_from: tuple[int, ...] | None = None
    pairs = iter(weights)
    for i, layer in enumerate(spec.layers):
        if not isinstance(layer, (Conv, Dense)):
            if len(shapes[i]) == 3 and len(shapes[i + 1]) == 1:
                flattened_from = shapes[i]  # a flatten of C x H x W
            continue
        kernel, bias = next(pairs)
        if isinstance(layer, Conv):
            out.append(kernel.transpose(2, 3, 1, 0))
        else:
            if flattened_from is not None:
                # PyTorch flattens C, H, W; Keras flattens H, W, C: reorder the input columns.
                c, h, w = flattened_from
                kernel = kernel.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(len(kernel), -1)
                flattened_from = None
            out.append(kernel.T)
        out.append(bias)
    return [np.ascontiguousarray(a) for a in out]
