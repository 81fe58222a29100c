"""Keras sessions: a model spec built with Keras 3, trained, checkpointed and exported."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from twinbench.api import trainer_pb2 as pb
from twinbench.data.pretrained import pretrained_base
from twinbench.errors import InvalidArgument
from twinbench.jobs.precision import GROWTH_STEPS, INITIAL_LOSS_SCALE, compute_dtype, recorded
from twinbench.jobs.precision import describe as describe_precision
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import (
    SHARED_ID_INIT,
    SHARED_INIT,
    Weights,
    keras_id_arrays,
    keras_layout,
    shared_id_weights,
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
from twinbench.models.spec import Augment, ModelSpec
from twinbench.models.tasks import PAD_ID, Task, task_for

PREDICT_BATCH = 1024
ONNX_OPSET = 17

# Both must happen before TensorFlow touches a GPU. Memory growth lets the two trainers share
# one GPU (TF would otherwise take all of it); TF32 is pinned off as in the torch trainer.
for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)
tf.config.experimental.enable_tensor_float_32_execution(False)


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


def _apply(layers: tuple[Layer, ...], x, names: Iterator[str]):
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
    for layer, arrays in zip(weighted_layers(model, spec), _keras_base(spec, base), strict=False):
        layer.set_weights(arrays)
        layer.trainable = False


def _keras_base(spec: ModelSpec, base: Weights) -> list[list[np.ndarray]]:
    full = base + shared_initial_weights(spec, 0)[len(base) :]  # keras_layout maps whole models
    return keras_layout(spec, full)[: len(base)]


def weighted_layers(model: keras.Model, spec: ModelSpec) -> list[keras.layers.Layer]:
    """The Keras layers that hold the spec's weighted layers, in declaration order."""
    return [model.get_layer(name) for name, _ in zip(_weight_names(), spec.weighted())]  # noqa: B905


def trainable_count(model: keras.Model) -> int:
    """Trainable parameters: batch norm's moving statistics are weights, not trainable ones."""
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def build_augment(augment: Augment | None, seed: int) -> keras.Sequential | None:
    """Keras's augmentation layers, set to PyTorch's semantics (see the spec's Augment)."""
    if augment is None:
        return None
    layers = []
    if augment.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(
                augment.rotation_degrees / 360.0,  # Keras takes a fraction of a full turn
                fill_mode="constant",
                interpolation="nearest",
                fill_value=0.0,
                seed=seed,
            )
        )
    return keras.Sequential(layers)


def pick_device(requested: str) -> str:
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "cuda" and not gpus:
        raise InvalidArgument("device 'cuda' was asked for, but this trainer sees no GPU")
    return gpus[0].name if requested in ("auto", "cuda") and gpus else "/CPU:0"


class _Serving(tf.Module):
    """The exported signature: NCHW float32 in, like every twinbench export, logits out."""

    def __init__(self, model: keras.Model, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.images = len(input_shape) == 3
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name="input")],
        )

    def _serve(self, input):  # noqa: A002 - the argument name becomes the signature's input name
        x = tf.transpose(input, [0, 2, 3, 1]) if self.images else input
        return {"logits": self.model(x, training=False)}


def make_optimizer(opt: pb.Optimizer, **clipping) -> keras.optimizers.Optimizer:
    """The job's optimizer with every constant set from the spec, none left to Keras's
    defaults (docs/fairness.md); one place for every kind of session. `clipping`: Keras's
    gradient-clipping arguments (global_clipnorm=...)."""
    if opt.name == "adam":
        return keras.optimizers.Adam(opt.learning_rate, epsilon=opt.epsilon, **clipping)
    return keras.optimizers.SGD(opt.learning_rate, momentum=opt.momentum, **clipping)


def optimizer_fairness(opt: pb.Optimizer) -> str:
    if opt.name == "adam":
        return f"Adam, epsilon {opt.epsilon:g} added before the bias correction"
    return f"SGD, momentum {opt.momentum:g}: v = mu v - lr g, w += v"


