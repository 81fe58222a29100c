"""JAX sessions: what every job's session does alike (JaxSessionBase: a Flax NNX model split into
its parameters and its other state, Optax, jax.jit-ed steps, exports, checkpoints), and the image
models' session built from a declared model spec."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.pretrained import pretrained_base
from twinbench.errors import InvalidArgument
from twinbench.frameworks.jax.device import device_name, pick_device
from twinbench.frameworks.jax.export import export_onnx, export_stablehlo
from twinbench.frameworks.jax.models import (
    build_model,
    flax_base,
    load_base,
    load_weights,
    trainable_count,
)
from twinbench.jobs.precision import compute_dtype
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_INIT, Weights, shared_initial_weights
from twinbench.models.spec import Augment, ModelSpec
from twinbench.models.tasks import Task, task_for

PREDICT_BATCH = 1024
OWN_INIT = "Flax's own: LeCun normal kernels, zero biases"


def make_optimizer(opt: tpb.Optimizer, clip_norm: float | None = None):
    """The job's Optax optimizer with every constant set from the spec (docs/fairness.md); one
    place for every kind of session. `clip_norm`: gradients clipped to this global norm first."""
    if opt.name == "adam":
        # Optax's Adam is PyTorch's: eps added to sqrt(v_hat), after the bias correction.
        tx = optax.adam(opt.learning_rate, b1=0.9, b2=0.999, eps=opt.epsilon, eps_root=0.0)
    else:
        # optax.sgd's trace is PyTorch's momentum: v = mu v + g, w -= lr v.
        tx = optax.sgd(opt.learning_rate, momentum=opt.momentum or None, nesterov=False)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def optimizer_fairness(opt: tpb.Optimizer) -> str:
    if opt.name == "adam":
        return f"optax.adam, eps {opt.epsilon:g} added after the bias correction (PyTorch's form)"
    return f"optax.sgd, momentum {opt.momentum:g}: v = mu v + g, w -= lr v (PyTorch's form)"


class JaxSessionBase:
    """One job's model and optimizer on its device: what the image, id-input and Q-network
    sessions share. The model lives split: `params` (nnx.Param, trained), `rest` (batch norm's
    statistics, a frozen base) and `graphdef` (the structure); steps are pure functions of them,
    compiled by jax.jit. A subclass builds the model (`new_model`) and its train step."""

    shared_init = SHARED_INIT
    own_init = OWN_INIT
    # pytrees of arrays (nnx.State, Optax's state) and nnx's structure
    graphdef: Any
    params: Any
    rest: Any
    opt_state: Any

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
        if compute_dtype(spec.precision, on_gpu=self.device.platform == "gpu"):
            raise InvalidArgument(
                "the jax trainer trains in fp32 only: mixed precision is not built"
            )
        self.precision = "fp32"
        with jax.default_device(self.device):
            model = self.new_model()
            split: Any = nnx.split(model, nnx.Param, ...)
            self.graphdef, self.params, self.rest = split
            self.parameter_count = trainable_count(model)
            self.optimizer = make_optimizer(spec.optimizer, clip_norm)
            self.opt_state = self.optimizer.init(self.params)
        # Committed to the device, as every step's outputs are: arrays placed otherwise would
        # make the second step compile again.
        self.params, self.rest, self.opt_state = jax.device_put(
            (self.params, self.rest, self.opt_state), self.device
        )
        # Dropout and augmentation draw from keys folded from the job's seed and the step.
        self.key = jax.device_put(jax.random.key(spec.seed), self.device)
        self.steps = 0
        self._forward = jax.jit(self._apply)

    def new_model(self) -> nnx.Module:
        """The job's Flax model with its initial weights; called on the device."""
        raise NotImplementedError

    def model(self) -> nnx.Module:
        """The model as it stands (a view over the current arrays)."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    def _apply(self, params, rest, *xs):
        return nnx.merge(self.graphdef, params, rest)(*xs)

    def fairness(self) -> dict[str, str]:
        """What every session sets alike; a subclass adds its own entries."""
        return {
            "init": self.shared_init if self.spec.init == "shared" else self.own_init,
            "optimizer": optimizer_fairness(self.spec.optimizer),
            "tf32": "off: jax_default_matmul_precision 'highest'",
            # jit is JAX's normal way: both modes compile the step with XLA (docs/training.md).
            "compilation": "jax.jit (XLA) in both modes, cold job-private cache (persistent"
            " cache off), compiled in the warm-up steps; 'compiled' changes nothing",
            "gpu memory": "no preallocation (XLA_PYTHON_CLIENT_PREALLOCATE=false)",
            "step edges": "block_until_ready on the loss at the end of every step",
        }

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # ids and state vectors need no layout change

    def inputs(self, x: np.ndarray) -> list[jax.Array]:
        return [jax.device_put(a, self.device) for a in self.task.split(x)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = [
            np.asarray(
                self._forward(self.params, self.rest, *self.inputs(x[s : s + PREDICT_BATCH]))
            )
            for s in range(0, len(x), PREDICT_BATCH)
        ]
        return np.concatenate(out)

    def serving_function(self) -> Callable[..., jax.Array]:
        """What exports run: (model, *inputs as twinbench serves them) -> logits."""
        return lambda model, *xs: model(*xs)

    def export(self, fmt: str, path: Path) -> None:
        if fmt == "stablehlo":
            export_stablehlo(self.model(), self.serving_function(), self.task, path)
        elif fmt == "onnx":
            export_onnx(self.model(), self.serving_function(), self.task, path)
        else:
            raise InvalidArgument(f"the jax trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if self.device.platform == "cpu":
            return 0
        stats = self.device.memory_stats() or {}
        return int(stats.get("peak_bytes_in_use", 0))

    def _state(self) -> dict[str, Any]:
        """Everything resuming needs, as pytrees of arrays."""
        return {"params": self.params, "rest": self.rest, "opt": self.opt_state,
                "steps": np.int64(self.steps)}  # fmt: skip

    def save_checkpoint(self, path: Path) -> None:
        leaves = jax.tree.leaves(self._state())
        tmp = path.with_suffix(".tmp.npz")
        arrays: dict[str, Any] = {f"a{i}": np.asarray(v) for i, v in enumerate(leaves)}
        np.savez(tmp, **arrays)
        tmp.replace(path)  # whole or not at all: a job killed mid-write resumes from the last

    def load_checkpoint(self, path: Path) -> None:
        leaves, tree = jax.tree.flatten(self._state())
        with np.load(path) as arrays:
            loaded = [arrays[f"a{i}"] for i in range(len(leaves))]
        state = jax.device_put(jax.tree.unflatten(tree, loaded), self.device)
        self.params, self.rest, self.opt_state = state["params"], state["rest"], state["opt"]
        self.steps = int(state["steps"])

    def next_key(self) -> jax.Array:
        self.steps += 1
        return jax.random.fold_in(self.key, self.steps)


def augment_batch(augment: Augment, x: jax.Array, key: jax.Array) -> jax.Array:
    """PyTorch's augmentation semantics on NHWC images: a horizontal flip with probability 0.5,
    a rotation by a uniform angle in +-degrees, nearest neighbour, zeros outside (grid_sample
    with align_corners=False)."""
    n, h, w, _ = x.shape
    flip_key, angle_key = jax.random.split(key)
    if augment.horizontal_flip:
        flip = jax.random.uniform(flip_key, (n,)) < 0.5
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    if augment.rotation_degrees:
        limit = math.radians(augment.rotation_degrees)
        angle = (jax.random.uniform(angle_key, (n,)) * 2 - 1) * limit
        cos, sin = jnp.cos(angle)[:, None, None], jnp.sin(angle)[:, None, None]
        gx = ((2 * jnp.arange(w) + 1) / w - 1)[None, None, :]  # output pixel centres, [-1, 1]
        gy = ((2 * jnp.arange(h) + 1) / h - 1)[None, :, None]
        sx, sy = cos * gx - sin * gy, sin * gx + cos * gy  # where each output pixel reads
        col = jnp.round(((sx + 1) * w - 1) / 2).astype(jnp.int32)
        row = jnp.round(((sy + 1) * h - 1) / 2).astype(jnp.int32)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        flat = x.reshape(n, h * w, -1)
        index = (jnp.clip(row, 0, h - 1) * w + jnp.clip(col, 0, w - 1)).reshape(n, h * w, 1)
        read = jnp.take_along_axis(flat, index, axis=1).reshape(x.shape)
        x = jnp.where(inside[..., None], read, 0.0)
    return x


class JaxSession(JaxSessionBase):
    """A job of a declared model spec (twinbench.models): images in, class logits out; also
    fine-tuning (a frozen pretrained base)."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        if spec.channels_last:
            raise InvalidArgument("channels_last is for PyTorch: JAX's convolutions are NHWC")
        self.model_spec = model_spec
        super().__init__(spec, model_spec)
        self._train_step = jax.jit(self._step, donate_argnums=(0, 1, 2))

    def new_model(self) -> nnx.Module:
        spec, model_spec = self.spec, self.model_spec
        model = build_model(model_spec, spec.seed)
        if spec.init == "shared":
            load_weights(model, model_spec, shared_initial_weights(model_spec, spec.seed))
        if model_spec.pretrained:  # fine-tuning: the base from the weights file, frozen
            load_base(model, model_spec, pretrained_base(spec, model_spec), freeze=True)
        return model

    def fairness(self) -> dict[str, str]:
        augment = self.model_spec.augment
        return {
            **super().fairness(),
            "padding": "explicit symmetric zero padding (kernel//2 for 'same')",
            "layout": "NHWC (Flax's), HWIO kernels",
            "precision": "fp32",
            "batch norm": "nnx.BatchNorm momentum 1 - torch's, use_fast_variance=False, running"
            " variance levelled to PyTorch's unbiased estimate",
            "augmentation": "none"
            if not augment
            else f"horizontal flip p=0.5: {augment.horizontal_flip}; rotation"
            f" +-{augment.rotation_degrees:g} degrees, nearest, zero fill (grid_sample's grid)",
        }

    def _step(self, params, rest, opt_state, x, y, key):
        if self.model_spec.augment:
            x = augment_batch(self.model_spec.augment, x, jax.random.fold_in(key, 0))

        def loss_fn(params, rest):
            # Fresh variables of this trace (a copy of the tree), which batch norm may update.
            model = nnx.merge(self.graphdef, params, jax.tree.map(lambda a: a, rest))
            logits = model(x, train=True, key=key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            split: Any = nnx.split(model, nnx.Param, ...)
            return loss, (logits, split[2])

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        hits = (logits.argmax(axis=1) == y).sum()
        return params, rest, opt_state, loss, hits

    def prepare(self, x: np.ndarray) -> np.ndarray:
        # Once per split, outside the timed loop: Flax convolutions take NHWC.
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x

    def serving_function(self) -> Callable[..., jax.Array]:
        images = len(self.model_spec.input_shape) == 3
        # Exports take NCHW, as every twinbench export does.
        return lambda model, x: model(jnp.transpose(x, (0, 2, 3, 1)) if images else x)

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        key = self.next_key()
        x, y = jax.device_put(x, self.device), jax.device_put(y, self.device)
        self.params, self.rest, self.opt_state, loss, hits = self._train_step(
            self.params, self.rest, self.opt_state, x, y, key
        )
        loss.block_until_ready()  # the step is done when train_batch returns, as in the others
        return loss, hits

    def base_max_change(self, base: Weights) -> float:
        """The largest |now - pretrained| of a fine-tuning job's frozen weights."""
        model: Any = self.model()
        modules = model.weighted()
        worst = 0.0
        for module, arrays in zip(modules, flax_base(self.model_spec, base), strict=False):
            now = [module.kernel[...], *([module.bias[...]] if module.bias is not None else [])]
            for a, b in zip(now, arrays, strict=False):
                b = b.transpose(0, 1, 3, 2) if a.shape != b.shape else b
                worst = max(worst, float(np.max(np.abs(np.asarray(a) - b))))
        return worst
