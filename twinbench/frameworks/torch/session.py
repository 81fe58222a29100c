"""PyTorch sessions: a model spec built as nn.Sequential, trained, checkpointed and exported."""

from __future__ import annotations

import copy
import math
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

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
    output_shape,
)
from twinbench.models.spec import Augment, ModelSpec
from twinbench.models.tasks import PAD_ID, Task, task_for

# Request tensors are read-only views over the request bytes; the models never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
# TorchScript and the TorchScript-based ONNX exporter are deprecated but remain what Triton and
# ONNX Runtime load; the dynamo exporter would need onnxscript.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")

PREDICT_BATCH = 1024
ONNX_OPSET = 17

# Pinned the same way as in the TF trainer before anything is timed (TF32 is on by default for
# cuDNN convolutions in PyTorch and for everything in TensorFlow).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class ResidualBlock(nn.Module):
    """activation(body(x) + shortcut(x)); an empty shortcut passes x through."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, activation: str | None):
        super().__init__()
        # Registered body first, then shortcut: modules() then visits the weights in the
        # spec's declaration order.
        self.body = body
        self.shortcut = shortcut
        self.activation = _ACTIVATIONS[activation]() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


def _build(layers: tuple[Layer, ...], shape: tuple[int, ...]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        after = output_shape(layer, shape)
        if isinstance(layer, Conv):
            modules.append(
                nn.Conv2d(
                    shape[0],
                    layer.filters,
                    layer.kernel,
                    stride=layer.stride,
                    padding=conv_padding(layer),
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, DepthwiseConv):
            c = shape[0]
            modules.append(
                nn.Conv2d(
                    c, c, layer.kernel, layer.stride, layer.padding, groups=c, bias=layer.bias
                )
            )
        elif isinstance(layer, BatchNorm):
            modules.append(nn.BatchNorm2d(shape[0], eps=layer.epsilon, momentum=layer.momentum))
        elif isinstance(layer, Pool):
            pool = nn.AvgPool2d if layer.kind == "avg" else nn.MaxPool2d
            modules.append(pool(layer.size, layer.stride or layer.size, layer.padding))
        elif isinstance(layer, GlobalAvgPool):
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Dense):
            modules.append(nn.Linear(shape[0], layer.units))
        elif isinstance(layer, Residual):
            body, shortcut = _build(layer.body, shape), _build(layer.shortcut, shape)
            modules.append(ResidualBlock(body, shortcut, layer.activation))
        activation = getattr(layer, "activation", None)
        if activation is not None and not isinstance(layer, Residual):
            modules.append(_ACTIVATIONS[activation]())
        shape = after
    return nn.Sequential(*modules)


def build_model(spec: ModelSpec) -> nn.Sequential:
    return _build(spec.layers, spec.input_shape)


def weighted_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]


def _arrays(module: nn.Module) -> list[torch.Tensor]:
    """A weighted module's tensors in twinbench's canonical order (see twinbench.models.initial_weights)."""
    if isinstance(module, nn.BatchNorm2d):
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight] if module.bias is None else [module.weight, module.bias]


def model_weights(model: nn.Module) -> Weights:
    """The weights in twinbench's canonical layout, which is PyTorch's."""
    return [tuple(t.detach().cpu().numpy() for t in _arrays(m)) for m in weighted_modules(model)]


def load_base(model: nn.Module, weights: Weights, freeze: bool = False) -> None:
    """The first len(weights) weighted layers from `weights` (a pretrained base); frozen: never
    trained (no gradients, so no optimizer touches them)."""
    with torch.no_grad():
        for module, arrays in zip(weighted_modules(model), weights, strict=False):
            for tensor, array in zip(_arrays(module), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))
            if freeze:
                module.requires_grad_(False)


def load_weights(model: nn.Module, weights: Weights) -> None:
    with torch.no_grad():
        for module, arrays in zip(weighted_modules(model), weights, strict=True):
            for tensor, array in zip(_arrays(module), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device 'cuda' was asked for, but this trainer sees no CUDA device")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class TorchAugment:
    """Training augmentation on the device, with its own seeded generator."""

    def __init__(self, augment: Augment, seed: int) -> None:
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.augment.horizontal_flip:
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.augment.rotation_degrees:
            limit = math.radians(self.augment.rotation_degrees)
            angle = (torch.rand(n, generator=self.generator) * 2 - 1) * limit
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(n)
            theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(n, 2, 3)
            grid = nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = nn.functional.grid_sample(
                x, grid, mode="nearest", padding_mode="zeros", align_corners=False
            )
        return x


def device_name(device: torch.device) -> str:
    """What a job records as its device: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def make_optimizer(parameters, opt: pb.Optimizer) -> torch.optim.Optimizer:
    """The job's optimizer with every constant set from the spec, none left to PyTorch's
    defaults (docs/fairness.md); one place for every kind of session."""
    if opt.name == "adam":
        return torch.optim.Adam(parameters, lr=opt.learning_rate, eps=opt.epsilon)
    return torch.optim.SGD(parameters, lr=opt.learning_rate, momentum=opt.momentum)


