"""Initial weights drawn once, framework-free, so that both frameworks start from the same point.

The weights are in PyTorch's layout (conv: out x in x kh x kw; depthwise: channels x 1 x kh x kw;
dense: out x in, with the input of a dense layer that follows a flatten in C, H, W order; batch
norm: weight, bias, running mean, running variance), one tuple of arrays per weighted layer in the
spec's declaration order. The TF trainer converts them to Keras's layout. The scheme is Glorot
uniform with zero biases, Keras's default, and batch norm's identity (gamma 1, beta 0, mean 0,
variance 1); PyTorch's own default (Kaiming uniform with a = sqrt(5), uniform biases) is what
`init="framework"` gives in torch.
"""

from __future__ import annotations

import numpy as np

from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.layers import BatchNorm, Conv, Dense, DepthwiseConv, Flatten, weight_shapes
from twinbench.models.spec import ModelSpec

INIT_MODES = ("shared", "framework")
SHARED_INIT = (
    "shared: Glorot uniform, zero biases, batch norm at the identity, drawn from the seed in"
    " shared code"
)

Weights = list[tuple[np.ndarray, ...]]  # the arrays of each weighted layer, in declaration order


def shared_initial_weights(spec: ModelSpec, seed: int) -> Weights:
    rng = np.random.default_rng([seed, 0x1217])
    weights: Weights = []
    for layer, shape in spec.weighted():
        shapes = weight_shapes(layer, shape)
        if isinstance(layer, BatchNorm):
            c = shapes[0]
            one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
            weights.append((one, zero, zero.copy(), one.copy()))
            continue
        kernel_shape = shapes[0]
        receptive = int(np.prod(kernel_shape[2:]))  # 1 for a dense layer
        # A depthwise kernel's "in" is one channel per group (PyTorch's convention for fans).
        fan_in = kernel_shape[1] * receptive
        fan_out = (1 if isinstance(layer, DepthwiseConv) else kernel_shape[0]) * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=kernel_shape).astype(np.float32)
        weights.append((kernel, *(np.zeros(s, np.float32) for s in shapes[1:])))
    return weights


def keras_layout(spec: ModelSpec, weights: Weights) -> list[list[np.ndarray]]:
    """The same weights as each Keras layer's get_weights() orders and shapes them (NHWC,
    kernels in x out), one list per weighted layer in declaration order."""
    out: list[list[np.ndarray]] = []
    flattened_from: tuple[int, ...] | None = None
    arrays = iter(weights)
    for layer, before, _ in spec.walk():
        if isinstance(layer, Flatten) and len(before) == 3:
            flattened_from = before  # a flatten of C x H x W
        if not isinstance(layer, (Conv, DepthwiseConv, Dense, BatchNorm)):
            continue
        kernel, *rest = next(arrays)
        if isinstance(layer, Conv):
            kernel = kernel.transpose(2, 3, 1, 0)
        elif isinstance(layer, DepthwiseConv):
            kernel = kernel.transpose(2, 3, 0, 1)  # kh x kw x channels x multiplier 1
        elif isinstance(layer, Dense):
            if flattened_from is not None:
                # PyTorch flattens C, H, W; Keras flattens H, W, C: reorder the input columns.
                c, h, w = flattened_from
                kernel = kernel.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(len(kernel), -1)
                flattened_from = None
            kernel = kernel.T
        # Batch norm: gamma, beta, moving mean, moving variance, the same order in both.
        out.append([np.ascontiguousarray(a) for a in (kernel, *rest)])
    return out


def keras_id_arrays(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """One layer of an id-input model (NCF, GNMT) from PyTorch's layout to Keras's, told apart
    by how many tensors it has: an Embedding's one table is the same in both; a Linear's
    (weight, bias) is Dense's (kernel = weight.T, bias); an LSTM's (weight_ih, weight_hh,
    bias_ih, bias_hh) is Keras's (kernel, recurrent_kernel, bias), with the gates in the same
    order (i, f, g, o) and PyTorch's two bias vectors summed into Keras's one: they only ever
    enter the gates as their sum."""
    if len(arrays) == 1:
        out = list(arrays)
    elif len(arrays) == 2:
        out = [arrays[0].T, arrays[1]]
    else:
        w_ih, w_hh, b_ih, b_hh = arrays
        out = [w_ih.T, w_hh.T, b_ih + b_hh]
    return [np.ascontiguousarray(a) for a in out]


# Keras's default for an Embedding, taken as the shared one (PyTorch's own draws N(0, 1)).
EMBEDDING_INIT_LIMIT = 0.05
SHARED_ID_INIT = (
    "shared: embeddings U(-0.05, 0.05), dense and LSTM kernels Glorot uniform, zero biases but"
    " the LSTM forget gates' 1 (Keras's unit_forget_bias), drawn from the seed in shared code"
)


def id_weight_shapes(model: NeuMF | GNMT) -> list[tuple[tuple[int, ...], ...]]:
    """The shapes of an id-input model's weights in PyTorch's layout and registration order
    (twinbench/frameworks/torch/models.py id_model_weights): an Embedding's table, a Linear's
    (weight, bias), an LSTM's (weight_ih, weight_hh, bias_ih, bias_hh)."""
    linear = lambda a, b: ((b, a), (b,))  # noqa: E731
    if isinstance(model, NeuMF):
        half = model.mlp[0] // 2
        return [
            ((model.users, model.factors),),
            ((model.items, model.factors),),
            ((model.users, half),),
            ((model.items, half),),
            *(linear(a, b) for a, b in zip(model.mlp, model.mlp[1:])),  # noqa: B905
            linear(model.factors + model.mlp[-1], 1),
        ]
    h = model.hidden
    lstm = ((4 * h, h), (4 * h, h), (4 * h,), (4 * h,))
    stack = [((model.vocab, h),), *([lstm] * model.layers)]
    return [*stack, *stack, linear(2 * h, h), linear(h, model.vocab)]


def shared_id_weights(model: NeuMF | GNMT, seed: int) -> Weights:
    """Initial weights of an id-input model (see SHARED_ID_INIT), in PyTorch's layout."""
    rng = np.random.default_rng([seed, 0x1D])

    def glorot(shape: tuple[int, ...]) -> np.ndarray:
        limit = np.sqrt(6.0 / (shape[0] + shape[1]))  # fans of out x in: the same either way
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)

    weights: Weights = []
    for shapes in id_weight_shapes(model):
        if len(shapes) == 1:
            limit = EMBEDDING_INIT_LIMIT
            weights.append((rng.uniform(-limit, limit, size=shapes[0]).astype(np.float32),))
        elif len(shapes) == 2:
            weights.append((glorot(shapes[0]), np.zeros(shapes[1], np.float32)))
        else:
            # Keras's fans of an LSTM kernel are (inputs, 4 x units); forget gate (the second
            # quarter, gates i, f, g, o) bias 1, in bias_ih: Keras's one bias is their sum.
            w_ih, w_hh, b_ih, b_hh = shapes
            bias = np.zeros(b_ih, np.float32)
            h = b_ih[0] // 4
            bias[h : 2 * h] = 1.0
            weights.append((glorot(w_ih), glorot(w_hh), bias, np.zeros(b_hh, np.float32)))
    return weights
