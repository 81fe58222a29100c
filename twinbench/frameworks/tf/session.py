"""Keras sessions: what every job's session does alike (TFSessionBase), and the image models'
session built from a declared model spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.pretrained import pretrained_base
from twinbench.errors import InvalidArgument
from twinbench.frameworks.tf.device import device_name, pick_device
from twinbench.frameworks.tf.models import (
    build_model,
    keras_base,
    set_base,
    set_weights,
    trainable_count,
    weighted_layers,
)
from twinbench.jobs.precision import GROWTH_STEPS, INITIAL_LOSS_SCALE, compute_dtype, recorded
from twinbench.jobs.precision import describe as describe_precision
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_INIT, Weights, shared_initial_weights
from twinbench.models.spec import Augment, ModelSpec
from twinbench.models.tasks import Task, task_for

PREDICT_BATCH = 1024
ONNX_OPSET = 17

OWN_INIT = "Keras's own: Glorot uniform, zero biases"
# Every input of a model is one of these V2 datatypes (twinbench.serving.repository.InputSpec).
_DTYPES = {"FP32": tf.float32, "INT64": tf.int64}


def make_optimizer(
    opt: tpb.Optimizer, clip_norm: float | None = None
) -> keras.optimizers.Optimizer:
    """The job's optimizer with every constant set from the spec, none left to Keras's
    defaults (docs/fairness.md); one place for every kind of session. `clip_norm`: gradients
    clipped to this global norm over all of them, as torch's clip_grad_norm_ does."""
    if opt.name == "adam":
        return keras.optimizers.Adam(
            opt.learning_rate, epsilon=opt.epsilon, global_clipnorm=clip_norm
        )
    return keras.optimizers.SGD(opt.learning_rate, momentum=opt.momentum, global_clipnorm=clip_norm)


def optimizer_fairness(opt: tpb.Optimizer) -> str:
    if opt.name == "adam":
        return f"Adam, epsilon {opt.epsilon:g} added before the bias correction"
    return f"SGD, momentum {opt.momentum:g}: v = mu v - lr g, w += v"


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


class TFSessionBase:
    """One job's model and optimizer on its device: what the image, id-input and Q-network
    sessions share. A subclass builds the model (`new_model`) and trains it; predict and exports
    take the inputs of the declaration's task (twinbench.models.tasks)."""

    # The fairness record's "init", for a shared start and for Keras's own initialisation.
    shared_init = SHARED_INIT
    own_init = OWN_INIT

    def __init__(
        self,
        spec: tpb.JobSpec,
        declared: ModelSpec | NeuMF | GNMT,
        clip_norm: float | None = None,
    ) -> None:
        self.spec = spec
        self.task: Task = task_for(declared)
        self.device = pick_device(spec.device)
        self.device_name = device_name(self.device)
        # Mixed precision (twinbench.jobs.precision) for the sessions that offer it; the job's
        # request refuses it for the others, which run fp32.
        dtype = compute_dtype(spec.precision, on_gpu="GPU" in self.device)
        self.compute_dtype, self.precision = dtype, recorded(dtype)
        keras.utils.set_random_seed(spec.seed)  # Keras's own initial weights draw from it
        with tf.device(self.device):
            self.model = self.new_model()
        # What predict and exports run: a float32 twin of a mixed-precision model (TFSession).
        self.fp32_model = self.model
        self.parameter_count = trainable_count(self.model)
        if "GPU" in self.device:  # the peak of this job, not of the process
            tf.config.experimental.reset_memory_stats(self.device.split("device:")[-1])
        self.optimizer = make_optimizer(spec.optimizer, clip_norm)
        # Fixed signatures: one trace for every batch size.
        self._forward = tf.function(
            lambda *xs: self.fp32_model(xs[0] if len(xs) == 1 else list(xs), training=False),
            input_signature=self.signature(),
            jit_compile=False,
        )

    def new_model(self) -> keras.Model:
        """The job's model with its initial weights; called on the device, once seeded."""
        raise NotImplementedError

    def signature(self) -> list[tf.TensorSpec]:
        """The model's inputs, batch first, in the framework's layout."""
        return [tf.TensorSpec([None, *i.shape], _DTYPES[i.datatype]) for i in self.task.inputs]

    def fairness(self) -> dict[str, str]:
        """What every session sets alike; a subclass adds its own entries."""
        return {
            "init": self.shared_init if self.spec.init == "shared" else self.own_init,
            "optimizer": optimizer_fairness(self.spec.optimizer),
            "tf32": "off",
            "compilation": "tf.function with fixed signatures, XLA on (jit_compile=True), cold"
            " job-private cache, compiled in the warm-up steps"
            if self.spec.compiled
            else "tf.function with fixed signatures, XLA off (jit_compile=False)",
            "gpu memory": "memory growth on",
        }

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # ids and state vectors need no layout change

    def _sync_fp32_model(self) -> None:
        if self.fp32_model is not self.model:
            self.fp32_model.set_weights(self.model.get_weights())

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._sync_fp32_model()
        with tf.device(self.device):
            out = [
                self._forward(*self.task.split(x[start : start + PREDICT_BATCH])).numpy()
                for start in range(0, len(x), PREDICT_BATCH)
            ]
        return np.concatenate(out)

    def serving_module(self) -> Any:
        """A tf.Module whose `serve` is the exported signature: one float32 input, NCHW for
        images, as every twinbench export takes it."""
        return _Serving(self.fp32_model, self.task.inputs[0].shape)

    def export(self, fmt: str, path: Path) -> None:
        self._sync_fp32_model()
        module = self.serving_module()
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
        tmp.replace(path)  # whole or not at all: a job killed mid-write resumes from the last

    def load_checkpoint(self, path: Path) -> None:
        with np.load(path) as arrays:
            weights = [arrays[f"w{i}"] for i in range(len(self.model.get_weights()))]
            self.model.set_weights(weights)
            # The optimizer creates its slots on first use: create them now, then fill them.
            self.optimizer.build(self.model.trainable_variables)
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(arrays[f"o{i}"])


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


