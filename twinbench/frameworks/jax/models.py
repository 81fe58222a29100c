"""Flax NNX models built from the declarations, and weights loaded from twinbench's canonical
layout (PyTorch's) through the parity check's Keras mapping, which is Flax's layout too: NHWC
activations, HWIO convolution kernels, dense kernels in x out, the first dense after a flatten
reading H, W, C."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import (
    Weights,
    keras_id_arrays,
    keras_layout,
    shared_initial_weights,
)
from twinbench.models.layers import (
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Dropout,
    Layer,
    Pool,
    Residual,
    conv_padding,
    output_shape,
)
from twinbench.models.spec import ModelSpec

_ACTIVATIONS = {None: lambda x: x, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


class Frozen(nnx.Variable):
    """A pretrained base's weight: not an nnx.Param, so no gradient or optimizer ever sees it."""


class LevelledBatchNorm(nnx.BatchNorm):
    """Flax's batch normalisation with PyTorch's running-variance estimator (as the Keras side's
    LevelledBatchNorm): both normalise a batch by its biased variance, but PyTorch folds the
    unbiased one (n - 1) into the running variance. After Flax's update,
    var = k * new - (k - 1) * m * old with k = n / (n - 1) and m Flax's momentum (the old
    value's weight)."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, **kw: Any):
        if use_running_average:
            # Flax's own expression, written out: jax2onnx's patched BatchNorm mistakes NHWC
            # for NCHW inside residual blocks, while these plain operations export as they are.
            # Scale and bias are always built (use_scale and use_bias are left on).
            assert self.scale is not None and self.bias is not None
            inverse = jax.lax.rsqrt(self.var[...] + self.epsilon)
            return (x - self.mean[...]) * inverse * self.scale[...] + self.bias[...]
        before = self.var[...]
        out = super().__call__(x, use_running_average=False, **kw)
        n = x.size / x.shape[-1]
        k = n / (n - 1.0)
        self.var[...] = k * self.var[...] - (k - 1.0) * self.momentum * before
        return out


class Step(nnx.Module):
    """One declared layer: its Flax module (None for the weightless ones) and what follows it."""

    def __init__(self, layer: Layer, shape: tuple[int, ...], index: int, rngs: nnx.Rngs) -> None:
        self.kind = type(layer).__name__
        self.activation = getattr(layer, "activation", None)
        self.index = index  # a dropout's own key: fold_in(step key, index)
        module: Any = None
        body: Block | None = None
        shortcut: Block | None = None
        self.pad = 0
        if isinstance(layer, Conv):
            p = conv_padding(layer)
            module = nnx.Conv(
                shape[0], layer.filters, (layer.kernel, layer.kernel), layer.stride,
                padding=[(p, p), (p, p)], use_bias=layer.bias, rngs=rngs,
            )  # fmt: skip
        elif isinstance(layer, DepthwiseConv):
            c, p = shape[0], layer.padding
            module = nnx.Conv(
                c, c, (layer.kernel, layer.kernel), layer.stride, padding=[(p, p), (p, p)],
                feature_group_count=c, use_bias=layer.bias, rngs=rngs,
            )  # fmt: skip
        elif isinstance(layer, BatchNorm):
            module = LevelledBatchNorm(
                shape[0],
                momentum=1.0 - layer.momentum,  # Flax weighs the old value, PyTorch the new one
                epsilon=layer.epsilon,
                use_fast_variance=False,  # E[(x - mean)^2], as PyTorch computes it
                rngs=rngs,
            )
        elif isinstance(layer, Dense):
            module = nnx.Linear(shape[0], layer.units, rngs=rngs)
        elif isinstance(layer, Pool):
            self.pool = (layer.kind, layer.size, layer.stride or layer.size)
            self.pad = layer.padding  # zeros, as Keras pads: the spec allows it after a ReLU only
        elif isinstance(layer, Dropout):
            self.rate = layer.rate
        elif isinstance(layer, Residual):
            body = Block(layer.body, shape, rngs, index * 1000)
            shortcut = Block(layer.shortcut, shape, rngs, index * 1000 + 500)
        # Data, not static attributes, even where None: the weights of nnx.split live in them.
        self.module = nnx.data(module)
        self.body = nnx.data(body)
        self.shortcut = nnx.data(shortcut)

    def __call__(self, x: jax.Array, train: bool, key: jax.Array | None) -> jax.Array:
        kind = self.kind
        if kind in ("Conv", "DepthwiseConv", "Dense"):
            x = self.module(x)
        elif kind == "BatchNorm":
            x = self.module(x, use_running_average=not train)
        elif kind == "Pool":
            pool, size, stride = self.pool
            if self.pad:
                p = self.pad
                x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            fn = nnx.avg_pool if pool == "avg" else nnx.max_pool
            x = fn(x, window_shape=(size, size), strides=(stride, stride), padding="VALID")
        elif kind == "GlobalAvgPool":
            x = x.mean(axis=(1, 2))
        elif kind == "Flatten":
            x = x.reshape(x.shape[0], -1)  # H, W, C order: the next dense's rows are permuted
        elif kind == "Dropout":
            if train and self.rate > 0:
                assert key is not None, "a training step of a model with dropout needs a key"
                keep = jax.random.bernoulli(
                    jax.random.fold_in(key, self.index), 1 - self.rate, x.shape
                )
                x = jnp.where(keep, x / (1.0 - self.rate), 0.0)
        elif kind == "Residual":
            assert self.body is not None and self.shortcut is not None
            x = self.body(x, train, key) + self.shortcut(x, train, key)
        return _ACTIVATIONS[self.activation](x)


class Block(nnx.Module):
    """A sequence of declared layers (a model, or a residual block's body or shortcut)."""

    def __init__(
        self, layers: tuple[Layer, ...], shape: tuple[int, ...], rngs: nnx.Rngs, base: int = 0
    ) -> None:
        steps = []
        for i, layer in enumerate(layers):
            steps.append(Step(layer, shape, base + i + 1, rngs))
            shape = output_shape(layer, shape)
        self.steps = nnx.List(steps)

    def __call__(self, x: jax.Array, train: bool = False, key: jax.Array | None = None):
        for step in self.steps:
            x = step(x, train, key)
        return x

    def weighted(self) -> list[Any]:
        """The Flax modules of the weighted layers, in declaration order (body, then shortcut)."""
        out: list[Any] = []
        for step in self.steps:
            if step.module is not None:
                out.append(step.module)
            elif step.body is not None and step.shortcut is not None:
                out += step.body.weighted() + step.shortcut.weighted()
        return out


def build_model(spec: ModelSpec, seed: int = 0) -> Block:
    """The declared model with Flax's own initial weights drawn from `seed`; it takes NHWC images
    (or vectors) and returns logits."""
    return Block(spec.layers, spec.input_shape, nnx.Rngs(seed))


def _set(variable: Any, array: np.ndarray) -> None:
    if tuple(variable[...].shape) != tuple(array.shape):
        raise ValueError(f"a weight of shape {array.shape} for one of {variable[...].shape}")
    variable[...] = jnp.asarray(array)


def _load_layer(module: Any, arrays: list[np.ndarray]) -> None:
    if isinstance(module, nnx.BatchNorm):
        for variable, array in zip(
            (module.scale, module.bias, module.mean, module.var), arrays, strict=True
        ):
            _set(variable, array)
        return
    kernel, *bias = arrays
    if isinstance(module, nnx.Conv) and module.feature_group_count > 1:
        kernel = kernel.transpose(0, 1, 3, 2)  # Keras's kh x kw x C x 1 is Flax's kh x kw x 1 x C
    _set(module.kernel, kernel)
    if bias:
        _set(module.bias, bias[0])


def flax_layout(spec: ModelSpec, weights: Weights) -> list[list[np.ndarray]]:
    """Weights in twinbench's layout (PyTorch's) as each Flax layer holds them."""
    return keras_layout(spec, weights)


def load_weights(model: Block, spec: ModelSpec, weights: Weights) -> None:
    for module, arrays in zip(model.weighted(), flax_layout(spec, weights), strict=True):
        _load_layer(module, arrays)


def flax_base(spec: ModelSpec, base: Weights) -> list[list[np.ndarray]]:
    """A pretrained base's weights, one list per Flax layer."""
    full = base + shared_initial_weights(spec, 0)[len(base) :]  # the layout maps whole models
    return flax_layout(spec, full)[: len(base)]


def load_base(model: Block, spec: ModelSpec, base: Weights, freeze: bool = False) -> None:
    """The first len(base) weighted layers from a pretrained base; frozen: their weights become
    Frozen variables, outside every optimizer's reach."""
    for module, arrays in zip(model.weighted(), flax_base(spec, base), strict=False):
        _load_layer(module, arrays)
        if freeze:
            for name in ("kernel", "bias", "scale"):
                variable = getattr(module, name, None)
                if isinstance(variable, nnx.Param):
                    setattr(module, name, Frozen(variable[...]))


def trainable_count(model: nnx.Module) -> int:
    """Trainable parameters: nnx.Param only (batch statistics and frozen weights are not)."""
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- id-input models ---


class LSTM(nnx.Module):
    """One LSTM layer, Keras's weights and PyTorch's equations: kernel in x 4h, recurrent kernel
    h x 4h and one bias (PyTorch's two summed), gates i, f, g, o, a (c, h) carry from zeros. The
    input projection of every step is one matmul before the scan, as cuDNN does; nnx.LSTMCell
    would keep one kernel per gate and project step by step."""

    def __init__(self, inputs: int, hidden: int, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.glorot_uniform()
        self.kernel = nnx.Param(init(rngs.params(), (inputs, 4 * hidden)))
        self.recurrent_kernel = nnx.Param(init(rngs.params(), (hidden, 4 * hidden)))
        self.bias = nnx.Param(jnp.zeros(4 * hidden))
        self.hidden = hidden

    def __call__(self, x: jax.Array) -> jax.Array:  # batch x time x features
        projected = (x @ self.kernel[...] + self.bias[...]).swapaxes(0, 1)
        recurrent = self.recurrent_kernel[...]

        def step(carry, z):
            c, h = carry
            i, f, g, o = jnp.split(z + h @ recurrent, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), projected)
        return hs.swapaxes(0, 1)


class FlaxNeuMF(nnx.Module):
    def __init__(self, m: NeuMF, rngs: nnx.Rngs) -> None:
        # Attribute order is the canonical weight order (PyTorch's registration order).
        self.gmf_user = nnx.Embed(m.users, m.factors, rngs=rngs)
        self.gmf_item = nnx.Embed(m.items, m.factors, rngs=rngs)
        self.mlp_user = nnx.Embed(m.users, m.mlp[0] // 2, rngs=rngs)
        self.mlp_item = nnx.Embed(m.items, m.mlp[0] // 2, rngs=rngs)
        self.mlp = nnx.List(nnx.Linear(a, b, rngs=rngs) for a, b in zip(m.mlp, m.mlp[1:]))  # noqa: B905
        self.out = nnx.Linear(m.factors + m.mlp[-1], 1, rngs=rngs)

    def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        x = jnp.concatenate([self.mlp_user(users), self.mlp_item(items)], 1)
        for dense in self.mlp:
            x = jax.nn.relu(dense(x))
        return self.out(jnp.concatenate([gmf, x], 1))  # one logit per (user, item)

    def weighted(self) -> list[Any]:
        return [self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item, *self.mlp, self.out]


def _lstm_stack(x: jax.Array, layers: nnx.List) -> jax.Array:
    for i, lstm in enumerate(layers):
        y = lstm(x)
        x = y + x if i >= 2 else y  # GNMT's residual connections, from the third layer on
    return x


class FlaxGNMT(nnx.Module):
    def __init__(self, m: GNMT, rngs: nnx.Rngs) -> None:
        h = m.hidden
        self.source_embedding = nnx.Embed(m.vocab, h, rngs=rngs)
        self.encoder = nnx.List(LSTM(h, h, rngs) for _ in range(m.layers))
        self.target_embedding = nnx.Embed(m.vocab, h, rngs=rngs)
        self.decoder = nnx.List(LSTM(h, h, rngs) for _ in range(m.layers))
        self.attentional = nnx.Linear(2 * h, h, rngs=rngs)
        self.classifier = nnx.Linear(h, m.vocab, rngs=rngs)

    def __call__(self, source: jax.Array, target: jax.Array) -> jax.Array:
        memory = _lstm_stack(self.source_embedding(source), self.encoder)
        x = _lstm_stack(self.target_embedding(target), self.decoder)
        weights = jax.nn.softmax(x @ memory.swapaxes(1, 2), axis=-1)  # dot-product attention
        h = jnp.tanh(self.attentional(jnp.concatenate([x, weights @ memory], -1)))
        return self.classifier(h)  # batch x target length x vocabulary

    def weighted(self) -> list[Any]:
        return [
            self.source_embedding, *self.encoder, self.target_embedding, *self.decoder,
            self.attentional, self.classifier,
        ]  # fmt: skip


def build_id_model(m: NeuMF | GNMT, seed: int = 0) -> FlaxNeuMF | FlaxGNMT:
    rngs = nnx.Rngs(seed)
    return FlaxNeuMF(m, rngs) if isinstance(m, NeuMF) else FlaxGNMT(m, rngs)


def load_id_weights(model: FlaxNeuMF | FlaxGNMT, weights: Weights) -> None:
    """Loads weights in PyTorch's layout and registration order (twinbench's canonical one)."""
    for module, arrays in zip(model.weighted(), weights, strict=True):
        converted = keras_id_arrays(arrays)
        if isinstance(module, nnx.Embed):
            _set(module.embedding, converted[0])
        elif isinstance(module, nnx.Linear):
            _set(module.kernel, converted[0])
            _set(module.bias, converted[1])
        else:
            for name, array in zip(("kernel", "recurrent_kernel", "bias"), converted, strict=True):
                _set(getattr(module, name), array)
