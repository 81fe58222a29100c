"""Keras models built from the declarations, and weights loaded from twinbench's canonical layout
(PyTorch's), converted by the parity check's mapping."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

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
    Flatten,
    GlobalAvgPool,
    Layer,
    Pool,
    Residual,
    conv_padding,
)
from twinbench.models.spec import ModelSpec


class LevelledBatchNorm(keras.layers.BatchNormalization):
    """Keras's batch normalisation with PyTorch's running-variance estimator.

    Both normalise a training batch by its biased variance (divided by n, the elements per
    channel). For the moving variance PyTorch folds in the unbiased one (n - 1) and Keras the
    biased one, so after each training step Keras's update is corrected to PyTorch's:
    m * old + (1 - m) * var * n / (n - 1) = k * new - (k - 1) * m * old, with k = n / (n - 1).
    One small per-channel expression per layer and step; the normalisation itself is Keras's.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        # A read, not a reference: the variable itself would show the value after the update.
        before = tf.identity(self.moving_variance.value)
        outputs = super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        n = keras.ops.cast(keras.ops.size(inputs), "float32") / channels
        k = n / (n - 1.0)
        after = self.moving_variance.value
        self.moving_variance.assign(k * after - (k - 1.0) * self.momentum * before)
        return outputs


def _apply(layers: tuple[Layer, ...], x: Any, names: Iterator[str]) -> Any:
    """The layers applied to x; every weighted layer is named from `names` in declaration order,
    which is how weights are matched to layers (see `set_weights`)."""
    for layer in layers:
        if isinstance(layer, Conv):
            padding = conv_padding(layer)
            if layer.padding != "same" and padding:
                x = keras.layers.ZeroPadding2D(padding)(x)
            x = keras.layers.Conv2D(
                layer.filters,
                layer.kernel,
                strides=layer.stride,
                padding="same" if layer.padding == "same" else "valid",
                activation=layer.activation,
                use_bias=layer.bias,
                name=next(names),
            )(x)
        elif isinstance(layer, DepthwiseConv):
            if layer.padding:
                x = keras.layers.ZeroPadding2D(layer.padding)(x)
            x = keras.layers.DepthwiseConv2D(
                layer.kernel,
                strides=layer.stride,
                activation=layer.activation,
                use_bias=layer.bias,
                name=next(names),
            )(x)
        elif isinstance(layer, BatchNorm):
            x = LevelledBatchNorm(
                momentum=1.0 - layer.momentum,  # Keras weighs the old value, PyTorch the new one
                epsilon=layer.epsilon,
                name=next(names),
            )(x)
            if layer.activation:
                x = keras.layers.Activation(layer.activation)(x)
        elif isinstance(layer, Pool):
            if layer.padding:
                x = keras.layers.ZeroPadding2D(layer.padding)(x)
            pool = keras.layers.AveragePooling2D if layer.kind == "avg" else keras.layers.MaxPool2D
            x = pool(layer.size, layer.stride or layer.size)(x)
        elif isinstance(layer, GlobalAvgPool):
            x = keras.layers.GlobalAveragePooling2D()(x)
        elif isinstance(layer, Flatten):
            x = keras.layers.Flatten()(x)
        elif isinstance(layer, Dropout):
            x = keras.layers.Dropout(layer.rate)(x)
        elif isinstance(layer, Dense):
            x = keras.layers.Dense(layer.units, activation=layer.activation, name=next(names))(x)
        elif isinstance(layer, Residual):
            body = _apply(layer.body, x, names)
            shortcut = _apply(layer.shortcut, x, names)
            x = keras.layers.Add()([body, shortcut])
            if layer.activation:
                x = keras.layers.Activation(layer.activation)(x)
    return x


def _weight_names() -> Iterator[str]:
    # Endless: the spec decides how many there are (keras_layout gives one list per layer).
    return (f"weighted_{i}" for i in itertools.count())