class TFSession(TFSessionBase):
    """A job of a declared model spec (twinbench.models): images in, class logits out; also
    fine-tuning (a frozen pretrained base) and mixed precision."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        self.model_spec = model_spec
        self.input_shape = model_spec.input_shape
        super().__init__(spec, model_spec)
        dtype = self.compute_dtype
        if dtype:
            # The trained model computes in the 16-bit type; evaluation and exports run a float32
            # twin holding the same weights, as PyTorch evaluates and exports outside autocast.
            with tf.device(self.device):
                self.fp32_model = build_model(model_spec)
        if dtype == "float16":
            self.optimizer = keras.optimizers.LossScaleOptimizer(
                self.optimizer, initial_scale=INITIAL_LOSS_SCALE, dynamic_growth_steps=GROWTH_STEPS
            )
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.augment = build_augment(model_spec.augment, spec.seed)
        # XLA only in the compiled mode, the counterpart of torch.compile; off by default, as
        # PyTorch is eager by default.
        self._train_step = tf.function(
            self._step,
            input_signature=[*self.signature(), tf.TensorSpec([None], tf.int64)],
            jit_compile=bool(spec.compiled),
        )

    def new_model(self) -> keras.Model:
        spec, model_spec, dtype = self.spec, self.model_spec, self.compute_dtype
        model = build_model(model_spec, f"mixed_{dtype}" if dtype else None)
        if spec.init == "shared":
            set_weights(model, model_spec, shared_initial_weights(model_spec, spec.seed))
        if model_spec.pretrained:  # fine-tuning: the base from the weights file, frozen
            set_base(model, model_spec, pretrained_base(spec, model_spec))
        return model

    def signature(self) -> list[tf.TensorSpec]:
        c, h, w = self.input_shape
        return [tf.TensorSpec([None, h, w, c], tf.float32)]  # Keras convolutions take NHWC

    def fairness(self) -> dict[str, str]:
        augment = self.model_spec.augment
        return {
            **super().fairness(),
            "padding": "'same' (symmetric for stride 1 and odd kernels)",
            "layout": "NHWC (Keras's)",
            "precision": describe_precision(self.compute_dtype),
            "augmentation": "none"
            if not augment
            else f"RandomFlip('horizontal'): {augment.horizontal_flip}; RandomRotation"
            f"({augment.rotation_degrees:g}/360), nearest, constant fill 0",
        }

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

    def base_max_change(self, base: Weights) -> float:
        """The largest |now - pretrained| of a fine-tuning job's frozen weights."""
        layers = weighted_layers(self.model, self.model_spec)
        return max(
            float(np.max(np.abs(now - then)))
            for layer, arrays in zip(layers, keras_base(self.model_spec, base), strict=False)
            for now, then in zip(layer.get_weights(), arrays, strict=True)
        )