def optimizer_fairness(opt: pb.Optimizer) -> str:
    if opt.name == "adam":
        return f"Adam, eps {opt.epsilon:g} added after the bias correction"
    return f"SGD, momentum {opt.momentum:g}: v = mu v + g, w -= lr v"


class TorchSession:
    def __init__(self, spec: pb.JobSpec, model_spec: ModelSpec) -> None:
        self.spec = spec
        self.model_spec = model_spec
        self.device = pick_device(spec.device)
        torch.manual_seed(spec.seed)
        model = build_model(model_spec)
        if spec.init == "shared":
            load_weights(model, shared_initial_weights(model_spec, spec.seed))
        if model_spec.pretrained:  # fine-tuning: the base from the weights file, frozen
            load_base(model, pretrained_base(spec, model_spec), freeze=True)
        self.model = model.to(self.device)
        self.input_shape = model_spec.input_shape
        self.parameter_count = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.device_name = device_name(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), spec.optimizer)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        augment = model_spec.augment
        self.augment = TorchAugment(augment, spec.seed) if augment else None
        # Channels-last levels the layouts with Keras, which is NHWC throughout.
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        # The training forward pass only; evaluation and exports use the eager model. Inductor's
        # cache is the job's own, cold (twinbench.training.worker), so compiling is timed in warm-up.
        self.forward = torch.compile(self.model) if spec.compiled else self.model
        # Mixed precision (twinbench.jobs.precision): autocast for the forward pass, and a loss
        # scaler for float16 that starts where Keras's does.
        dtype = compute_dtype(spec.precision, on_gpu=self.device.type == "cuda")
        self.compute_dtype, self.precision = dtype, recorded(dtype)
        self.autocast_dtype = getattr(torch, dtype) if dtype else None
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=INITIAL_LOSS_SCALE,
            growth_interval=GROWTH_STEPS,
            enabled=dtype == "float16",
        )

    def fairness(self) -> dict[str, str]:
        opt, augment = self.spec.optimizer, self.model_spec.augment
        return {
            "init": SHARED_INIT
            if self.spec.init == "shared"
            else "PyTorch's own: Kaiming uniform (a=sqrt 5), biases U(+-1/sqrt fan_in)",
            "optimizer": optimizer_fairness(opt),
            "padding": "'same' as symmetric zero padding of kernel//2 (stride 1 only)",
            "tf32": "off for matmul and cuDNN",
            "compilation": "torch.compile (Inductor), cold job-private cache, compiled in the"
            " warm-up steps"
            if self.spec.compiled
            else "eager (no torch.compile)",
            "layout": "channels-last (NHWC in memory)" if self.spec.channels_last else "NCHW",
            "precision": describe_precision(self.compute_dtype),
            "augmentation": "none"
            if not augment
            else f"horizontal flip p=0.5: {augment.horizontal_flip}; rotation"
            f" +-{augment.rotation_degrees:g} degrees, nearest, zero fill (grid_sample)",
        }

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # the shared layout is already NCHW

    def save_checkpoint(self, path: Path) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.augment:
            state["augment_rng"] = self.augment.generator.get_state()
        if self.scaler.is_enabled():  # the loss scale reached, so a resumed job goes on from it
            state["scaler"] = self.scaler.state_dict()
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.augment and "augment_rng" in state:
            self.augment.generator.set_state(state["augment_rng"].cpu())
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        inputs = torch.from_numpy(x).to(self.device, non_blocking=True)
        labels = torch.from_numpy(y).to(self.device, non_blocking=True)
        if self.augment:
            inputs = self.augment(inputs)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            logits = self.forward(inputs.contiguous(memory_format=self.memory_format))
        loss = nn.functional.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # with no float16, scale and step pass straight through
        self.scaler.step(self.optimizer)
        self.scaler.update()
        hits = (logits.argmax(dim=1) == labels).sum()
        return loss.detach(), hits  # read by the loop at the end of a timed segment

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), PREDICT_BATCH):
                batch = torch.from_numpy(x[start : start + PREDICT_BATCH]).to(self.device)
                out.append(self.model(batch).float().cpu().numpy())
        return np.concatenate(out)

    def export(self, fmt: str, path: Path) -> None:
        # Exports are traced on the CPU so they load on any host; the runtime moves them to a GPU.
        model = copy.deepcopy(self.model).cpu().eval()
        example = torch.zeros((2, *self.input_shape), dtype=torch.float32)
        if fmt == "torchscript":
            with torch.inference_mode():
                torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        else:
            raise InvalidArgument(f"the torch trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if self.device.type != "cuda":
            return 0
        return int(torch.cuda.max_memory_allocated(self.device))

    def base_max_change(self, base: Weights) -> float:
        """The largest |now - pretrained| of a fine-tuning job's frozen weights."""
        return max(
            float(np.max(np.abs(now - then)))
            for arrays, pretrained in zip(model_weights(self.model), base, strict=False)
            for now, then in zip(arrays, pretrained, strict=True)
        )


_serving_thread = threading.local()


class TorchScriptRuntime:
    """A TorchScript export, run in inference mode.

    With `threads`, each serving thread runs its calls on that many intra-op threads. The
    setting is per calling thread (OpenMP) and inherited by threads started later, one reason
    training jobs run in processes of their own (twinbench.training.worker). Measured on 2 cores, LeNet-5 at batch 1: 0.15 ms of CPU with one thread, 0.41 ms with
    two, which mostly spin.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.device = pick_device("auto")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.threads = threads

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        if self.threads and getattr(_serving_thread, "threads", None) != self.threads:
            torch.set_num_threads(self.threads)
            _serving_thread.threads = self.threads
        with torch.inference_mode():
            tensors = (torch.from_numpy(x).to(self.device) for x in inputs)
            return self.module(*tensors).cpu().numpy()


class TorchNeuMF(nn.Module):
    def __init__(self, m: NeuMF) -> None:
        super().__init__()
        # Registration order is the canonical weight order (see twinbench.models.initial_weights.keras_id_arrays).
        self.gmf_user = nn.Embedding(m.users, m.factors)
        self.gmf_item = nn.Embedding(m.items, m.factors)
        self.mlp_user = nn.Embedding(m.users, m.mlp[0] // 2)
        self.mlp_item = nn.Embedding(m.items, m.mlp[0] // 2)
        dense: list[nn.Module] = []
        for a, b in zip(m.mlp, m.mlp[1:]):  # noqa: B905
            dense += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*dense)
        self.out = nn.Linear(m.factors + m.mlp[-1], 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], 1))
        return self.out(torch.cat([gmf, mlp], 1))  # one logit per (user, item)


def _lstm_stack(x: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
    for i, lstm in enumerate(layers):
        y, _ = lstm(x)
        x = y + x if i >= 2 else y  # GNMT's residual connections, from the third layer on
    return x


class TorchGNMT(nn.Module):
    def __init__(self, m: GNMT) -> None:
        super().__init__()
        h = m.hidden
        self.source_embedding = nn.Embedding(m.vocab, h)
        self.encoder = nn.ModuleList(nn.LSTM(h, h, batch_first=True) for _ in range(m.layers))
        self.target_embedding = nn.Embedding(m.vocab, h)
        self.decoder = nn.ModuleList(nn.LSTM(h, h, batch_first=True) for _ in range(m.layers))
        self.attentional = nn.Linear(2 * h, h)
        self.classifier = nn.Linear(h, m.vocab)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        memory = _lstm_stack(self.source_embedding(source), self.encoder)
        x = _lstm_stack(self.target_embedding(target), self.decoder)
        weights = torch.softmax(x @ memory.transpose(1, 2), dim=-1)  # dot-product attention
        h = torch.tanh(self.attentional(torch.cat([x, weights @ memory], -1)))
        return self.classifier(h)  # batch x target length x vocabulary


def build_id_model(m: NeuMF | GNMT) -> nn.Module:
    return TorchNeuMF(m) if isinstance(m, NeuMF) else TorchGNMT(m)


def id_model_weights(model: nn.Module) -> Weights:
    """Each Embedding, Linear and LSTM's tensors in registration order; an LSTM's are
    (weight_ih, weight_hh, bias_ih, bias_hh), gates in the order i, f, g, o."""
    out: Weights = []
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.Linear, nn.LSTM)):
            out.append(tuple(p.detach().cpu().numpy() for p in m.parameters()))
    return out


def load_id_weights(model: nn.Module, weights: Weights) -> None:
    """Loads weights in id_model_weights's layout and order."""
    modules = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear, nn.LSTM))]
    with torch.no_grad():
        for module, arrays in zip(modules, weights, strict=True):
            for tensor, array in zip(module.parameters(), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))