def build_model(spec: ModelSpec, dtype_policy: str | None = None) -> keras.Model:
    """The declared model; with `dtype_policy` (e.g. "mixed_bfloat16"), every layer takes it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy or "float32")  # read by layers as they are made
    try:
        if len(spec.input_shape) == 3:
            c, h, w = spec.input_shape
            inputs = keras.Input((h, w, c))
        else:  # a vector (a Q-network's state)
            inputs = keras.Input(spec.input_shape)
        return keras.Model(inputs, _apply(spec.layers, inputs, _weight_names()), name=spec.name)
    finally:
        keras.config.set_dtype_policy(previous)


def set_weights(model: keras.Model, spec: ModelSpec, weights: Weights) -> None:
    """Loads weights in twinbench's canonical layout (PyTorch's) into the Keras model."""
    for name, layer_arrays in zip(_weight_names(), keras_layout(spec, weights)):  # noqa: B905
        model.get_layer(name).set_weights(layer_arrays)


def set_base(model: keras.Model, spec: ModelSpec, base: Weights) -> None:
    """The first len(base) weighted layers from a pretrained base (PyTorch's layout, converted
    by the parity check's mapping), frozen: not trainable, so no optimizer step touches them."""
    for layer, arrays in zip(weighted_layers(model, spec), keras_base(spec, base), strict=False):
        layer.set_weights(arrays)
        layer.trainable = False


def keras_base(spec: ModelSpec, base: Weights) -> list[list[np.ndarray]]:
    """A pretrained base's weights, one list per Keras layer."""
    full = base + shared_initial_weights(spec, 0)[len(base) :]  # keras_layout maps whole models
    return keras_layout(spec, full)[: len(base)]


def weighted_layers(model: keras.Model, spec: ModelSpec) -> list[keras.layers.Layer]:
    """The Keras layers that hold the spec's weighted layers, in declaration order."""
    return [model.get_layer(name) for name, _ in zip(_weight_names(), spec.weighted())]  # noqa: B905


def trainable_count(model: keras.Model) -> int:
    """Trainable parameters: batch norm's moving statistics are weights, not trainable ones."""
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _lstm_stack(x: Any, layers: int, hidden: int, names: Iterator[str]) -> Any:
    for i in range(layers):
        y = keras.layers.LSTM(hidden, return_sequences=True, name=next(names))(x)
        x = keras.layers.Add()([y, x]) if i >= 2 else y  # GNMT's residuals, from the third on
    return x


def build_id_model(m: NeuMF | GNMT) -> keras.Model:
    """The id-input models; weighted layers named in the PyTorch module's registration order."""
    names = _weight_names()
    if isinstance(m, NeuMF):
        users = keras.Input((), dtype="int64", name="user")
        items = keras.Input((), dtype="int64", name="item")
        gmf_user = keras.layers.Embedding(m.users, m.factors, name=next(names))(users)
        gmf_item = keras.layers.Embedding(m.items, m.factors, name=next(names))(items)
        mlp_user = keras.layers.Embedding(m.users, m.mlp[0] // 2, name=next(names))(users)
        mlp_item = keras.layers.Embedding(m.items, m.mlp[0] // 2, name=next(names))(items)
        x = keras.layers.Concatenate()([mlp_user, mlp_item])
        for units in m.mlp[1:]:
            x = keras.layers.Dense(units, activation="relu", name=next(names))(x)
        gmf = keras.layers.Multiply()([gmf_user, gmf_item])
        out = keras.layers.Dense(1, name=next(names))(keras.layers.Concatenate()([gmf, x]))
        return keras.Model([users, items], out, name=m.name)
    source = keras.Input((None,), dtype="int64", name="source")
    target = keras.Input((None,), dtype="int64", name="target")
    h = m.hidden
    memory = keras.layers.Embedding(m.vocab, h, name=next(names))(source)
    memory = _lstm_stack(memory, m.layers, h, names)
    x = keras.layers.Embedding(m.vocab, h, name=next(names))(target)
    x = _lstm_stack(x, m.layers, h, names)
    context = keras.layers.Attention()([x, memory])  # softmax(x memory^T) memory, unscaled
    x = keras.layers.Concatenate()([x, context])
    x = keras.layers.Dense(h, activation="tanh", name=next(names))(x)
    logits = keras.layers.Dense(m.vocab, name=next(names))(x)
    return keras.Model([source, target], logits, name=m.name)


def set_id_weights(model: keras.Model, weights: Weights) -> None:
    """Loads an id-input model's weights in PyTorch's layout (see keras_id_arrays)."""
    for name, arrays in zip(_weight_names(), weights):  # noqa: B905
        model.get_layer(name).set_weights(keras_id_arrays(arrays))