class TFSession:
    def __init__(self, spec: pb.JobSpec, model_spec: ModelSpec) -> None:
        self.device = pick_device(spec.device)
        self.input_shape = model_spec.input_shape
        keras.utils.set_random_seed(spec.seed)
        # Mixed precision (twinbench.jobs.precision): the trained model computes in the 16-bit type;
        # evaluation and exports run a float32 twin holding the same weights, as PyTorch
        # evaluates and exports outside autocast.
        dtype = compute_dtype(spec.precision, on_gpu="GPU" in self.device)
        self.compute_dtype, self.precision = dtype, recorded(dtype)
        with tf.device(self.device):
            self.model = build_model(model_spec, f"mixed_{dtype}" if dtype else None)
            if spec.init == "shared":
                set_weights(self.model, model_spec, shared_initial_weights(model_spec, spec.seed))
            if model_spec.pretrained:  # fine-tuning: the base from the weights file, frozen
                set_base(self.model, model_spec, pretrained_base(spec, model_spec))
            self.fp32_model = build_model(model_spec) if dtype else self.model
        self.parameter_count = trainable_count(self.model)
        self.device_name = "cpu" if "CPU" in self.device else _gpu_name()
        if "GPU" in self.device:  # the peak of this job, not of the process
            tf.config.experimental.reset_memory_stats(self.device.split("device:")[-1])
        self.optimizer = make_optimizer(spec.optimizer)
        if dtype == "float16":
            self.optimizer = keras.optimizers.LossScaleOptimizer(
                self.optimizer, initial_scale=INITIAL_LOSS_SCALE, dynamic_growth_steps=GROWTH_STEPS
            )
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.spec, self.model_spec = spec, model_spec
        self.augment = build_augment(model_spec.augment, spec.seed)
        c, h, w = self.input_shape
        image = tf.TensorSpec([None, h, w, c], tf.float32)
        # Fixed signatures: one trace for every batch size. XLA only in the compiled mode, the
        # counterpart of torch.compile; off by default, as PyTorch is eager by default.
        self._train_step = tf.function(
            self._step,
            input_signature=[image, tf.TensorSpec([None], tf.int64)],
            jit_compile=bool(spec.compiled),
        )
        self._forward = tf.function(
            lambda x: self.fp32_model(x, training=False), input_signature=[image], jit_compile=False
        )

    def fairness(self) -> dict[str, str]:
        opt, augment = self.spec.optimizer, self.model_spec.augment
        return {
            "init": SHARED_INIT
            if self.spec.init == "shared"
            else "Keras's own: Glorot uniform, zero biases",
            "optimizer": optimizer_fairness(opt),
            "padding": "'same' (symmetric for stride 1 and odd kernels)",
            "tf32": "off",
            "compilation": "tf.function with fixed signatures, XLA on (jit_compile=True), cold"
            " job-private cache, compiled in the warm-up steps"
            if self.spec.compiled
            else "tf.function with fixed signatures, XLA off (jit_compile=False)",
            "layout": "NHWC (Keras's)",
            "precision": describe_precision(self.compute_dtype),
            "augmentation": "none"
            if not augment
            else f"RandomFlip('horizontal'): {augment.horizontal_flip}; RandomRotation"
            f"({augment.rotation_degrees:g}/360), nearest, constant fill 0",
            "gpu memory": "memory growth on",
        }

    def save_checkpoint(self, path: Path) -> None:
        arrays = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        with np.load(path) as arrays:
            weights = [arrays[f"w{i}"] for i in range(len(self.model.get_weights()))]
            self.model.set_weights(weights)
            # The optimizer creates its slots on first use: create them now, then fill them.
            self.optimizer.build(self.model.trainable_variables)
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(arrays[f"o{i}"])

    def _step(self, x, y):
        if self.augment is not None:
            x = self.augment(x, training=True)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), tf.float32)
            loss = self.loss(y, logits)
            scaled = self.optimizer.scale_loss(loss) if self.compute_dtype == "float16" else loss
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.int32))
        return loss, hits

    def prepare(self, x: np.ndarray) -> np.ndarray:
        # Once per split, outside the timed loop: Keras convolutions take NHWC.
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self.device):
            loss, hits = self._train_step(x, y)
        return loss, hits  # read by the loop at the end of a timed segment

    def _sync_fp32_model(self) -> None:
        if self.fp32_model is not self.model:
            self.fp32_model.set_weights(self.model.get_weights())

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._sync_fp32_model()
        with tf.device(self.device):
            out = [
                self._forward(x[start : start + PREDICT_BATCH]).numpy()
                for start in range(0, len(x), PREDICT_BATCH)
            ]
        return np.concatenate(out)

    def export(self, fmt: str, path: Path) -> None:
        self._sync_fp32_model()
        module = _Serving(self.fp32_model, self.input_shape)
        if fmt == "savedmodel":
            tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        elif fmt == "onnx":
            import tf2onnx

            tf2onnx.convert.from_function(
                module.serve,
                input_signature=module.serve.input_signature,
                opset=ONNX_OPSET,
                output_path=str(path),
            )
        else:
            raise InvalidArgument(f"the tf trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if "GPU" not in self.device:
            return 0
        return int(tf.config.experimental.get_memory_info(self.device.split("device:")[-1])["peak"])

    def base_max_change(self, base: Weights) -> float:
        """The largest |now - pretrained| of a fine-tuning job's frozen weights."""
        layers = weighted_layers(self.model, self.model_spec)
        return max(
            float(np.max(np.abs(now - then)))
            for layer, arrays in zip(layers, _keras_base(self.model_spec, base), strict=False)
            for now, then in zip(layer.get_weights(), arrays, strict=True)
        )


def _gpu_name() -> str:
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("device_name", "GPU")


class SavedModelRuntime:
    """A SavedModel's serving signature. TensorFlow's thread pools belong to the process, so
    `threads` is not applied here (jobs train in processes of their own)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures["serving_default"]
        # The inputs in their declared order: the signature takes them by name (and lists them
        # sorted), the saved `serve` function keeps their order.
        self.input_names = [spec.name for spec in self.loaded.serve.input_signature]

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        arguments = {n: tf.constant(x) for n, x in zip(self.input_names, inputs, strict=True)}
        return self.fn(**arguments)["logits"].numpy()


def _lstm_stack(x, layers: int, hidden: int, names: Iterator[str]):
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


class _IdServing(tf.Module):
    """The exported signature of an id-input model: its task's INT64 inputs, logits out."""

    def __init__(self, model: keras.Model, task: Task) -> None:
        super().__init__()
        self.model = model
        self.serve = tf.function(
            lambda *inputs: {"logits": self.model(list(inputs), training=False)},
            input_signature=[
                tf.TensorSpec([None, *i.shape], tf.int64, name=i.name) for i in task.inputs
            ],
        )


class TFIdSession:
    """A job of an id-input model (NCF, GNMT): the loss and inputs its task says
    (twinbench/models/tasks.py), a tf.function step with fixed signatures, in fp32."""

    def __init__(self, spec: pb.JobSpec, declared: NeuMF | GNMT) -> None:
        if spec.channels_last:
            raise InvalidArgument(f"model {declared.name} takes ids: channels-last is for images")
        self.precision = "fp32"  # refused otherwise (twinbench.jobs.request.resolve_spec)
        self.spec = spec
        self.declared = declared
        self.task: Task = task_for(declared)
        self.device = pick_device(spec.device)
        keras.utils.set_random_seed(spec.seed)
        with tf.device(self.device):
            self.model = build_id_model(declared)
            if spec.init == "shared":
                set_id_weights(self.model, shared_id_weights(declared, spec.seed))
        self.parameter_count = trainable_count(self.model)
        self.device_name = "cpu" if "CPU" in self.device else _gpu_name()
        if "GPU" in self.device:
            tf.config.experimental.reset_memory_stats(self.device.split("device:")[-1])
        self.optimizer = make_optimizer(spec.optimizer)
        if self.task.kind == "ranking":
            # Default reduction "sum_over_batch_size": the mean over the batch, as PyTorch's.
            self.loss = keras.losses.BinaryCrossentropy(from_logits=True)
        else:
            # With ignore_class, "sum_over_batch_size" weighs each unmasked token total/valid:
            # the mean over the non-pad tokens, as PyTorch's ignore_index with reduction "mean".
            self.loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=PAD_ID
            )
        inputs = [tf.TensorSpec([None, *i.shape], tf.int64) for i in self.task.inputs]
        labels = tf.TensorSpec([None, *self.task.output_shape[:-1]], tf.int64)
        self._train_step = tf.function(
            self._step, input_signature=[inputs, labels], jit_compile=bool(spec.compiled)
        )
        self._forward = tf.function(
            lambda xs: self.model(xs, training=False), input_signature=[inputs], jit_compile=False
        )

    def fairness(self) -> dict[str, str]:
        opt = self.spec.optimizer
        return {
            "init": SHARED_ID_INIT
            if self.spec.init == "shared"
            else "Keras's own: embeddings U(-0.05, 0.05), Glorot uniform kernels, orthogonal"
            " recurrent kernels, zero biases but the forget gates' 1",
            "optimizer": optimizer_fairness(opt),
            "embedding gradients": "sparse (tf.IndexedSlices, Keras's default); the optimizer"
            " updates every row as with dense ones",
            "tf32": "off",
            "compilation": "tf.function with fixed signatures, XLA on (jit_compile=True), cold"
            " job-private cache, compiled in the warm-up steps"
            if self.spec.compiled
            else "tf.function with fixed signatures, XLA off (jit_compile=False)",
            "gpu memory": "memory growth on",
        }

    def _step(self, xs, y):
        with tf.GradientTape() as tape:
            logits = self.model(xs, training=True)
            if self.task.kind == "ranking":
                loss = self.loss(tf.cast(y[:, None], logits.dtype), logits)
                hits = tf.equal(logits[:, 0] > 0, tf.equal(y, 1))
            else:
                loss = self.loss(y, logits)
                hits = tf.logical_and(tf.equal(tf.argmax(logits, axis=-1), y), y != PAD_ID)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss, tf.reduce_sum(tf.cast(hits, tf.int32))

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # ids need no layout change

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self.device):
            loss, hits = self._train_step(self.task.split(x), y)
        return loss, hits  # read by the loop at the end of a timed segment

    def predict(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            out = [
                self._forward(self.task.split(x[start : start + PREDICT_BATCH])).numpy()
                for start in range(0, len(x), PREDICT_BATCH)
            ]
        return np.concatenate(out)

    def export(self, fmt: str, path: Path) -> None:
        module = _IdServing(self.model, self.task)
        if fmt == "savedmodel":
            tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        elif fmt == "onnx":
            import tf2onnx

            tf2onnx.convert.from_function(
                module.serve,
                input_signature=module.serve.input_signature,
                opset=ONNX_OPSET,
                output_path=str(path),
            )
        else:
            raise InvalidArgument(f"the tf trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if "GPU" not in self.device:
            return 0
        return int(tf.config.experimental.get_memory_info(self.device.split("device:")[-1])["peak"])

    def save_checkpoint(self, path: Path) -> None:
        arrays = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
        arrays.update({f"o{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        with np.load(path) as arrays:
            self.model.set_weights([arrays[f"w{i}"] for i in range(len(self.model.get_weights()))])
            self.optimizer.build(self.model.trainable_variables)
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(arrays[f"o{i}"])