class TorchIdSession:
    """A job of an id-input model (NCF, GNMT): the loss and inputs its task says
    (twinbench/models/tasks.py), eager, in fp32."""

    def __init__(self, spec: pb.JobSpec, declared: NeuMF | GNMT) -> None:
        if spec.channels_last:
            raise InvalidArgument(f"model {declared.name} takes ids: channels-last is for images")
        self.precision = "fp32"  # refused otherwise (twinbench.jobs.request.resolve_spec)
        self.spec = spec
        self.declared = declared
        self.task: Task = task_for(declared)
        self.device = pick_device(spec.device)
        torch.manual_seed(spec.seed)
        model = build_id_model(declared)
        if spec.init == "shared":
            load_id_weights(model, shared_id_weights(declared, spec.seed))
        self.model = model.to(self.device)
        self.parameter_count = sum(p.numel() for p in self.model.parameters())
        self.device_name = device_name(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), spec.optimizer)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        # As in TorchSession: the training forward pass only, compiled in the warm-up steps.
        self.forward = torch.compile(self.model) if spec.compiled else self.model

    def fairness(self) -> dict[str, str]:
        opt = self.spec.optimizer
        return {
            "init": SHARED_ID_INIT
            if self.spec.init == "shared"
            else "PyTorch's own: embeddings N(0, 1), Linear and LSTM U(+-1/sqrt fan_in)",
            "optimizer": optimizer_fairness(opt),
            "embedding gradients": "dense (nn.Embedding's default)",
            "tf32": "off for matmul and cuDNN",
            "compilation": "torch.compile (Inductor), cold job-private cache, compiled in the"
            " warm-up steps"
            if self.spec.compiled
            else "eager (no torch.compile)",
        }

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # ids need no layout change

    def _inputs(self, x: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(a).to(self.device) for a in self.task.split(x)]

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its number of hits, as twinbench.models.tasks defines them."""
        if self.task.kind == "ranking":
            logit = logits.squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, labels.to(logit.dtype))
            return loss, ((logit > 0) == (labels == 1)).sum()
        flat = logits.reshape(-1, logits.shape[-1])
        loss = nn.functional.cross_entropy(flat, labels.reshape(-1), ignore_index=PAD_ID)
        hits = ((logits.argmax(-1) == labels) & (labels != PAD_ID)).sum()
        return loss, hits

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        labels = torch.from_numpy(y).to(self.device, non_blocking=True)
        loss, hits = self._loss(self.forward(*self._inputs(x)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), hits  # read by the loop at the end of a timed segment

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), PREDICT_BATCH):
                inputs = self._inputs(x[start : start + PREDICT_BATCH])
                out.append(self.model(*inputs).float().cpu().numpy())
        return np.concatenate(out)

    def export(self, fmt: str, path: Path) -> None:
        model = copy.deepcopy(self.model).cpu().eval()
        names = [i.name for i in self.task.inputs]
        example = tuple(torch.zeros((2, *i.shape), dtype=torch.int64) for i in self.task.inputs)
        if fmt == "torchscript":
            with torch.inference_mode():
                torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "onnx":
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        else:
            raise InvalidArgument(f"the torch trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if self.device.type != "cuda":
            return 0
        return int(torch.cuda.max_memory_allocated(self.device))

    def save_checkpoint(self, path: Path) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
